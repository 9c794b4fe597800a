//! Builds one VM — memory, devices, boot images, device tree, vCPU threads — runs it until it
//! stops, and reboots it on request. The only module that knows every other one.

use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use boot::fdt::IRQ_TYPE_LEVEL_HIGH;
use boot::layout::{self, RAM_BASE};
use boot::{fdt, BootPlacement, FdtConfig, VirtioMmioNode};
use devices::pvpanic::GuestPanic;
use devices::virtio::block::VirtioBlock;
use devices::{
    BootProbe, ConsoleInput, ConsoleInputPort, MmioBus, MmioTransport, PvPanic, Uart16550,
    VirtioConsole, VirtioDevice, VirtioRng,
};
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

use crate::arch::aarch64::{boot_registers, mpidr_for_vcpu};
use crate::boot_time::{BootClock, BootTimeSlot, GuestBootTime};
use crate::config::{ConsoleKind, VmConfig};
use crate::control::{StopSignal, VmOutcome};
use crate::hv::{HvError, Hypervisor, MemoryPerms, Reg, Vm, VmSpec};
use crate::queue_notify::{ioeventfd_enabled, QueueNotifyThread};
use crate::stats::{ExitStats, RunStats};
use crate::terminal::{Console, InputSink};
use crate::trace::ExitTracer;
use crate::vcpu::VcpuThread;

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
    Devices(#[from] devices::BusError),
    #[error("creating a virtio device failed: {0}")]
    Virtio(#[from] devices::VirtioError),
    #[error("{0}")]
    Entropy(std::io::Error),
    #[error("no free virtio-mmio slot for {0}")]
    NoSlot(String),
    #[error("cannot start vCPU thread {0}: {1}")]
    Thread(u32, std::io::Error),
    #[error("creating vCPU failed: {0}")]
    VcpuCreate(String),
    #[error("cannot start the queue-notification thread of {0}: {1}")]
    NotifyThread(String, std::io::Error),
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

/// Runs the configured guest until it powers off, panics, or (with `reboot` off) resets.
/// A guest reset rebuilds the VM from scratch: fresh memory, devices and vCPUs.
pub fn run<H: Hypervisor>(
    hv: &H,
    config: &VmConfig,
    console: &Console,
) -> Result<RunReport, VmmError> {
    let mut stats = config.stats.map(|_| RunStats::default());
    let tracer = config.trace_exits.then(|| Arc::new(ExitTracer::default()));
    loop {
        let boot_time = BootTimeSlot::default();
        let (outcome, vcpu_stats, run_time) =
            run_once(hv, config, console, tracer.clone(), &boot_time)?;
        if let Some(stats) = &mut stats {
            stats.add_run(vcpu_stats, run_time);
        }
        if outcome == VmOutcome::Reset && config.reboot {
            log::info!("guest reset: rebooting");
            continue;
        }
        let boot_time = *boot_time.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stats) = &mut stats {
            stats.boot_time = boot_time;
        }
        let trace_summary = tracer.map(|t| t.summary());
        return Ok(RunReport { outcome, boot_time, stats, trace_summary });
    }
}

/// Builds the VM, runs it, and tears it down. Returns how it ended, the vCPUs' exit statistics
/// (empty without `--stats`) and how long the vCPUs ran; the guest's boot time, if it reports
/// one, lands in `boot_time`.
fn run_once<H: Hypervisor>(
    hv: &H,
    config: &VmConfig,
    console: &Console,
    tracer: Option<Arc<ExitTracer>>,
    boot_time: &BootTimeSlot,
) -> Result<(VmOutcome, Vec<ExitStats>, std::time::Duration), VmmError> {
    let clock = BootClock::start();
    // Declared before the VM so it is dropped after it: KVM or HVF may touch guest memory until
    // the VM is gone.
    let memory =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(RAM_BASE), config.mem_bytes as usize)])
            .map_err(|e| VmmError::Memory(config.mem_bytes >> 20, e.to_string()))?;
    let spec =
        VmSpec { vcpus: config.vcpus, ipa_bits: layout::required_ipa_bits(config.mem_bytes) };
    let vm = Arc::new(hv.create_vm(&spec)?);
    for region in memory.iter() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| VmmError::Memory(config.mem_bytes >> 20, e.to_string()))?;
        // SAFETY: `memory` owns the mapping and outlives `vm` (declared first, dropped last, and
        // every vCPU thread is joined before this function returns).
        unsafe { vm.map_memory(host, region.start_addr().0, region.len(), MemoryPerms::RWX)? };
    }

    let stop = Arc::new(StopSignal::new());
    let mut devices = build_devices(vm.as_ref(), &stop, config, &memory, clock, boot_time)?;
    // Started before the vCPUs, stopped and joined when this function returns.
    let mut notify_threads = Vec::new();
    for (name, transport, notifiers) in devices.queue_notifiers.drain(..) {
        let thread = QueueNotifyThread::spawn(&name, transport, notifiers)
            .map_err(|e| VmmError::NotifyThread(name, e))?;
        notify_threads.push(thread);
    }
    let entry = load_boot_images(hv, config, &memory, &devices.virtio_nodes)?;

    console.attach(devices.console_input, stop.clone());
    let started = Instant::now();
    let observe = Observe { stats: config.stats.is_some(), tracer };
    let boot_regs = boot_registers(entry.kernel, entry.fdt);
    let outcome = run_vcpus(vm, config.vcpus, &boot_regs, Arc::new(devices.bus), &stop, observe);
    console.detach();
    let (outcome, stats) = outcome?;
    Ok((outcome, stats, started.elapsed()))
}

/// What the vCPU threads record about their exits.
pub(crate) struct Observe {
    pub stats: bool,
    pub tracer: Option<Arc<ExitTracer>>,
}

/// The VM's devices, as the rest of the build needs them.
struct Devices {
    bus: MmioBus,
    /// The device host input is fed to: the UART or the virtio console.
    console_input: Arc<dyn InputSink>,
    /// The virtio-mmio devices the device tree must describe.
    virtio_nodes: Vec<VirtioMmioNode>,
    /// The virtio devices whose queue notifications bypass hvrun (KVM's ioeventfd).
    queue_notifiers: Vec<NotifiedDevice>,
}

/// A virtio device's name, transport, and one notifier descriptor per queue.
type NotifiedDevice = (String, Arc<Mutex<MmioTransport>>, Vec<(OwnedFd, u16)>);

/// Puts the platform devices and the virtio devices on a new bus.
fn build_devices<V: Vm>(
    vm: &V,
    stop: &Arc<StopSignal>,
    config: &VmConfig,
    memory: &GuestMemoryMmap,
    clock: BootClock,
    boot_time: &BootTimeSlot,
) -> Result<Devices, VmmError> {
    let mut bus = MmioBus::new();
    let uart = Arc::new(Mutex::new(Uart16550::new(
        vm.irq_line(layout::UART_SPI),
        Box::new(std::io::stdout()),
    )));
    bus.insert(layout::UART_BASE, layout::UART_SIZE, "uart", uart.clone())?;

    let panic_stop = stop.clone();
    let pvpanic = PvPanic::new(move |event| match event {
        GuestPanic::Panicked => panic_stop.request(VmOutcome::GuestPanic),
        GuestPanic::CrashLoaded => log::info!("guest crashed into its kdump kernel"),
    });
    bus.insert(
        layout::PVPANIC_BASE,
        layout::PVPANIC_SIZE,
        "pvpanic",
        Arc::new(Mutex::new(pvpanic)),
    )?;

    let slot = boot_time.clone();
    let probe = BootProbe::new(move || {
        let measured = clock.elapsed();
        log::info!("{measured}");
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(measured);
    });
    bus.insert(
        layout::BOOT_PROBE_BASE,
        layout::BOOT_PROBE_SIZE,
        "boot-probe",
        Arc::new(Mutex::new(probe)),
    )?;

    // Disks first, in --disk order: the guest probes slots in device-tree order, so the first
    // disk is vda.
    let mut virtio: Vec<(String, Box<dyn VirtioDevice>)> = Vec::new();
    for (n, disk) in config.disks.iter().enumerate() {
        let name = format!("virtio-blk{n}");
        virtio.push((name, Box::new(VirtioBlock::new(disk.image.clone(), &disk.serial))));
    }
    let console_input = Arc::new(ConsoleInput::default());
    if config.console == ConsoleKind::Virtio {
        let console = VirtioConsole::new(Box::new(std::io::stdout()), console_input.clone());
        virtio.push((VIRTIO_CONSOLE.into(), Box::new(console)));
    }
    virtio.push(("virtio-rng".into(), Box::new(VirtioRng::new().map_err(VmmError::Entropy)?)));

    let mut console_port = None;
    let mut nodes = Vec::new();
    let mut queue_notifiers = Vec::new();
    let use_ioeventfd = ioeventfd_enabled();
    for (slot, (name, device)) in virtio.into_iter().enumerate() {
        let (base, spi) = u32::try_from(slot)
            .ok()
            .and_then(layout::virtio_mmio_slot)
            .ok_or_else(|| VmmError::NoSlot(name.clone()))?;
        let queue_count = device.queue_max_sizes().len();
        let transport =
            Arc::new(Mutex::new(MmioTransport::new(device, memory.clone(), vm.irq_line(spi))?));
        if name == VIRTIO_CONSOLE {
            console_port = Some(ConsoleInputPort::new(console_input.clone(), transport.clone()));
        }
        if use_ioeventfd {
            let mut notifiers = Vec::new();
            for queue in 0..queue_count as u16 {
                // QueueNotify takes the queue index (VIRTIO 1.2 §4.2.2, no NOTIFICATION_DATA).
                let addr = base + devices::virtio::QUEUE_NOTIFY_OFFSET;
                // Without a notifier the write exits as MMIO and reaches the same
                // process_queue, so a failure costs speed, not correctness.
                match vm.write_notifier(addr, u32::from(queue)) {
                    Ok(Some(fd)) => notifiers.push((fd, queue)),
                    Ok(None) => {}
                    Err(e) => log::warn!("{name} queue {queue}: {e}; notifications will exit"),
                }
            }
            if !notifiers.is_empty() {
                queue_notifiers.push((name.clone(), transport.clone(), notifiers));
            }
        }
        bus.insert(base, layout::VIRTIO_MMIO_SLOT_SIZE, name, transport)?;
        // virtio-mmio's interrupt is a level: InterruptStatus stays set until the driver
        // acknowledges it (VIRTIO 1.2 §4.2.2).
        nodes.push(VirtioMmioNode {
            base,
            size: layout::VIRTIO_MMIO_SLOT_SIZE,
            spi,
            trigger: IRQ_TYPE_LEVEL_HIGH,
        });
    }
    let console_input: Arc<dyn InputSink> = match console_port {
        Some(port) => Arc::new(port),
        None => uart,
    };
    Ok(Devices { bus, console_input, virtio_nodes: nodes, queue_notifiers })
}

/// The virtio console's name on the bus.
const VIRTIO_CONSOLE: &str = "virtio-console";

/// Where the boot vCPU starts.
#[derive(Clone, Copy, Debug)]
struct BootEntry {
    kernel: u64,
    fdt: u64,
}

/// Loads the kernel and initrd, then writes the device tree that points at them.
fn load_boot_images<H: Hypervisor>(
    hv: &H,
    config: &VmConfig,
    memory: &GuestMemoryMmap,
    virtio: &[VirtioMmioNode],
) -> Result<BootEntry, VmmError> {
    let initrd_len = config.initrd.as_ref().map_or(0, |i| i.len() as u64);
    let place = BootPlacement::plan(config.mem_bytes, config.kernel.footprint(), initrd_len)?;
    let kernel = config.kernel.load(memory, GuestAddress(place.kernel_base))?;
    if let Some(initrd) = &config.initrd {
        place.write_initrd(memory, initrd)?;
    }

    let mpidrs: Vec<u64> = (0..config.vcpus).map(mpidr_for_vcpu).collect();
    let mut rng_seed = [0u8; 64];
    fill_random(&mut rng_seed);
    let mut kaslr = [0u8; 8];
    fill_random(&mut kaslr);
    let blob = fdt::build(&FdtConfig {
        ram_size: config.mem_bytes,
        cpu_mpidrs: &mpidrs,
        cmdline: &config.cmdline,
        initrd: place.initrd,
        psci: hv.psci_conduit(),
        virtio,
        rng_seed: &rng_seed,
        kaslr_seed: u64::from_le_bytes(kaslr),
    })
    .map_err(|e| VmmError::Fdt(e.to_string()))?;
    place.write_fdt(memory, &blob)?;
    Ok(BootEntry { kernel: kernel.entry.0, fdt: place.fdt })
}

/// Fills `buf` from the host's entropy source (/dev/urandom, on Linux and macOS alike); zeros if
/// that fails, which only costs the guest an early entropy seed.
fn fill_random(buf: &mut [u8]) {
    use std::io::Read;
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf));
    if let Err(e) = read {
        log::warn!("cannot read /dev/urandom ({e}); the guest gets no early entropy seed");
        buf.fill(0);
    }
}

/// Starts one thread per vCPU (vCPU 0 with `boot_regs`), finalises the VM once all exist, and
/// waits for the VM to stop.
pub(crate) fn run_vcpus<V: Vm>(
    vm: Arc<V>,
    vcpus: u32,
    boot_regs: &[(Reg, u64)],
    bus: Arc<MmioBus>,
    stop: &Arc<StopSignal>,
    observe: Observe,
) -> Result<(VmOutcome, Vec<ExitStats>), VmmError> {
    let (created_tx, created_rx) = mpsc::channel();
    let mut threads = Vec::new();
    let mut go = Vec::new();
    for index in 0..vcpus {
        let (go_tx, go_rx) = mpsc::channel();
        let initial_regs = if index == 0 { boot_regs.to_vec() } else { Vec::new() };
        let thread = VcpuThread {
            vm: vm.clone(),
            index,
            initial_regs,
            bus: bus.clone(),
            stop: stop.clone(),
            created: created_tx.clone(),
            go: go_rx,
            stats: observe.stats,
            tracer: observe.tracer.clone(),
        };
        let spawned =
            std::thread::Builder::new().name(format!("vcpu{index}")).spawn(move || thread.run());
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => {
                drop(go); // the threads already started see a hang-up and return
                join_all(threads);
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
        join_all(threads);
        return Err(VmmError::VcpuCreate(e));
    }
    for tx in &go {
        let _ = tx.send(true);
    }

    let outcome = stop.wait();
    let stats = join_all(threads);
    Ok((outcome, stats))
}

/// Joins the vCPU threads and collects the exit statistics they kept (in vCPU order).
fn join_all(threads: Vec<std::thread::JoinHandle<Option<ExitStats>>>) -> Vec<ExitStats> {
    threads.into_iter().filter_map(|t| t.join().ok().flatten()).collect()
}
