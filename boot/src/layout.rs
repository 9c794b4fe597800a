//! The arm64 guest physical address map: where RAM, the GIC, the UART and the virtio-mmio slots
//! live, and where the kernel, initrd and device tree are placed inside RAM.
//!
//! ```text
//! 0x0000_0000 ┬ (unmapped: a guest access here is an MMIO exit nobody claims)
//! 0x0800_0000 ┼ GICv3 distributor                64 KiB
//! 0x080A_0000 ┼ GICv3 redistributors             128 KiB per vCPU, up to 123 vCPUs
//! 0x0900_0000 ┼ 16550 UART                       4 KiB
//! 0x0901_0000 ┼ pvpanic                          4 KiB
//! 0x0902_0000 ┼ boot-time probe                  4 KiB
//! 0x0A00_0000 ┼ virtio-mmio slots                4 KiB each, 64 slots
//! 0x4000_0000 ┼ RAM ── kernel at the start (2 MiB aligned), initrd and FDT at the top
//! ```
//!
//! The low 1 GiB is the same MMIO window QEMU's `virt` machine uses, so guests and tools that know
//! `virt` feel at home, and RAM at 1 GiB keeps the whole map inside the 36-bit IPA space that
//! Hypervisor.framework gives by default.

/// Guest physical address where RAM starts.
pub const RAM_BASE: u64 = 0x4000_0000;

/// GICv3 distributor frame (GICD), 64 KiB (GICv3 architecture spec §12.9).
pub const GICD_BASE: u64 = 0x0800_0000;
/// Size of the distributor frame.
pub const GICD_SIZE: u64 = 0x1_0000;
/// First redistributor (GICR); each vCPU has an RD_base and an SGI_base frame of 64 KiB each.
pub const GICR_BASE: u64 = 0x080A_0000;
/// Size of one vCPU's redistributor region.
pub const GICR_SIZE_PER_VCPU: u64 = 0x2_0000;
/// End of the redistributor window: the UART comes next.
const GICR_LIMIT: u64 = 0x0900_0000;
/// The most vCPUs the redistributor window can hold.
pub const MAX_VCPUS: u32 = ((GICR_LIMIT - GICR_BASE) / GICR_SIZE_PER_VCPU) as u32;

/// 16550 UART registers (byte-wide, no register shift).
pub const UART_BASE: u64 = 0x0900_0000;
/// Size of the UART's MMIO region.
pub const UART_SIZE: u64 = 0x1000;
/// The UART's shared peripheral interrupt, relative to the first SPI (interrupt ID 32).
pub const UART_SPI: u32 = 1;

/// pvpanic-mmio: the guest writes here when its kernel panics.
pub const PVPANIC_BASE: u64 = 0x0901_0000;
/// Size of the pvpanic MMIO region.
pub const PVPANIC_SIZE: u64 = 0x1000;

/// The boot-time probe: the guest's init writes 123 here when userspace starts.
pub const BOOT_PROBE_BASE: u64 = 0x0902_0000;
/// Size of the boot-time probe's MMIO region.
pub const BOOT_PROBE_SIZE: u64 = 0x1000;

/// First virtio-mmio slot.
pub const VIRTIO_MMIO_BASE: u64 = 0x0A00_0000;
/// Each virtio-mmio device gets one 4 KiB slot (VIRTIO 1.2 §4.2.2 uses 0x100+ bytes of it).
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// How many virtio-mmio slots the map has room for.
pub const VIRTIO_MMIO_SLOTS: u32 = 64;
/// SPI of the first virtio-mmio slot; slot `n` uses `VIRTIO_MMIO_FIRST_SPI + n`.
pub const VIRTIO_MMIO_FIRST_SPI: u32 = 32;

/// Interrupt IDs the vGIC is sized for: 32 private (SGI+PPI) plus the SPIs we hand out,
/// rounded up to a multiple of 32 as the GIC requires.
pub const GIC_NR_IRQS: u32 = 32 + VIRTIO_MMIO_FIRST_SPI + VIRTIO_MMIO_SLOTS;

/// The arm64 boot protocol wants the Image at a 2 MiB aligned base
/// (Documentation/arch/arm64/booting.rst §4).
pub const KERNEL_ALIGN: u64 = 2 << 20;
/// The device tree must be 8-byte aligned and may not cross a 2 MiB boundary (booting.rst §2):
/// we give it the whole last 2 MiB block of RAM.
pub const FDT_MAX_SIZE: u64 = 2 << 20;

/// Smallest guest RAM we accept: a Debian kernel plus an initramfs needs about this much.
pub const MIN_RAM: u64 = 64 << 20;

/// The smallest IPA (guest physical address) width that holds `ram_size` bytes of RAM above
/// [`RAM_BASE`], i.e. what the hypervisor must be able to map.
pub fn required_ipa_bits(ram_size: u64) -> u32 {
    let top = RAM_BASE.saturating_add(ram_size);
    // Number of bits needed to address `top - 1`.
    64 - (top - 1).leading_zeros()
}

/// The most RAM that fits below `1 << ipa_bits`.
pub fn max_ram_for_ipa_bits(ipa_bits: u32) -> u64 {
    (1u64 << ipa_bits.min(63)).saturating_sub(RAM_BASE)
}

/// Guest base address and SPI of virtio-mmio slot `slot`.
pub fn virtio_mmio_slot(slot: u32) -> Option<(u64, u32)> {
    (slot < VIRTIO_MMIO_SLOTS).then(|| {
        (VIRTIO_MMIO_BASE + u64::from(slot) * VIRTIO_MMIO_SLOT_SIZE, VIRTIO_MMIO_FIRST_SPI + slot)
    })
}

/// Size of the redistributor region for `vcpus` vCPUs.
pub const fn gicr_size(vcpus: u32) -> u64 {
    vcpus as u64 * GICR_SIZE_PER_VCPU
}

/// Where the device tree goes: the last 2 MiB block of RAM.
pub fn fdt_address(ram_size: u64) -> u64 {
    RAM_BASE + ram_size - FDT_MAX_SIZE
}

// The map's invariants, checked when hvrun is compiled: regions in order and disjoint, all of
// them below RAM, and a GIC interrupt count the architecture accepts (a multiple of 32).
const _: () = {
    assert!(GICD_BASE + GICD_SIZE <= GICR_BASE);
    assert!(GICR_BASE + gicr_size(MAX_VCPUS) <= UART_BASE);
    assert!(MAX_VCPUS == 123);
    assert!(UART_BASE + UART_SIZE <= PVPANIC_BASE);
    assert!(PVPANIC_BASE + PVPANIC_SIZE <= BOOT_PROBE_BASE);
    assert!(BOOT_PROBE_BASE + BOOT_PROBE_SIZE <= VIRTIO_MMIO_BASE);
    assert!(VIRTIO_MMIO_BASE + VIRTIO_MMIO_SLOTS as u64 * VIRTIO_MMIO_SLOT_SIZE <= RAM_BASE);
    assert!(UART_SPI < VIRTIO_MMIO_FIRST_SPI);
    assert!(GIC_NR_IRQS % 32 == 0);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_spis() {
        assert_eq!(virtio_mmio_slot(0), Some((0x0A00_0000, 32)));
        assert_eq!(virtio_mmio_slot(2), Some((0x0A00_2000, 34)));
        assert_eq!(virtio_mmio_slot(VIRTIO_MMIO_SLOTS), None);
    }

    #[test]
    fn ipa_bits_follow_ram_size() {
        // 1 GiB base + 1 GiB of RAM ends at 2 GiB: 31 bits.
        assert_eq!(required_ipa_bits(1 << 30), 31);
        // The default 36-bit HVF space holds 63 GiB.
        assert_eq!(max_ram_for_ipa_bits(36), (64 << 30) - (1 << 30));
        assert_eq!(required_ipa_bits(max_ram_for_ipa_bits(36)), 36);
        assert_eq!(required_ipa_bits(max_ram_for_ipa_bits(36) + 1), 37);
    }

    #[test]
    fn fdt_sits_in_the_last_2mib_block() {
        let fdt = fdt_address(512 << 20);
        assert_eq!(fdt % FDT_MAX_SIZE, 0);
        assert_eq!(fdt + FDT_MAX_SIZE, RAM_BASE + (512 << 20));
    }
}
