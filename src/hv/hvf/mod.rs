//! The Hypervisor.framework backend (macOS on Apple Silicon), on `hv-sys`.
//!
//! Hypervisor.framework does far less than KVM: every PSCI call, trapped system register,
//! WFI and virtual-timer event comes to hvrun, which completes it with the portable policy in
//! `arch::aarch64` and reports it as `VmExit::Handled`, so exit statistics see every exit.
//!
//! The decisions live in portable modules that build and are unit-tested on every host
//! (`errors`, `ipa`, `kick`, `exit`); the modules that call the framework build only on macOS
//! and are type-checked and linted in CI for `aarch64-apple-darwin` (tests/darwin-check.sh).

pub mod errors;
pub mod exit;
pub mod ipa;
pub mod kick;
