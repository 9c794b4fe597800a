//! Booting an arm64 Linux guest: the guest physical memory map, the kernel image, where the boot
//! images go in RAM, and the device tree that describes the machine.
//!
//! Nothing here knows about a hypervisor: it fills guest memory through vm-memory and returns
//! plain addresses, so it is tested on any host.

pub mod fdt;
pub mod kernel;
pub mod layout;
pub mod placement;

pub use fdt::{FdtConfig, PsciConduit, VirtioMmioNode};
pub use kernel::{KernelError, KernelFormat, KernelImage, LoadedKernel};
pub use placement::{BootPlacement, PlacementError};
