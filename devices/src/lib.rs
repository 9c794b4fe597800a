//! hvrun's device models. They never import a hypervisor: they are reached through the
//! [`MmioBus`], see guest memory through vm-memory, and raise interrupts through an [`IrqLine`].
//! That is what lets the same devices serve KVM and Hypervisor.framework, and be unit-tested on
//! any host.

pub mod boot_probe;
pub mod bus;
pub mod gic_v3;
pub mod irq;
pub mod notifier;
pub mod pvpanic;
pub mod serial;
pub mod virtio;

pub use boot_probe::BootProbe;
pub use bus::{BusDevice, BusError, MmioBus};
pub use irq::IrqLine;
pub use notifier::Notifier;
pub use pvpanic::PvPanic;
pub use serial::Uart16550;
pub use virtio::{
    ConsoleInput, ConsoleInputPort, MmioTransport, VirtioConsole, VirtioDevice, VirtioError,
    VirtioInterrupt, VirtioRng,
};
