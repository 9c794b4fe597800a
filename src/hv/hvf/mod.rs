//! The Hypervisor.framework backend (macOS on Apple Silicon), on `hv-sys`.
//!
//! Hypervisor.framework does far less than KVM: every PSCI call, trapped system register,
//! WFI and virtual-timer event comes to hvrun, which completes it with the portable policy in
//! `arch::aarch64` and reports it as `VmExit::Handled`, so exit statistics see every exit.
//!
//! The decisions live in portable modules that build and are unit-tested on every host
//! (`errors`, `ipa`, `kick`, `exit`, `gic`, `options`); the modules that call the framework
//! (`hypervisor`, `vm`, `vcpu`, and the macOS halves of `caps`, `gic` and `kick`) build only
//! on macOS and are type-checked and linted in CI for `aarch64-apple-darwin`
//! (tests/darwin-check.sh).
//!
//! Imports run one way: `hypervisor` → `vm` → `vcpu` → `shared` → `gic` → `kick`, with
//! `caps`, `options`, `errors`, `exit`, `ipa` and `regs` as leaves.

pub mod caps;
pub mod errors;
pub mod exit;
pub mod gic;
pub mod ipa;
pub mod kick;
pub mod options;
pub mod regs;
pub mod shared;

#[cfg(target_os = "macos")]
mod hypervisor;
#[cfg(target_os = "macos")]
mod vcpu;
#[cfg(target_os = "macos")]
mod vm;

pub use caps::HostCaps;
#[cfg(target_os = "macos")]
pub use hypervisor::{host_capabilities, HvfHypervisor};
pub use options::HvfOptions;
pub use shared::VmShared;
#[cfg(target_os = "macos")]
pub use vcpu::{HvfKicker, HvfVcpu};
#[cfg(target_os = "macos")]
pub use vm::HvfVm;
