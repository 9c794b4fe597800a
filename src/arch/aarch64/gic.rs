//! Wiring the userspace GICv3 (`devices::gic_v3`) into hvrun's machine: the MPIDRs the FDT and
//! the backend use, the interrupt count and the frame addresses of `boot::layout`, so the GIC
//! the guest finds on the bus is the one the device tree describes.

use boot::layout;
use devices::gic_v3::{GicError, GicV3, GICD_FRAME_SIZE, GICR_FRAME_SIZE, MAX_VCPUS};
use devices::{BusError, MmioBus};

use super::mpidr_for_vcpu;

// The model's frames are the sizes the layout (and so the FDT) gives them, and it can hold as
// many vCPUs as the redistributor window.
const _: () = {
    assert!(GICD_FRAME_SIZE == layout::GICD_SIZE);
    assert!(GICR_FRAME_SIZE == layout::GICR_SIZE_PER_VCPU);
    assert!(MAX_VCPUS >= layout::MAX_VCPUS as usize);
};

/// A userspace GICv3 for `vcpus` vCPUs with hvrun's MPIDRs and interrupt count.
pub fn userspace_gic(vcpus: u32) -> Result<GicV3, GicError> {
    GicV3::new((0..vcpus).map(mpidr_for_vcpu).collect(), layout::GIC_NR_IRQS)
}

/// Puts the distributor at `GICD_BASE` and the redistributors at `GICR_BASE` on `bus`.
pub fn attach_to_bus(gic: &GicV3, bus: &mut MmioBus) -> Result<(), BusError> {
    bus.insert(layout::GICD_BASE, GICD_FRAME_SIZE, "gicv3-distributor", gic.distributor())?;
    bus.insert(
        layout::GICR_BASE,
        gic.redistributors_size(),
        "gicv3-redistributors",
        gic.redistributors(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_finds_the_gic_where_the_fdt_says() {
        let vcpus = 3;
        let gic = userspace_gic(vcpus).unwrap();
        let mut bus = MmioBus::new();
        attach_to_bus(&gic, &mut bus).unwrap();
        assert_eq!(gic.redistributors_size(), layout::gicr_size(vcpus));
        // GICD_PIDR2 and GICD_TYPER.ITLinesNumber (GIC_NR_IRQS = 128 → 3).
        assert_eq!(bus.read(layout::GICD_BASE + 0xffe8, 4).map(|v| v & 0xf0), Some(0x30));
        assert_eq!(bus.read(layout::GICD_BASE + 0x4, 4).map(|v| v & 0x1f), Some(3));
        // Each vCPU's GICR_TYPER carries its MPIDR affinity; the last one says Last.
        for cpu in 0..vcpus {
            let typer = layout::GICR_BASE + u64::from(cpu) * layout::GICR_SIZE_PER_VCPU + 8;
            let t = bus.read(typer, 8).unwrap();
            assert_eq!(t >> 32, mpidr_for_vcpu(cpu) & 0xff_ffff);
            assert_eq!(t & 0x10 != 0, cpu == vcpus - 1);
        }
        assert_eq!(bus.read(layout::GICR_BASE + layout::gicr_size(vcpus), 4), None);
        // Every SPI the layout hands out has a line.
        let (_, last_spi) = layout::virtio_mmio_slot(layout::VIRTIO_MMIO_SLOTS - 1).unwrap();
        assert!(gic.spi_line(layout::UART_SPI).is_some());
        assert!(gic.spi_line(last_spi).is_some());
    }

    #[test]
    fn too_many_vcpus_is_an_error() {
        assert!(userspace_gic(0).is_err());
        assert!(userspace_gic(layout::MAX_VCPUS).is_ok());
    }
}
