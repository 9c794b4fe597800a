//! hvrun's own engine: builds one VM — guest RAM, devices, boot images, vCPU threads — runs it
//! until it stops, serves requests while it runs, and reboots it when the guest resets. The only
//! module that knows every other one.
//!
//! | file | what |
//! |---|---|
//! | `memory.rs` | guest RAM: allocate, map into the VM |
//! | `devices.rs` | platform devices, the virtio slot table, device workers |
//! | `load.rs` | kernel, initrd, device tree |
//! | `vcpu.rs` | one thread per vCPU: the run loop |
//! | `exit.rs` | what one exit means: `handle_exit` |
//! | `trace.rs` | `--trace-exits` |

pub mod devices;
pub mod exit;
pub mod load;
pub mod memory;
pub mod trace;
pub mod vcpu;

use std::sync::Arc;
use std::time::{Duration, Instant};

use boot::layout;

use crate::arch::aarch64::boot_registers;
use crate::config::VmConfig;
use crate::control::{ControlEvent, VmControl, VmOutcome, VmRequest};
use crate::hv::{HvError, Hypervisor, VmSpec};
use crate::stats::boot_time::{BootClock, BootTimeSlot, GuestBootTime};
use crate::stats::{ExitStats, RunStats};
use crate::terminal::Terminal;
use devices::build_devices;
use load::load_boot_images;
use memory::GuestRam;
use trace::ExitTracer;
use vcpu::{start_vcpus, ExitObserver, StatsBoard};

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Hypervisor(#[from] HvError),
    #[error("cannot allocate {0} MiB of guest memory: {1}")]
    Memory(u64, String),
    #[error(transparent)]
    Kernel(#[from] boot::KernelError),
    #[error(transparent)]
    Placement(#[from] boot::PlacementError),
    #[error("building the device tree failed: {0}")]
    Fdt(String),
    #[error("wiring devices failed: {0}")]
    Devices(#[from] ::devices::BusError),
    #[error("creating a virtio device failed: {0}")]
    Virtio(#[from] ::devices::VirtioError),
    #[error("{0}")]
    Entropy(std::io::Error),
    #[error("no free virtio-mmio slot for {0}")]
    NoSlot(String),
    #[error("cannot start vCPU thread {0}: {1}")]
    Thread(u32, std::io::Error),
    #[error("creating vCPU failed: {0}")]
    VcpuCreate(String),
    #[error("cannot start the worker thread of {0}: {1}")]
    DeviceThread(String, std::io::Error),
}

/// How a run ended, and what it measured.
#[derive(Debug)]
pub struct RunReport {
    pub outcome: VmOutcome,
    /// The last boot's time to userspace, if the guest's init wrote the boot-time probe.
    pub boot_time: Option<GuestBootTime>,
    /// Exit statistics, with `--stats`.
    pub stats: Option<RunStats>,
    /// The `--trace-exits` closing line (shown and dropped counts).
    pub trace_summary: Option<String>,
}

/// Runs the configured guest until it powers off, panics, is stopped through `control`, or
/// (without `config.reboot`) resets. A guest reset rebuilds the VM from scratch: fresh memory,
/// devices and vCPUs.
pub fn run<H: Hypervisor>(
    hv: &H,
    config: &VmConfig,
    terminal: &Terminal,
    control: &Arc<VmControl>,
) -> Result<RunReport, VmmError> {
    let mut stats = config.stats.map(|_| RunStats::default());
    let tracer = config.trace_exits.then(|| Arc::new(ExitTracer::default()));
    let observer = ExitObserver::new(config.stats.is_some(), tracer.clone());
    loop {
        let boot_time = BootTimeSlot::default();
        let outcome = run_once(hv, config, terminal, control, &observer, &boot_time, &mut stats)?;
        let outcome = match outcome {
            VmOutcome::Reset if config.reboot => match control.rearm_for_reboot() {
                Ok(()) => {
                    log::info!("guest reset: rebooting");
                    continue;
                }
                Err(final_outcome) => final_outcome,
            },
            outcome => outcome,
        };
        let boot_time = *boot_time.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stats) = &mut stats {
            stats.boot_time = boot_time;
        }
        let trace_summary = tracer.map(|t| t.summary());
        return Ok(RunReport { outcome, boot_time, stats, trace_summary });
    }
}

/// Builds the VM, runs it (serving requests) until it stops, and tears it down. Adds the vCPUs'
/// exit statistics to `stats`; the guest's boot time, if it reports one, lands in `boot_time`.
fn run_once<H: Hypervisor>(
    hv: &H,
    config: &VmConfig,
    terminal: &Terminal,
    control: &Arc<VmControl>,
    observer: &ExitObserver,
    boot_time: &BootTimeSlot,
    stats: &mut Option<RunStats>,
) -> Result<VmOutcome, VmmError> {
    let clock = BootClock::start();
    // Declared before the VM and the devices, so it is dropped after them: KVM or HVF and the
    // device workers may touch guest memory until they are gone.
    let ram = GuestRam::allocate(config.mem_bytes)?;
    let spec =
        VmSpec { vcpus: config.vcpus, ipa_bits: layout::required_ipa_bits(config.mem_bytes) };
    let vm = Arc::new(hv.create_vm(&spec)?);
    // SAFETY: `ram` is declared before `vm` and the vCPU threads are joined below, so the
    // mapping outlives every user.
    unsafe { ram.map_into(vm.as_ref())? };

    let mut devices =
        build_devices(vm.as_ref(), control, config, ram.memory(), terminal, clock, boot_time)?;
    let entry = load_boot_images(hv, config, ram.memory(), &devices.fdt_nodes())?;

    terminal.attach(devices.console_input.clone());
    let started = Instant::now();
    let board = config.stats.map(|_| Arc::new(StatsBoard::new(config.vcpus)));
    let boot_regs = boot_registers(entry.kernel, entry.fdt);
    let threads = start_vcpus(
        vm,
        config.vcpus,
        &boot_regs,
        devices.bus.clone(),
        control,
        observer,
        board.clone(),
    );
    let threads = match threads {
        Ok(threads) => threads,
        Err(e) => {
            terminal.detach();
            return Err(e);
        }
    };
    let outcome = serve_until_stopped(control, |request| match request {
        VmRequest::Stats(reply) => {
            let live = live_stats(control, stats.as_ref(), board.as_deref(), started.elapsed());
            let _ = reply.send(live);
        }
    });
    terminal.detach();
    let vcpu_stats = threads.join();
    devices.stop_workers();
    if let Some(stats) = stats {
        stats.add_run(vcpu_stats, started.elapsed());
    }
    Ok(outcome)
}

/// Answers requests with `serve` until the VM stops; returns why it stopped.
pub fn serve_until_stopped(control: &VmControl, mut serve: impl FnMut(VmRequest)) -> VmOutcome {
    loop {
        match control.next_event() {
            ControlEvent::Stopped(outcome) => return outcome,
            ControlEvent::Request(request) => serve(request),
        }
    }
}

/// The statistics of the whole run so far: earlier boots plus what the running vCPUs publish
/// when asked. `None` without `--stats`, or when the VM is stopping.
fn live_stats(
    control: &VmControl,
    earlier: Option<&RunStats>,
    board: Option<&StatsBoard>,
    running_for: Duration,
) -> Option<RunStats> {
    let (earlier, board) = (earlier?, board?);
    if let Err(e) = control.collect_snapshot() {
        log::warn!("statistics snapshot: {e}");
    }
    let mut live = earlier.clone();
    let now: Vec<ExitStats> = board.read();
    live.add_run(now, running_for);
    Some(live)
}
