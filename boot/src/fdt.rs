//! The flattened device tree that describes the machine to an arm64 Linux guest: memory, CPUs,
//! PSCI, the GICv3, the architected timer, the UART, pvpanic, every virtio-mmio device and the
//! `chosen` node (command line, console, initrd).
//!
//! Bindings: Documentation/devicetree/bindings/ in the kernel tree — interrupt-controller/
//! arm,gic-v3.yaml, timer/arm,arch_timer.yaml, arm/psci.yaml, serial/8250.yaml,
//! virtio/mmio.yaml, misc/qemu,pvpanic-mmio; the `chosen` properties are in the DT spec §3.6.

use vm_fdt::{FdtWriter, FdtWriterResult};

use crate::layout;

/// The GIC's phandle; every interrupt in the tree is routed to it.
const GIC_PHANDLE: u32 = 1;
/// First cell of an interrupt specifier: shared peripheral interrupt (arm,gic-v3.yaml).
const GIC_SPI: u32 = 0;
/// First cell of an interrupt specifier: private peripheral interrupt.
const GIC_PPI: u32 = 1;
/// Third cell: trigger type (include/dt-bindings/interrupt-controller/irq.h).
pub const IRQ_TYPE_EDGE_RISING: u32 = 1;
/// Third cell: level-sensitive, active high.
pub const IRQ_TYPE_LEVEL_HIGH: u32 = 4;
/// Architected timer PPIs: secure physical, non-secure physical, virtual, hypervisor
/// (arm,arch_timer.yaml gives this order).
const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];
/// The GIC's virtual CPU interface maintenance interrupt: PPI 9 (INTID 25), the number Arm's
/// BSA recommends and Hypervisor.framework's GIC uses (`HV_GIC_INT_MAINTENANCE`; QEMU's HVF
/// GIC refuses any other).
pub const GIC_MAINTENANCE_PPI: u32 = 9;
/// The 16550's input clock; Linux derives baud rates from it.
const UART_CLOCK_HZ: u32 = 1_843_200;

/// How PSCI calls reach the VMM: the FDT `method` must match what the backend traps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciConduit {
    /// `hvc #0` (KVM and Hypervisor.framework both trap it).
    Hvc,
    /// `smc #0`.
    Smc,
}

/// One virtio-mmio device as the guest must see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioNode {
    /// Guest physical base of the device's register slot.
    pub base: u64,
    /// Size of the slot.
    pub size: u64,
    /// SPI number (interrupt ID minus 32).
    pub spi: u32,
    /// [`IRQ_TYPE_EDGE_RISING`] or [`IRQ_TYPE_LEVEL_HIGH`].
    pub trigger: u32,
}

/// Everything the device tree describes.
#[derive(Clone, Debug)]
pub struct FdtConfig<'a> {
    /// Guest RAM size in bytes (RAM starts at [`layout::RAM_BASE`]).
    pub ram_size: u64,
    /// MPIDR_EL1 affinity value of each vCPU, in vCPU index order.
    pub cpu_mpidrs: &'a [u64],
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Guest physical range of the initrd: (start, size).
    pub initrd: Option<(u64, u64)>,
    /// How PSCI is called.
    pub psci: PsciConduit,
    /// virtio-mmio devices, in slot order.
    pub virtio: &'a [VirtioMmioNode],
    /// Random bytes for `chosen/rng-seed` (seeds the guest's CRNG before any driver loads).
    pub rng_seed: &'a [u8],
    /// Random value for `chosen/kaslr-seed`.
    pub kaslr_seed: u64,
}

/// Builds the device tree blob.
pub fn build(cfg: &FdtConfig) -> FdtWriterResult<Vec<u8>> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_string("model", "hvrun")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    chosen(&mut fdt, cfg)?;
    memory(&mut fdt, cfg.ram_size)?;
    cpus(&mut fdt, cfg.cpu_mpidrs)?;
    psci(&mut fdt, cfg.psci)?;
    gic(&mut fdt, cfg.cpu_mpidrs.len() as u32)?;
    timer(&mut fdt)?;
    uart(&mut fdt)?;
    pvpanic(&mut fdt)?;
    for dev in cfg.virtio {
        virtio_mmio(&mut fdt, dev)?;
    }

    fdt.end_node(root)?;
    fdt.finish()
}

/// The node path of the UART, which is also the `stdout-path`.
pub fn uart_node_name() -> String {
    format!("uart@{:x}", layout::UART_BASE)
}

fn chosen(fdt: &mut FdtWriter, cfg: &FdtConfig) -> FdtWriterResult<()> {
    let node = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", cfg.cmdline)?;
    // `earlycon` with no argument finds the console through stdout-path.
    fdt.property_string("stdout-path", &format!("/{}", uart_node_name()))?;
    if let Some((start, size)) = cfg.initrd {
        fdt.property_u64("linux,initrd-start", start)?;
        fdt.property_u64("linux,initrd-end", start + size)?;
    }
    if !cfg.rng_seed.is_empty() {
        fdt.property("rng-seed", cfg.rng_seed)?;
    }
    fdt.property_u64("kaslr-seed", cfg.kaslr_seed)?;
    fdt.end_node(node)
}

fn memory(fdt: &mut FdtWriter, ram_size: u64) -> FdtWriterResult<()> {
    let node = fdt.begin_node(&format!("memory@{:x}", layout::RAM_BASE))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &[layout::RAM_BASE, ram_size])?;
    fdt.end_node(node)
}

fn cpus(fdt: &mut FdtWriter, mpidrs: &[u64]) -> FdtWriterResult<()> {
    let node = fdt.begin_node("cpus")?;
    // One cell of address: Aff2..Aff0 fit in 24 bits for up to 123 vCPUs.
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for &mpidr in mpidrs {
        let reg = (mpidr & 0x00ff_ffff) as u32;
        let cpu = fdt.begin_node(&format!("cpu@{reg:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_u32("reg", reg)?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(node)
}

fn psci(fdt: &mut FdtWriter, conduit: PsciConduit) -> FdtWriterResult<()> {
    let node = fdt.begin_node("psci")?;
    fdt.property_string_list("compatible", vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()])?;
    let method = match conduit {
        PsciConduit::Hvc => "hvc",
        PsciConduit::Smc => "smc",
    };
    fdt.property_string("method", method)?;
    fdt.end_node(node)
}

fn gic(fdt: &mut FdtWriter, vcpus: u32) -> FdtWriterResult<()> {
    let node = fdt.begin_node(&format!("intc@{:x}", layout::GICD_BASE))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_array_u64(
        "reg",
        &[layout::GICD_BASE, layout::GICD_SIZE, layout::GICR_BASE, layout::gicr_size(vcpus)],
    )?;
    fdt.property_u32("#redistributor-regions", 1)?;
    // A guest kernel at EL2 (--nested) only offers KVM a vGIC when the GIC node names its
    // maintenance interrupt: Linux's gic_of_setup_kvm_info() returns early without it
    // (drivers/irqchip/irq-gic-v3.c). A guest at EL1 ignores it.
    fdt.property_array_u32("interrupts", &[GIC_PPI, GIC_MAINTENANCE_PPI, IRQ_TYPE_LEVEL_HIGH])?;
    fdt.property_phandle(GIC_PHANDLE)?;
    fdt.end_node(node)
}

fn timer(fdt: &mut FdtWriter) -> FdtWriterResult<()> {
    let node = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    fdt.property_null("always-on")?;
    let cells: Vec<u32> =
        TIMER_PPIS.iter().flat_map(|&ppi| [GIC_PPI, ppi, IRQ_TYPE_LEVEL_HIGH]).collect();
    fdt.property_array_u32("interrupts", &cells)?;
    fdt.end_node(node)
}

fn uart(fdt: &mut FdtWriter) -> FdtWriterResult<()> {
    let node = fdt.begin_node(&uart_node_name())?;
    fdt.property_string("compatible", "ns16550a")?;
    fdt.property_array_u64("reg", &[layout::UART_BASE, layout::UART_SIZE])?;
    fdt.property_u32("clock-frequency", UART_CLOCK_HZ)?;
    // The UART model signals "something changed" as an edge (vm-superio's Trigger).
    fdt.property_array_u32("interrupts", &[GIC_SPI, layout::UART_SPI, IRQ_TYPE_EDGE_RISING])?;
    fdt.end_node(node)
}

fn pvpanic(fdt: &mut FdtWriter) -> FdtWriterResult<()> {
    let node = fdt.begin_node(&format!("pvpanic@{:x}", layout::PVPANIC_BASE))?;
    fdt.property_string("compatible", "qemu,pvpanic-mmio")?;
    fdt.property_array_u64("reg", &[layout::PVPANIC_BASE, 2])?;
    fdt.end_node(node)
}

fn virtio_mmio(fdt: &mut FdtWriter, dev: &VirtioMmioNode) -> FdtWriterResult<()> {
    let node = fdt.begin_node(&format!("virtio_mmio@{:x}", dev.base))?;
    fdt.property_string("compatible", "virtio,mmio")?;
    fdt.property_array_u64("reg", &[dev.base, dev.size])?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, dev.spi, dev.trigger])?;
    // Device and driver share guest RAM coherently: no cache maintenance needed.
    fdt.property_null("dma-coherent")?;
    fdt.end_node(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// Decompiles a blob with `dtc`, the reference implementation; CI installs it.
    fn decompile(blob: &[u8]) -> String {
        let mut child = Command::new("dtc")
            .args(["-I", "dtb", "-O", "dts", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dtc (package device-tree-compiler) is needed to check the device tree");
        child.stdin.take().unwrap().write_all(blob).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "dtc rejected the blob: {stderr}");
        assert!(!stderr.contains("ERROR"), "dtc: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn sample() -> Vec<u8> {
        let virtio = [
            VirtioMmioNode {
                base: 0x0a00_0000,
                size: 0x1000,
                spi: 32,
                trigger: IRQ_TYPE_EDGE_RISING,
            },
            VirtioMmioNode {
                base: 0x0a00_1000,
                size: 0x1000,
                spi: 33,
                trigger: IRQ_TYPE_LEVEL_HIGH,
            },
        ];
        build(&FdtConfig {
            ram_size: 512 << 20,
            cpu_mpidrs: &[0x8000_0000, 0x8000_0001],
            cmdline: "console=ttyS0 quiet -- echo hi",
            initrd: Some((0x5f00_0000, 0x10_0000)),
            psci: PsciConduit::Hvc,
            virtio: &virtio,
            rng_seed: &[7; 32],
            kaslr_seed: 42,
        })
        .unwrap()
    }

    #[test]
    fn blob_has_the_fdt_header() {
        let blob = sample();
        assert_eq!(&blob[0..4], &[0xd0, 0x0d, 0xfe, 0xed]);
        let total = u32::from_be_bytes(blob[4..8].try_into().unwrap()) as usize;
        assert_eq!(total, blob.len());
        assert!((blob.len() as u64) < layout::FDT_MAX_SIZE);
    }

    #[test]
    fn dtc_reads_back_every_node() {
        let dts = decompile(&sample());
        for needle in [
            "compatible = \"linux,dummy-virt\";",
            "bootargs = \"console=ttyS0 quiet -- echo hi\";",
            "stdout-path = \"/uart@9000000\";",
            "linux,initrd-start = <0x00 0x5f000000>;",
            "linux,initrd-end = <0x00 0x5f100000>;",
            "memory@40000000 {",
            "reg = <0x00 0x40000000 0x00 0x20000000>;",
            "cpu@0 {",
            "cpu@1 {",
            "enable-method = \"psci\";",
            "method = \"hvc\";",
            "compatible = \"arm,psci-1.0\\0arm,psci-0.2\";",
            "compatible = \"arm,gic-v3\";",
            // Distributor, then two vCPUs' worth (2 x 128 KiB) of redistributors.
            "reg = <0x00 0x8000000 0x00 0x10000 0x00 0x80a0000 0x00 0x40000>;",
            "interrupts = <0x01 0x0d 0x04 0x01 0x0e 0x04 0x01 0x0b 0x04 0x01 0x0a 0x04>;",
            "compatible = \"ns16550a\";",
            "interrupts = <0x00 0x01 0x01>;",
            "compatible = \"qemu,pvpanic-mmio\";",
            "virtio_mmio@a000000 {",
            "virtio_mmio@a001000 {",
            "interrupts = <0x00 0x20 0x01>;",
            "interrupts = <0x00 0x21 0x04>;",
            "dma-coherent;",
        ] {
            assert!(dts.contains(needle), "missing `{needle}` in:\n{dts}");
        }
    }

    /// The text of one node of a decompiled tree, from its name to its closing brace.
    fn node<'a>(dts: &'a str, name: &str) -> &'a str {
        let start = dts.find(&format!("{name} {{")).unwrap_or_else(|| panic!("no {name}"));
        let end = dts[start..].find("};").map(|e| start + e).unwrap();
        &dts[start..end]
    }

    #[test]
    fn dtc_gic_names_its_maintenance_interrupt() {
        let dts = decompile(&sample());
        let intc = node(&dts, "intc@8000000");
        // PPI 9, level high: what KVM in a guest at EL2 needs to offer a vGIC.
        assert!(intc.contains("interrupts = <0x01 0x09 0x04>;"), "{intc}");
        assert!(intc.contains("interrupt-controller;"), "{intc}");
    }

    #[test]
    fn dtc_smc_conduit_and_no_initrd() {
        let blob = build(&FdtConfig {
            ram_size: 64 << 20,
            cpu_mpidrs: &[0x8000_0000],
            cmdline: "",
            initrd: None,
            psci: PsciConduit::Smc,
            virtio: &[],
            rng_seed: &[],
            kaslr_seed: 0,
        })
        .unwrap();
        let dts = decompile(&blob);
        assert!(dts.contains("method = \"smc\";"));
        assert!(!dts.contains("linux,initrd-start"));
        assert!(!dts.contains("virtio_mmio"));
        assert!(!dts.contains("rng-seed"));
    }
}
