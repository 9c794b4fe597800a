//! One thread per vCPU: run → [`VmExit`] → [`handle_exit`] → [`VmEntry`] → run.
//!
//! Follow one MMIO read from the guest and back:
//! 1. The guest loads from an address no RAM backs; the CPU traps to the hypervisor, which returns
//!    from [`Vcpu::run`] with `VmExit::Mmio { addr, size, write: None }`.
//! 2. [`handle_exit`] asks the [`MmioBus`] which device owns `addr` and reads it.
//! 3. The value goes back as `VmEntry::MmioData(value)` into the next [`Vcpu::run`], where the
//!    backend writes it to the guest's destination register and resumes the guest after the load.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use devices::MmioBus;

use crate::control::{StopSignal, VmOutcome};
use crate::hv::{Kicker, Reg, SystemEvent, Vcpu, Vm, VmEntry, VmExit};
use crate::stats::{ExitKind, ExitStats};
use crate::trace::ExitTracer;

/// What the loop does after an exit.
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
        // A kick only makes the loop look at the stop flag again.
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

/// What one vCPU thread records about its exits, when asked (`--stats`, `--trace-exits`).
/// When both are off the loop pays one predictable branch per exit.
#[derive(Default)]
pub struct ExitObserver {
    /// Counts and handling times, owned by this vCPU's thread (merged after it stops).
    pub stats: Option<ExitStats>,
    /// The VM's exit tracer, shared by its vCPUs.
    pub tracer: Option<Arc<ExitTracer>>,
}

impl ExitObserver {
    /// Records nothing.
    pub fn off() -> Self {
        Self::default()
    }

    fn is_off(&self) -> bool {
        self.stats.is_none() && self.tracer.is_none()
    }

    /// Handles `exit`, timing the handling into the stats and tracing it.
    fn observe(&mut self, index: u32, exit: VmExit, bus: &MmioBus) -> ExitAction {
        let start = Instant::now();
        let action = handle_exit(exit, bus);
        if let Some(stats) = &mut self.stats {
            stats.record(ExitKind::of(&exit), start.elapsed());
        }
        if let Some(tracer) = &self.tracer {
            tracer.trace(index, &exit, &action, bus);
        }
        action
    }
}

/// Runs `vcpu` until the VM stops. Returns when [`StopSignal::is_stopping`] is seen.
///
/// This is the hot path: one `Vcpu::run` (one KVM_RUN) per exit, no allocation, no lock other
/// than the one device the exit touches, no logging unless `observer` asks for tracing.
pub fn run_loop<V: Vcpu>(
    vcpu: &mut V,
    index: u32,
    bus: &MmioBus,
    stop: &StopSignal,
    observer: &mut ExitObserver,
) {
    let mut entry = VmEntry::Resume;
    let observing = !observer.is_off();
    while !stop.is_stopping() {
        let exit = match vcpu.run(entry) {
            Ok(exit) => exit,
            Err(e) => {
                stop.request(VmOutcome::Failed(format!("vCPU {index}: {e}")));
                return;
            }
        };
        let action =
            if observing { observer.observe(index, exit, bus) } else { handle_exit(exit, bus) };
        match action {
            ExitAction::Resume(next) => entry = next,
            ExitAction::Stop(outcome) => {
                stop.request(outcome);
                return;
            }
        }
    }
}

/// Everything one vCPU thread needs.
pub struct VcpuThread<V: Vm> {
    pub vm: Arc<V>,
    pub index: u32,
    /// Registers to set before the first run (the boot vCPU's entry state; empty for the others).
    pub initial_regs: Vec<(Reg, u64)>,
    pub bus: Arc<MmioBus>,
    pub stop: Arc<StopSignal>,
    /// Reports that the vCPU exists (or why it could not be created).
    pub created: Sender<Result<(), String>>,
    /// `true` once every vCPU exists and the VM is finalised; `false` (or a hang-up) to give up.
    pub go: Receiver<bool>,
    /// Keep exit statistics (`--stats`).
    pub stats: bool,
    /// Trace exits (`--trace-exits`).
    pub tracer: Option<Arc<ExitTracer>>,
}

impl<V: Vm> VcpuThread<V> {
    /// The thread body: create the vCPU here (Hypervisor.framework requires it), report, wait
    /// for the go signal, run. Returns the vCPU's exit statistics when they were asked for.
    pub fn run(self) -> Option<ExitStats> {
        let _panic_guard = PanicGuard { stop: &self.stop, index: self.index };
        let mut vcpu = match self.create() {
            Ok(vcpu) => vcpu,
            Err(e) => {
                let _ = self.created.send(Err(e));
                return None;
            }
        };
        let kicker = vcpu.kicker();
        self.stop.add_kick(move || kicker.kick());
        if self.created.send(Ok(())).is_err() || !self.go.recv().unwrap_or(false) {
            return None;
        }
        let mut observer = ExitObserver {
            stats: self.stats.then(ExitStats::default),
            tracer: self.tracer.clone(),
        };
        run_loop(&mut vcpu, self.index, &self.bus, &self.stop, &mut observer);
        observer.stats
    }

    fn create(&self) -> Result<V::Vcpu, String> {
        let mut vcpu = self.vm.create_vcpu(self.index).map_err(|e| e.to_string())?;
        for &(reg, value) in &self.initial_regs {
            vcpu.set_reg(reg, value).map_err(|e| format!("vCPU {}: {e}", self.index))?;
        }
        Ok(vcpu)
    }
}

/// Turns a panic on a vCPU thread into a stopped VM instead of a VMM that hangs in `join`.
struct PanicGuard<'a> {
    stop: &'a StopSignal,
    index: u32,
}

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.stop.request(VmOutcome::Failed(format!("vCPU {} thread panicked", self.index)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::BusDevice;
    use std::sync::Mutex;

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
