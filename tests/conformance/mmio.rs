//! MMIO loads and stores of every size, and the sign-extending loads, against hvrun's own devices
//! with known register values: the 16550 UART and a virtio-blk disk whose capacity is chosen so
//! its config space holds bytes with the top bit set.
//!
//! The table holds what the architecture says each load leaves in x0 (Arm ARM C6.2 LDRSB etc.:
//! SignExtend to the register width; a W write zeroes bits [63:32]). The Hypervisor.framework
//! backend completes loads with `MmioAccess::load_result` (src/arch/aarch64/esr.rs), and
//! `esr_tests.rs::kvm_conformance_loads` asserts these very values for the same syndromes.
//!
//! KVM completes the loads in the kernel, and there it loses the sign extension:
//! `kvm_handle_mmio_return` (arch/arm64/kvm/mmio.c) sign-extends, then
//! `vcpu_data_host_to_guest` masks the value back to the access size for a little-endian guest,
//! so LDRSB/LDRSH/LDRSW of a negative value arrive zero-extended (Linux 6.1 here; the ESR_EL2
//! that KVM saw did have SSE set: a kvm_guest_fault trace shows 0x93200006 for `ldrsb w0`).
//! The test accepts exactly one of the two behaviours for the whole run — the architecture's, or
//! KVM's masking — and says which it saw.

use super::*;

/// The virtio-blk disk's capacity in 512-byte sectors: config space bytes 0x100..0x108 read
/// `83 82 81 80 00 00 00 00`, every byte of the low word different and with bit 7 set, so a load
/// of the wrong width or a missing or extra sign extension shows. The image is a sparse file of
/// 0x8081_8283 * 512 bytes (about 1 TiB); hvrun never touches its data.
const CAPACITY_SECTORS: u64 = 0x8081_8283;

/// Where the program keeps the disk's virtio-mmio slot: slot 0, since the disk is the first
/// virtio device (boot::layout).
const X_DISK: u32 = 20;
const UART_BASE: u64 = 0x0900_0000;
const DISK_SLOT: u64 = 0x0A00_0000;

/// 16550 registers (byte-wide; vm-superio's values after reset, with no interrupt enabled).
const UART_IIR: u32 = 2; // 0xc1: no interrupt pending (bit 0), FIFOs enabled (bits 7:6)
const UART_LSR: u32 = 5; // 0x60: transmitter empty and idle
const UART_SCR: u32 = 7; // scratch: the guest's to write
/// virtio-mmio registers (VIRTIO 1.2 §4.2.2; only aligned 32-bit accesses).
const MAGIC_VALUE: u32 = 0x000; // "virt"
const STATUS: u32 = 0x070;
const SHM_LEN_LOW: u32 = 0x0b0; // all ones: no shared memory region
/// virtio-blk config space (§5.2.4) at 0x100: capacity (u64), size_max (u32, 1 MiB),
/// seg_max (u32, 126) at 0x10c, ..., blk_size (u32, 512) at 0x114.
const CAPACITY: u32 = 0x100;
const SIZE_MAX: u32 = 0x108;
const SEG_MAX: u32 = 0x10c;
const BLK_SIZE: u32 = 0x114;

/// Every load writes x0, which is set to all ones first: a W destination must come back with
/// bits [63:32] clear (Arm ARM C1.2.5), which only shows if they were set.
/// `(opcode, base register, offset, x0 afterwards, what it is)`.
const LOADS: [(u32, u32, u32, u64, &str); 22] = [
    (LDRB, X_UART, UART_IIR, 0xc1, "ldrb w0, IIR"),
    (LDRSB_W, X_UART, UART_IIR, 0xffff_ffc1, "ldrsb w0, IIR"),
    (LDRSB_X, X_UART, UART_IIR, 0xffff_ffff_ffff_ffc1, "ldrsb x0, IIR"),
    (LDRSB_X, X_UART, UART_LSR, 0x60, "ldrsb x0, LSR (bit 7 clear)"),
    (LDR_W, X_DISK, MAGIC_VALUE, 0x7472_6976, "ldr w0, MagicValue"),
    (LDRSW, X_DISK, MAGIC_VALUE, 0x7472_6976, "ldrsw x0, MagicValue (bit 31 clear)"),
    (LDR_W, X_DISK, SHM_LEN_LOW, 0xffff_ffff, "ldr w0, SHMLenLow"),
    (LDRSW, X_DISK, SHM_LEN_LOW, u64::MAX, "ldrsw x0, SHMLenLow"),
    (LDRB, X_DISK, CAPACITY, 0x83, "ldrb w0, capacity byte 0"),
    (LDRB, X_DISK, CAPACITY + 1, 0x82, "ldrb w0, capacity byte 1"),
    (LDRSB_W, X_DISK, CAPACITY, 0xffff_ff83, "ldrsb w0, capacity byte 0"),
    (LDRSB_X, X_DISK, CAPACITY, 0xffff_ffff_ffff_ff83, "ldrsb x0, capacity byte 0"),
    (LDRH, X_DISK, CAPACITY, 0x8283, "ldrh w0, capacity[15:0]"),
    (LDRH, X_DISK, CAPACITY + 2, 0x8081, "ldrh w0, capacity[31:16]"),
    (LDRSH_W, X_DISK, CAPACITY, 0xffff_8283, "ldrsh w0, capacity[15:0]"),
    (LDRSH_X, X_DISK, CAPACITY, 0xffff_ffff_ffff_8283, "ldrsh x0, capacity[15:0]"),
    (LDR_W, X_DISK, CAPACITY, 0x8081_8283, "ldr w0, capacity[31:0]"),
    (LDRSW, X_DISK, CAPACITY, 0xffff_ffff_8081_8283, "ldrsw x0, capacity[31:0]"),
    (LDR_X, X_DISK, CAPACITY, 0x8081_8283, "ldr x0, capacity"),
    (LDR_X, X_DISK, SIZE_MAX, 0x0000_007e_0010_0000, "ldr x0, size_max + seg_max"),
    (LDRSB_W, X_DISK, SEG_MAX, 0x7e, "ldrsb w0, seg_max (bit 7 clear)"),
    (LDRSH_X, X_DISK, BLK_SIZE, 0x200, "ldrsh x0, blk_size (bit 15 clear)"),
];

/// The guest: each load of [`LOADS`], printed; then stores of every size, made visible.
fn program() -> Vec<u32> {
    let mut p = Program::new();
    p.entry_here();
    p.mov_imm(X_UART, UART_BASE);
    p.mov_imm(X_DISK, DISK_SLOT);
    for (op, base, offset, _, _) in LOADS {
        p.push([movn_x_0(0), ldst(op, 0, base, offset)]);
        p.print_x0();
    }

    // STRB to the scratch register, read back: the low byte only.
    p.mov_imm(1, 0x21a5);
    p.push([ldst(STRB, 1, X_UART, UART_SCR), movn_x_0(0), ldst(LDRB, 0, X_UART, UART_SCR)]);
    p.print_x0();
    // STR W to Status (ACKNOWLEDGE, then ACKNOWLEDGE | DRIVER), read back; x1[63:32] is not
    // part of a W store.
    for status in [1u64, 3] {
        p.mov_imm(1, 0xffff_0000_0000 | status);
        p.push([ldst(STR_W, 1, X_DISK, STATUS), movn_x_0(0), ldst(LDR_W, 0, X_DISK, STATUS)]);
        p.print_x0();
    }
    // STRH, STR W and STR X to the UART's byte-wide THR: the device takes the low byte, so
    // each prints one letter ('h', 'w', 'x') and none of the '!' above it.
    for (op, value) in [(STRH, 0x2168u64), (STR_W, 0x2121_2177), (STR_X, 0x2121_2121_2121_2178)] {
        p.mov_imm(1, value);
        p.push([ldst(op, 1, X_UART, 0)]);
    }
    p.mov_imm(1, u64::from(b'\n'));
    p.push([ldst(STRB, 1, X_UART, 0)]);
    p.system_off()
}

/// What KVM leaves in x0 instead of `value`: the value cut back to the access size (see the
/// module comment). Only sign-extending loads differ.
fn kvm_masked(op: u32, value: u64) -> u64 {
    let bytes = 1u32 << (op >> 30);
    if bytes == 8 {
        value
    } else {
        value & ((1u64 << (8 * bytes)) - 1)
    }
}

#[test]
fn loads_and_stores_of_every_size_complete_exactly() {
    require_kvm();
    let scratch = Scratch::new("mmio-sizes");
    let disk = scratch.path("capacity.img");
    std::fs::File::create(&disk).and_then(|f| f.set_len(CAPACITY_SECTORS * 512)).unwrap_or_else(
        |e| {
            panic!(
                "cannot make a sparse 1 TiB image {} ({e}): the temp dir's file system must \
                 allow sparse files that large",
                disk.display()
            )
        },
    );
    let r = run_guest_in(&scratch, "mmio-sizes", &program(), &["--disk", disk.to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{}", r.describe());

    // The second line is `ldrsb w0, IIR`: 0xffffffc1 by the architecture, 0xc1 from KVM.
    let masked = r.stdout.lines().nth(1) == Some(hex(0xc1).as_str());
    if masked {
        eprintln!("note: this KVM drops MMIO sign extension; asserting its values (see mmio.rs)");
    }
    let mut expected: Vec<(String, &str)> = LOADS
        .iter()
        .map(|&(op, _, _, value, what)| {
            (hex(if masked { kvm_masked(op, value) } else { value }), what)
        })
        .collect();
    expected.push((hex(0xa5), "strb w1 (0x21a5) to SCR, ldrb w0 back"));
    expected.push((hex(1), "str w1 (0xffff_0000_0001) to Status, ldr w0 back"));
    expected.push((hex(3), "str w1 (0xffff_0000_0003) to Status, ldr w0 back"));
    expected.push(("hwx".into(), "strh, str w, str x to THR: the low byte of each"));
    assert_lines(&r, &expected);
}
