//! The VM's devices: the platform devices at fixed addresses (UART, pvpanic, boot-time probe)
//! and a table of virtio-mmio slots — what sits in each, where, on which interrupt, and the
//! host-side handles the rest of hvrun uses to reach it (console input, worker threads).

use std::sync::{Arc, Mutex};

use boot::fdt::IRQ_TYPE_LEVEL_HIGH;
use boot::layout;
use boot::VirtioMmioNode;
use devices::pvpanic::GuestPanic;
use devices::virtio::block::VirtioBlock;
use devices::virtio::console::RECEIVEQ;
use devices::virtio::{DeviceWorker, QUEUE_NOTIFY_OFFSET};
use devices::{
    BootProbe, ConsoleInput, ConsoleInputPort, MmioBus, MmioTransport, PvPanic, Uart16550,
    VirtioConsole, VirtioDevice, VirtioRng,
};
use vm_memory::GuestMemoryMmap;

use super::VmmError;
use crate::config::{ConsoleKind, VmConfig};
use crate::control::{VmControl, VmOutcome};
use crate::hv::Vm;
use crate::stats::boot_time::{BootClock, BootTimeSlot};
use crate::terminal::{InputSink, Terminal};

/// What a virtio slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioKind {
    Block,
    Console,
    Rng,
}

impl VirtioKind {
    /// The name the API and logs use.
    pub fn name(self) -> &'static str {
        match self {
            VirtioKind::Block => "virtio-blk",
            VirtioKind::Console => "virtio-console",
            VirtioKind::Rng => "virtio-rng",
        }
    }
}

/// One virtio-mmio slot of the machine (`boot::layout::virtio_mmio_slot`).
pub struct VirtioSlot {
    pub kind: VirtioKind,
    /// Unique, stable within a configuration: `virtio-blk0`, `virtio-console`, `virtio-rng`.
    pub id: String,
    /// Guest physical address of the register block.
    pub base: u64,
    /// Shared peripheral interrupt number (interrupt ID 32 + spi).
    pub spi: u32,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// Everything of the VM that is not RAM or a vCPU.
pub struct VmDevices {
    /// Where MMIO exits are dispatched; shared with the vCPU threads.
    pub bus: Arc<MmioBus>,
    /// The virtio slots, in slot order (the guest probes them in this order: vda is the first
    /// disk).
    pub slots: Vec<VirtioSlot>,
    /// The device host input is fed to: the UART or the virtio console.
    pub console_input: Arc<dyn InputSink>,
    /// One per virtio device; dropping them stops and joins the threads.
    workers: Vec<DeviceWorker>,
}

impl VmDevices {
    /// What the device tree must say about the virtio slots. virtio-mmio's interrupt is a
    /// level: InterruptStatus stays set until the driver acknowledges it (VIRTIO 1.2 §4.2.2).
    pub fn fdt_nodes(&self) -> Vec<VirtioMmioNode> {
        (self.slots.iter())
            .map(|slot| VirtioMmioNode {
                base: slot.base,
                size: layout::VIRTIO_MMIO_SLOT_SIZE,
                spi: slot.spi,
                trigger: IRQ_TYPE_LEVEL_HIGH,
            })
            .collect()
    }

    /// Stops the device workers, each after the request it is serving. Called once the vCPUs
    /// are gone, before guest RAM is freed.
    pub fn stop_workers(&mut self) {
        self.workers.clear();
    }
}

impl Drop for VmDevices {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

/// Builds every device of the VM and starts the virtio devices' workers.
pub fn build_devices<V: Vm>(
    vm: &V,
    control: &Arc<VmControl>,
    config: &VmConfig,
    memory: &GuestMemoryMmap,
    terminal: &Terminal,
    clock: BootClock,
    boot_time: &BootTimeSlot,
) -> Result<VmDevices, VmmError> {
    let mut bus = MmioBus::new();
    let uart = platform_devices(&mut bus, vm, control, terminal, clock, boot_time)?;

    let console_input = Arc::new(ConsoleInput::default());
    let mut slots = Vec::new();
    let mut workers = Vec::new();
    let planned = virtio_devices(config, terminal, &console_input)?;
    for (n, NewVirtio { kind, id, device }) in planned.into_iter().enumerate() {
        let (base, spi) = u32::try_from(n)
            .ok()
            .and_then(layout::virtio_mmio_slot)
            .ok_or_else(|| VmmError::NoSlot(id.clone()))?;
        let transport = MmioTransport::new(device, memory.clone(), vm.irq_line(spi))?;
        if config.ioeventfd {
            ring_notifiers_in_hypervisor(vm, &id, base, &transport);
        }
        workers.push(
            DeviceWorker::spawn(
                &id,
                transport.shared_device().clone(),
                transport.queue_notifiers().to_vec(),
            )
            .map_err(|e| VmmError::DeviceThread(id.clone(), e))?,
        );
        let transport = Arc::new(Mutex::new(transport));
        bus.insert(base, layout::VIRTIO_MMIO_SLOT_SIZE, id.clone(), transport.clone())?;
        slots.push(VirtioSlot { kind, id, base, spi, transport });
    }

    let console_input: Arc<dyn InputSink> =
        match slots.iter().find(|slot| slot.kind == VirtioKind::Console) {
            Some(slot) => {
                let transport = slot.transport.lock().unwrap_or_else(|p| p.into_inner());
                let receive = transport.queue_notifiers()[usize::from(RECEIVEQ)].clone();
                Arc::new(ConsoleInputPort::new(console_input, receive))
            }
            None => uart,
        };
    Ok(VmDevices { bus: Arc::new(bus), slots, console_input, workers })
}

/// The devices at fixed addresses; returns the UART, the default console input.
fn platform_devices<V: Vm>(
    bus: &mut MmioBus,
    vm: &V,
    control: &Arc<VmControl>,
    terminal: &Terminal,
    clock: BootClock,
    boot_time: &BootTimeSlot,
) -> Result<Arc<Mutex<Uart16550>>, VmmError> {
    let uart = Uart16550::new(vm.irq_line(layout::UART_SPI), Box::new(terminal.output()));
    let uart = Arc::new(Mutex::new(uart));
    bus.insert(layout::UART_BASE, layout::UART_SIZE, "uart", uart.clone())?;

    let panic_control = control.clone();
    let pvpanic = PvPanic::new(move |event| match event {
        GuestPanic::Panicked => panic_control.request_stop(VmOutcome::GuestPanic),
        GuestPanic::CrashLoaded => log::info!("guest crashed into its kdump kernel"),
    });
    let pvpanic = Arc::new(Mutex::new(pvpanic));
    bus.insert(layout::PVPANIC_BASE, layout::PVPANIC_SIZE, "pvpanic", pvpanic)?;

    let slot = boot_time.clone();
    let probe = BootProbe::new(move || {
        let measured = clock.elapsed();
        log::info!("{measured}");
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(measured);
    });
    let probe = Arc::new(Mutex::new(probe));
    bus.insert(layout::BOOT_PROBE_BASE, layout::BOOT_PROBE_SIZE, "boot-probe", probe)?;
    Ok(uart)
}

/// A virtio device about to get a slot.
struct NewVirtio {
    kind: VirtioKind,
    id: String,
    device: Box<dyn VirtioDevice>,
}

/// The virtio devices in slot order: the disks first, in `--disk` order (the guest probes
/// slots in device-tree order, so the first disk is vda), then the console, then entropy.
fn virtio_devices(
    config: &VmConfig,
    terminal: &Terminal,
    console_input: &Arc<ConsoleInput>,
) -> Result<Vec<NewVirtio>, VmmError> {
    let mut devices = Vec::new();
    for (n, disk) in config.disks.iter().enumerate() {
        let device = Box::new(VirtioBlock::new(disk.image.clone(), &disk.serial));
        devices.push(NewVirtio { kind: VirtioKind::Block, id: format!("virtio-blk{n}"), device });
    }
    if config.console == ConsoleKind::Virtio {
        let device =
            Box::new(VirtioConsole::new(Box::new(terminal.output()), console_input.clone()));
        devices.push(NewVirtio { kind: VirtioKind::Console, id: "virtio-console".into(), device });
    }
    let device = Box::new(VirtioRng::new().map_err(VmmError::Entropy)?);
    devices.push(NewVirtio { kind: VirtioKind::Rng, id: "virtio-rng".into(), device });
    Ok(devices)
}

/// Asks the hypervisor to ring each queue's notifier itself when the driver writes its index to
/// QueueNotify (KVM's ioeventfd): the write then completes in the kernel, with no exit to
/// hvrun. Without it (Hypervisor.framework, or a refusal) the write exits as MMIO and the
/// transport rings the same notifier — slower, equally correct.
fn ring_notifiers_in_hypervisor<V: Vm>(vm: &V, id: &str, base: u64, transport: &MmioTransport) {
    for (queue, notifier) in transport.queue_notifiers().iter().enumerate() {
        // QueueNotify takes the queue index (VIRTIO 1.2 §4.2.2, no NOTIFICATION_DATA).
        if let Err(e) = vm.ring_on_write(base + QUEUE_NOTIFY_OFFSET, queue as u32, notifier) {
            log::warn!("{id} queue {queue}: {e}; its notifications will exit to hvrun");
        }
    }
}
