//! hvrun: a small, readable virtual machine monitor for arm64 guests, on Hypervisor.framework
//! (macOS, Apple Silicon) and KVM (arm64 Linux).
//!
//! Data flows one way: CLI (`main.rs`) → [`config`] (validated intent) → [`vmm`] (builds the VM
//! and runs one thread per vCPU) → exits → the device bus → devices → guest memory and interrupt
//! lines. [`control`] steers a running VM (stop, pause, requests) from the [`terminal`] and,
//! later, the API; [`hv`] is the seam to KVM or Hypervisor.framework; [`arch`] holds the arm64
//! rules both backends share; [`stats`] and [`bench`] measure what exits cost.

pub mod arch;
pub mod bench;
pub mod config;
pub mod control;
pub mod exit_code;
pub mod host;
pub mod hv;
pub mod stats;
pub mod terminal;
pub mod vmm;
pub mod vz;
