//! Raw FFI for Apple's Hypervisor.framework on arm64 (Apple Silicon), through macOS 15.
//!
//! Hand-written from Apple's headers as published (`Hypervisor.framework/Headers/hv_*.h`) and
//! Apple's documentation, cross-checked against two independent public transcriptions of those
//! headers (a bindgen run over the macOS SDK, and the `applevisor-sys` crate). No logic lives here:
//! the safe wrappers are in hvrun's `src/hv/hvf/`.
//!
//! - [`types`]: types and constants. Compiled on every host, so their values and the
//!   `hv_vcpu_exit_t` layout are unit-tested in CI on Linux too.
//! - `ffi` (macOS only): functions available since macOS 11 (and the 13.0 VM configuration
//!   calls), linked from the framework.
//! - [`newer`]: functions introduced in macOS 15 (`hv_gic_*`, EL2), looked up at run time with
//!   `dlsym`, so one binary runs on macOS 13 and 14 and uses them where they exist.

#![allow(non_camel_case_types)]

pub mod types;
pub use types::*;

#[cfg(target_os = "macos")]
mod ffi;
#[cfg(target_os = "macos")]
pub use ffi::*;

#[cfg(unix)]
pub mod newer;
