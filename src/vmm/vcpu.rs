//! One thread per vCPU: run → [`VmExit`] → [`handle_exit`] → [`VmEntry`] → run.
//!
//! Follow one MMIO read from the guest and back:
//! 1. The guest loads from an address no RAM backs; the CPU traps to the hypervisor, which returns
//!    from [`Vcpu::run`] with `VmExit::Mmio { addr, size, write: None }`.
//! 2. [`handle_exit`] (in `exit.rs`) asks the [`MmioBus`] which device owns `addr` and reads it.
//! 3. The value goes back as `VmEntry::MmioData(value)` into the next [`Vcpu::run`], where the
//!    backend writes it to the guest's destination register and resumes the guest after the load.
//!
//! Between exits the loop reads one atomic word of the VM's [`VmControl`]: a stop, a pause or a
//! statistics snapshot makes it attend to the control state before entering the guest again.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use devices::MmioBus;

use super::exit::{handle_exit, ExitAction};
use super::trace::ExitTracer;
use super::VmmError;
use crate::control::{Directive, VmControl, VmOutcome};
use crate::hv::{Kicker, Reg, Vcpu, Vm, VmEntry, VmExit};
use crate::stats::{ExitKind, ExitStats};

/// What vCPU threads record about their exits (`--stats`, `--trace-exits`). The VM holds one as
/// a template; each vCPU thread works on its own clone, so recording takes no lock. When both
/// are off the loop pays one predictable branch per exit.
#[derive(Clone, Default)]
pub struct ExitObserver {
    /// Counts and handling times, owned by one vCPU's thread (merged after it stops).
    pub stats: Option<ExitStats>,
    /// The VM's exit tracer, shared by its vCPUs.
    pub tracer: Option<Arc<ExitTracer>>,
}

impl ExitObserver {
    /// Records nothing.
    pub fn off() -> Self {
        Self::default()
    }

    /// Keeps statistics when `stats`, traces through `tracer`.
    pub fn new(stats: bool, tracer: Option<Arc<ExitTracer>>) -> Self {
        ExitObserver { stats: stats.then(ExitStats::default), tracer }
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

/// Where vCPUs publish their statistics when the VM-owning thread asks for a snapshot while the
/// VM runs: one slot per vCPU, written by that vCPU only. Copying [`ExitStats`] (a fixed array)
/// into a slot does not allocate.
pub struct StatsBoard {
    slots: Vec<Mutex<ExitStats>>,
}

impl StatsBoard {
    /// A board for `vcpus` vCPUs, all slots empty.
    pub fn new(vcpus: u32) -> Self {
        StatsBoard { slots: (0..vcpus).map(|_| Mutex::new(ExitStats::default())).collect() }
    }

    fn publish(&self, index: u32, stats: &ExitStats) {
        if let Some(slot) = self.slots.get(index as usize) {
            slot.lock().unwrap_or_else(|p| p.into_inner()).clone_from(stats);
        }
    }

    /// What each vCPU published last, in vCPU order.
    pub fn read(&self) -> Vec<ExitStats> {
        self.slots.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect()
    }
}

/// Runs `vcpu` until the VM stops.
///
/// This is the hot path: one `Vcpu::run` (one KVM_RUN) per exit, one relaxed atomic load of the
/// control word, no allocation, no lock other than the one device the exit touches, no logging
/// unless `observer` asks for tracing.
pub fn run_loop<V: Vcpu>(
    vcpu: &mut V,
    index: u32,
    bus: &MmioBus,
    control: &VmControl,
    observer: &mut ExitObserver,
    board: Option<&StatsBoard>,
) {
    let mut seat = control.vcpu_started();
    let mut entry = VmEntry::Resume;
    let observing = !observer.is_off();
    loop {
        if control.needs_attention() {
            match control.attend(&mut seat) {
                Directive::Run => {}
                Directive::Exit => break,
                Directive::PublishStats => {
                    if let (Some(board), Some(stats)) = (board, &observer.stats) {
                        board.publish(index, stats);
                    }
                    control.snapshot_published();
                    continue;
                }
            }
        }
        let exit = match vcpu.run(entry) {
            Ok(exit) => exit,
            Err(e) => {
                control.request_stop(VmOutcome::Failed(format!("vCPU {index}: {e}")));
                break;
            }
        };
        let action =
            if observing { observer.observe(index, exit, bus) } else { handle_exit(exit, bus) };
        match action {
            ExitAction::Resume(next) => entry = next,
            ExitAction::Stop(outcome) => {
                control.request_stop(outcome);
                break;
            }
        }
    }
    control.vcpu_finished();
}

/// Everything one vCPU thread needs.
struct VcpuThread<V: Vm> {
    vm: Arc<V>,
    index: u32,
    /// Registers to set before the first run (the boot vCPU's entry state; empty for the others).
    initial_regs: Vec<(Reg, u64)>,
    bus: Arc<MmioBus>,
    control: Arc<VmControl>,
    /// Reports that the vCPU exists (or why it could not be created).
    created: Sender<Result<(), String>>,
    /// `true` once every vCPU exists and the VM is finalised; `false` (or a hang-up) to give up.
    go: Receiver<bool>,
    observer: ExitObserver,
    board: Option<Arc<StatsBoard>>,
}

impl<V: Vm> VcpuThread<V> {
    /// The thread body: create the vCPU here (Hypervisor.framework requires it), report, wait
    /// for the go signal, run. Returns the vCPU's exit statistics when they were asked for.
    fn run(mut self) -> Option<ExitStats> {
        let _panic_guard = PanicGuard { control: &self.control, index: self.index };
        let mut vcpu = match self.create() {
            Ok(vcpu) => vcpu,
            Err(e) => {
                let _ = self.created.send(Err(e));
                return None;
            }
        };
        let kicker = vcpu.kicker();
        self.control.add_kick(move || kicker.kick());
        if self.created.send(Ok(())).is_err() || !self.go.recv().unwrap_or(false) {
            return None;
        }
        let board = self.board.as_deref();
        run_loop(&mut vcpu, self.index, &self.bus, &self.control, &mut self.observer, board);
        self.observer.stats
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
    control: &'a VmControl,
    index: u32,
}

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let why = format!("vCPU {} thread panicked", self.index);
            self.control.request_stop(VmOutcome::Failed(why));
        }
    }
}

/// The running vCPU threads of one VM.
pub struct VcpuThreads {
    handles: Vec<JoinHandle<Option<ExitStats>>>,
}

impl VcpuThreads {
    /// Waits for every vCPU thread to end (after a stop) and collects the exit statistics they
    /// kept, in vCPU order.
    pub fn join(self) -> Vec<ExitStats> {
        self.handles.into_iter().filter_map(|t| t.join().ok().flatten()).collect()
    }
}

/// Starts one thread per vCPU (vCPU 0 with `boot_regs`), finalises the VM once all exist, and
/// lets them run. The caller waits for the VM to stop (through `control`), then joins.
pub fn start_vcpus<V: Vm>(
    vm: Arc<V>,
    vcpus: u32,
    boot_regs: &[(Reg, u64)],
    bus: Arc<MmioBus>,
    control: &Arc<VmControl>,
    observer: &ExitObserver,
    board: Option<Arc<StatsBoard>>,
) -> Result<VcpuThreads, VmmError> {
    let (created_tx, created_rx) = mpsc::channel();
    let mut threads = VcpuThreads { handles: Vec::new() };
    let mut go = Vec::new();
    for index in 0..vcpus {
        let (go_tx, go_rx) = mpsc::channel();
        let thread = VcpuThread {
            vm: vm.clone(),
            index,
            initial_regs: if index == 0 { boot_regs.to_vec() } else { Vec::new() },
            bus: bus.clone(),
            control: control.clone(),
            created: created_tx.clone(),
            go: go_rx,
            observer: observer.clone(),
            board: board.clone(),
        };
        let spawned =
            std::thread::Builder::new().name(format!("vcpu{index}")).spawn(move || thread.run());
        match spawned {
            Ok(handle) => threads.handles.push(handle),
            Err(e) => {
                drop(go); // the threads already started see a hang-up and return
                threads.join();
                return Err(VmmError::Thread(index, e));
            }
        }
        go.push(go_tx);
    }
    drop(created_tx);

    let mut failure = None;
    for _ in 0..vcpus {
        match created_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(_) => failure = failure.or(Some("a vCPU thread ended before reporting".into())),
        }
    }
    if failure.is_none() {
        if let Err(e) = vm.vcpus_created() {
            failure = Some(e.to_string());
        }
    }
    if let Some(e) = failure {
        drop(go);
        threads.join();
        return Err(VmmError::VcpuCreate(e));
    }
    for tx in &go {
        let _ = tx.send(true);
    }
    Ok(threads)
}
