//! What one exit means: [`handle_exit`], the page to read first.
//!
//! An exit travels through a handful of plain-data types, each one step further from the
//! hardware. Follow one MMIO load of a virtio register:
//!
//! | step | type | where |
//! |---|---|---|
//! | the CPU traps; KVM fills `kvm_run`, Hypervisor.framework an `hv_vcpu_exit_t` (ESR_EL2, IPA) | raw backend record | `hv/kvm/vcpu.rs`, `hv/hvf/vcpu.rs` |
//! | HVF only: the syndrome is decoded (data abort → size, register, sign extension) | `ExitPlan`, `MmioDecision` | `hv/hvf/exit.rs`, `arch/aarch64/esr.rs` |
//! | the backend returns why the guest stopped | [`VmExit`]`::Mmio { addr, size, write: None }` | `hv/mod.rs` |
//! | hvrun decides what the exit means | [`ExitAction`]`::Resume(VmEntry::MmioData(v))` | this file |
//! | the bus finds the device; the device answers | `MmioBus::read` → `BusDevice::read` | `devices/src/bus.rs`, e.g. `devices/src/virtio/mmio.rs` |
//! | the value goes back in the next entry; the backend writes the guest register, PC += 4 | [`VmEntry`]`::MmioData(v)` | `hv/kvm/vcpu.rs` (`kvm_run.mmio.data`), `hv/hvf/vcpu.rs` |
//!
//! Exits a backend finishes itself with the portable arm64 policy (PSCI calls, trapped system
//! registers, WFI on Hypervisor.framework) arrive as [`VmExit::Handled`] so that statistics and
//! traces still see them; there is nothing left to do for them here.

use std::sync::atomic::{AtomicU32, Ordering};

use devices::MmioBus;

use crate::control::VmOutcome;
use crate::hv::{SystemEvent, VmEntry, VmExit};

/// What the vCPU loop does after an exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Enter the guest again, completing this first.
    Resume(VmEntry),
    /// End the VM.
    Stop(VmOutcome),
}

/// How many accesses to unclaimed addresses are logged before hvrun goes quiet about them.
const UNCLAIMED_LOG_LIMIT: u32 = 8;
static UNCLAIMED_LOGGED: AtomicU32 = AtomicU32::new(0);

/// Decides what one exit means. A free function over plain data, so it is tested without a
/// hypervisor.
pub fn handle_exit(exit: VmExit, bus: &MmioBus) -> ExitAction {
    match exit {
        VmExit::Mmio { addr, size, write: None } => {
            // Reads of addresses no device claims return zero (RAZ), as on a bus with nothing there.
            let value = bus.read(addr, size).unwrap_or_else(|| {
                log_unclaimed(addr, size, "read");
                0
            });
            ExitAction::Resume(VmEntry::MmioData(value))
        }
        VmExit::Mmio { addr, size, write: Some(value) } => {
            if !bus.write(addr, size, value) {
                log_unclaimed(addr, size, "write");
            }
            ExitAction::Resume(VmEntry::Resume)
        }
        VmExit::System(SystemEvent::PowerOff) => ExitAction::Stop(VmOutcome::PowerOff),
        VmExit::System(SystemEvent::Reset) => ExitAction::Stop(VmOutcome::Reset),
        VmExit::System(SystemEvent::Crash) => ExitAction::Stop(VmOutcome::GuestPanic),
        // A kick only makes the loop look at the VM's control state (stop, pause) again.
        VmExit::Kicked => ExitAction::Resume(VmEntry::Resume),
        VmExit::Handled(_) => ExitAction::Resume(VmEntry::Resume),
        VmExit::Unhandled { reason, detail } => ExitAction::Stop(VmOutcome::Failed(format!(
            "the guest made an exit hvrun does not handle: {reason} ({detail:#x})"
        ))),
    }
}

fn log_unclaimed(addr: u64, size: u8, what: &str) {
    let n = UNCLAIMED_LOGGED.fetch_add(1, Ordering::Relaxed);
    if n < UNCLAIMED_LOG_LIMIT {
        log::warn!("guest {what} of {size} bytes at {addr:#x}: no device there (reads as zero)");
    } else if n == UNCLAIMED_LOG_LIMIT {
        log::warn!("further accesses to unclaimed addresses are not logged");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::BusDevice;
    use std::sync::{Arc, Mutex};

    struct Register(u64);
    impl BusDevice for Register {
        fn read(&mut self, _offset: u64, _size: u8) -> u64 {
            self.0
        }
        fn write(&mut self, _offset: u64, _size: u8, value: u64) {
            self.0 = value;
        }
    }

    fn bus_with_register() -> (MmioBus, Arc<Mutex<Register>>) {
        let reg = Arc::new(Mutex::new(Register(0x1122_3344_5566_7788)));
        let mut bus = MmioBus::new();
        bus.insert(0x0900_0000, 0x1000, "reg", reg.clone()).unwrap();
        (bus, reg)
    }

    #[test]
    fn mmio_read_returns_the_device_value_sized() {
        let (bus, _) = bus_with_register();
        let exit = VmExit::Mmio { addr: 0x0900_0000, size: 2, write: None };
        assert_eq!(handle_exit(exit, &bus), ExitAction::Resume(VmEntry::MmioData(0x7788)));
        let exit = VmExit::Mmio { addr: 0x0900_0008, size: 8, write: None };
        assert_eq!(
            handle_exit(exit, &bus),
            ExitAction::Resume(VmEntry::MmioData(0x1122_3344_5566_7788))
        );
    }

    #[test]
    fn mmio_write_reaches_the_device() {
        let (bus, reg) = bus_with_register();
        let exit = VmExit::Mmio { addr: 0x0900_0010, size: 4, write: Some(0xcafe) };
        assert_eq!(handle_exit(exit, &bus), ExitAction::Resume(VmEntry::Resume));
        assert_eq!(reg.lock().unwrap().0, 0xcafe);
    }

    #[test]
    fn unclaimed_addresses_read_as_zero_and_ignore_writes() {
        let (bus, reg) = bus_with_register();
        let read = VmExit::Mmio { addr: 0x1234, size: 4, write: None };
        assert_eq!(handle_exit(read, &bus), ExitAction::Resume(VmEntry::MmioData(0)));
        let write = VmExit::Mmio { addr: 0x1234, size: 4, write: Some(1) };
        assert_eq!(handle_exit(write, &bus), ExitAction::Resume(VmEntry::Resume));
        assert_eq!(reg.lock().unwrap().0, 0x1122_3344_5566_7788);
    }

    #[test]
    fn system_events_stop_the_vm() {
        let bus = MmioBus::new();
        let stop = |e| handle_exit(VmExit::System(e), &bus);
        assert_eq!(stop(SystemEvent::PowerOff), ExitAction::Stop(VmOutcome::PowerOff));
        assert_eq!(stop(SystemEvent::Reset), ExitAction::Stop(VmOutcome::Reset));
        assert_eq!(stop(SystemEvent::Crash), ExitAction::Stop(VmOutcome::GuestPanic));
        assert_eq!(handle_exit(VmExit::Kicked, &bus), ExitAction::Resume(VmEntry::Resume));
        let unhandled = VmExit::Unhandled { reason: "KVM exit", detail: 0x11 };
        match handle_exit(unhandled, &bus) {
            ExitAction::Stop(VmOutcome::Failed(msg)) => assert!(msg.contains("KVM exit (0x11)")),
            other => panic!("unexpected {other:?}"),
        }
    }
}
