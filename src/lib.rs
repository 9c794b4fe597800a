//! hvrun: a small, readable virtual machine monitor for arm64 guests, on Hypervisor.framework
//! (macOS, Apple Silicon) and KVM (arm64 Linux).
//!
//! Data flows one way: CLI (`main.rs`) → [`config`] → [`vmm`] (builds the VM) → [`vcpu`] threads
//! → exits → the device bus → devices → guest memory and interrupt lines.

pub mod arch;
pub mod bench;
pub mod boot_time;
pub mod config;
pub mod console;
pub mod exit_code;
pub mod host;
pub mod hv;
pub mod queue_notify;
pub mod stats;
pub mod stop;
pub mod trace;
pub mod vcpu;
pub mod vmm;
