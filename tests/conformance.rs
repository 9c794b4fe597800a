//! Backend conformance: tiny hand-encoded arm64 guests, a few instructions each, run by hvrun on
//! the host's backend, asserting exactly what the VMM must do with each kind of exit. The same
//! behaviour is what the Hypervisor.framework backend's unit tests pin down.
//!
//! Each guest is wrapped in a minimal arm64 Image header (booting.rst §4) so hvrun loads it like
//! any kernel; the header's first word branches over the header to the code at offset 0x40.
//! Guests that report values build a [`Program`]: it prints x0 in hex on the UART, the only
//! channel the test sees (hvrun's stdout). Every instruction word was checked against
//! `aarch64-linux-gnu-as` + `objdump -d`; `encodings_match_the_arm_arm` keeps one of each.

#![cfg(all(target_os = "linux", target_arch = "aarch64"))]

mod common;
#[path = "conformance/mmio.rs"]
mod mmio;
#[path = "conformance/psci.rs"]
mod psci;

use std::path::PathBuf;

use common::{hvrun, require_kvm, run, Run, Scratch};

/// `b #0x40`: B (A64 C6.2.26), imm26 = 0x40 / 4.
const B_OVER_HEADER: u32 = 0x1400_0010;
/// `b .`: branch to self, a parking loop if the VMM fails to stop the guest.
const B_SELF: u32 = 0x1400_0000;
/// `hvc #0`: HVC (C6.2.124).
const HVC_0: u32 = 0xd400_0002;

/// `movz xd, #imm16, lsl #(16 * hw)`: MOVZ 64-bit (C6.2.231).
const fn movz_x(rd: u32, imm16: u32, hw: u32) -> u32 {
    0xd280_0000 | (hw << 21) | (imm16 << 5) | rd
}

/// `movk xd, #imm16, lsl #(16 * hw)`: MOVK 64-bit (C6.2.230).
const fn movk_x(rd: u32, imm16: u32, hw: u32) -> u32 {
    0xf280_0000 | (hw << 21) | (imm16 << 5) | rd
}

/// `movn xd, #0`: MOVN 64-bit (C6.2.232), i.e. `mov xd, #-1`: all ones.
const fn movn_x_0(rd: u32) -> u32 {
    0x9280_0000 | rd
}

/// `mov xd, xm`: ORR (shifted register) 64-bit with XZR (C6.2.206).
const fn mov_x(rd: u32, rm: u32) -> u32 {
    0xaa00_03e0 | (rm << 16) | rd
}

/// Load/store register (unsigned immediate) opcodes (C4.1.94): size (bits [31:30], log2 of the
/// access size) and opc (bits [23:22]: store, load, sign-extending load to X, to W).
const STRB: u32 = 0x3900_0000;
const LDRB: u32 = 0x3940_0000;
const LDRSB_X: u32 = 0x3980_0000;
const LDRSB_W: u32 = 0x39c0_0000;
const STRH: u32 = 0x7900_0000;
const LDRH: u32 = 0x7940_0000;
const LDRSH_X: u32 = 0x7980_0000;
const LDRSH_W: u32 = 0x79c0_0000;
const STR_W: u32 = 0xb900_0000;
const LDR_W: u32 = 0xb940_0000;
const LDRSW: u32 = 0xb980_0000;
const STR_X: u32 = 0xf900_0000;
const LDR_X: u32 = 0xf940_0000;

/// `<op> rt, [xn, #offset]` for one of the opcodes above: imm12 is the offset scaled by the
/// access size, which must divide it (device memory also faults on unaligned accesses).
const fn ldst(op: u32, rt: u32, rn: u32, offset: u32) -> u32 {
    let scale = op >> 30;
    assert!(offset % (1 << scale) == 0 && (offset >> scale) < 4096);
    op | ((offset >> scale) << 10) | (rn << 5) | rt
}

/// `strb wt, [xn]`.
const fn strb(rt: u32, rn: u32) -> u32 {
    ldst(STRB, rt, rn, 0)
}

/// `bl` from word index `from` to word index `to` of the same program: BL (C6.2.34).
const fn bl(from: usize, to: usize) -> u32 {
    0x9400_0000 | ((to as i32 - from as i32) as u32 & 0x03ff_ffff)
}

/// `adr xd, <to>` at word index `from`: ADR (C6.2.10), a PC-relative byte offset.
const fn adr(rd: u32, from: usize, to: usize) -> u32 {
    let offset = (to as i32 - from as i32) * 4;
    0x1000_0000 | ((offset as u32 & 3) << 29) | (((offset >> 2) as u32 & 0x7_ffff) << 5) | rd
}

/// `cbz wt, <to>` at word index `from`: CBZ 32-bit (C6.2.47).
const fn cbz_w(rt: u32, from: usize, to: usize) -> u32 {
    0x3400_0000 | (((to as i32 - from as i32) as u32 & 0x7_ffff) << 5) | rt
}

/// `mrs x0, mpidr_el1`: MRS (C6.2.227) of MPIDR_EL1 (op0=3, op1=0, CRn=0, CRm=0, op2=5).
const MRS_X0_MPIDR: u32 = 0xd538_00a0;

/// `dsb sy`: DSB (C6.2.89), full system.
const DSB_SY: u32 = 0xd503_3f9f;

/// Loads `value` into `xd`: MOVZ for bits [15:0], then a MOVK for each other non-zero halfword.
fn mov_imm(rd: u32, value: u64) -> Vec<u32> {
    let half = |hw: u32| ((value >> (16 * hw)) & 0xffff) as u32;
    let mut code = vec![movz_x(rd, half(0), 0)];
    code.extend((1..4).filter(|&hw| half(hw) != 0).map(|hw| movk_x(rd, half(hw), hw)));
    code
}

/// Where the programs keep the UART's base address (the print routine writes through it).
const X_UART: u32 = 19;

/// Prints x0 as 16 lowercase hex digits and a newline on the UART whose base is in x19.
/// Clobbers x1, x2 and x3; called with BL (so x30 too).
const PRINT_X0: [u32; 13] = [
    0xd280_0782, // movz x2, #60             x2: shift of the next nibble, 60 down to 0
    0x9ac2_2401, // 1: lsr x1, x0, x2
    0x9240_0c21, // and  x1, x1, #0xf
    0xf100_283f, // cmp  x1, #10
    0x9100_c023, // add  x3, x1, #'0'
    0x9101_5c21, // add  x1, x1, #('a' - 10)
    0x9a81_3061, // csel x1, x3, x1, lo      digit < 10 ? '0' + digit : 'a' + digit - 10
    0x3900_0261, // strb w1, [x19]           to the UART's THR
    0xf100_1042, // subs x2, x2, #4
    0x54ff_ff0a, // b.ge 1b
    0xd280_0141, // movz x1, #'\n'
    0x3900_0261, // strb w1, [x19]
    0xd65f_03c0, // ret
];

/// A guest that can print: word 0 branches to the entry point ([`Program::entry_here`]), the
/// print routine follows, then whatever is pushed.
struct Program(Vec<u32>);

impl Program {
    /// Where the print routine starts.
    const PRINT: usize = 1;

    fn new() -> Self {
        let mut words = vec![B_SELF];
        words.extend(PRINT_X0);
        Program(words)
    }

    /// Index of the next word.
    fn here(&self) -> usize {
        self.0.len()
    }

    /// The guest starts at the next word.
    fn entry_here(&mut self) {
        self.0[0] = 0x1400_0000 | self.here() as u32; // b <here>
    }

    fn push(&mut self, words: impl IntoIterator<Item = u32>) {
        self.0.extend(words);
    }

    /// `bl print`: prints x0.
    fn print_x0(&mut self) {
        self.0.push(bl(self.here(), Self::PRINT));
    }

    /// `mov xd, <value>`.
    fn mov_imm(&mut self, rd: u32, value: u64) {
        self.push(mov_imm(rd, value));
    }

    /// A PSCI/SMCCC call over HVC: x0 = `function`, x1.. = `args`; the result is in x0.
    fn hvc(&mut self, function: u32, args: &[u64]) {
        self.mov_imm(0, u64::from(function));
        for (n, &arg) in args.iter().enumerate() {
            self.mov_imm(n as u32 + 1, arg);
        }
        self.push([HVC_0]);
    }

    /// Ends the guest with PSCI SYSTEM_OFF (hvrun exits with 0).
    fn system_off(mut self) -> Vec<u32> {
        self.hvc(PSCI_SYSTEM_OFF, &[]);
        self.0
    }
}

/// Writes a guest made of `code` (placed at 0x40) as an arm64 Image file in `scratch`.
fn write_guest(scratch: &Scratch, name: &str, code: &[u32]) -> PathBuf {
    let mut image = vec![0u8; 0x40];
    image[0..4].copy_from_slice(&B_OVER_HEADER.to_le_bytes());
    let image_size = 0x1000u64;
    image[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
    image[0x38..0x3c].copy_from_slice(b"ARM\x64");
    for word in code.iter().chain([B_SELF].iter()) {
        image.extend_from_slice(&word.to_le_bytes());
    }
    assert!(image.len() as u64 <= image_size, "the guest outgrew its Image header's size");
    let path = scratch.path(name);
    std::fs::write(&path, image).unwrap();
    path
}

fn run_guest(name: &str, code: &[u32], extra: &[&str]) -> Run {
    require_kvm();
    let scratch = Scratch::new(name);
    run_guest_in(&scratch, name, code, extra)
}

/// Like [`run_guest`], in a scratch directory that already holds files the guest needs.
fn run_guest_in(scratch: &Scratch, name: &str, code: &[u32], extra: &[&str]) -> Run {
    let mut cmd = hvrun();
    cmd.arg("--kernel").arg(write_guest(scratch, name, code)).args(["--mem", "64M"]).args(extra);
    run(cmd)
}

/// Checks the guest printed exactly `expected`: one `(line, what it is)` per line, so a failure
/// names the instruction or call whose result differs.
fn assert_lines(r: &Run, expected: &[(String, &str)]) {
    let got: Vec<&str> = r.stdout.lines().collect();
    for (n, (want, what)) in expected.iter().enumerate() {
        assert_eq!(got.get(n).copied(), Some(want.as_str()), "line {n}: {what}\n{}", r.describe());
    }
    assert_eq!(got.len(), expected.len(), "more output than expected\n{}", r.describe());
}

/// One printed 64-bit value, as [`PRINT_X0`] writes it.
fn hex(value: u64) -> String {
    format!("{value:016x}")
}

/// PSCI function IDs (Arm DEN0022, §5.1).
const PSCI_SYSTEM_OFF: u32 = 0x8400_0008;
const PSCI_SYSTEM_RESET: u32 = 0x8400_0009;
/// Where hvrun's devices are (boot::layout).
const UART_THR: u32 = 0x0900_0000;
const PVPANIC: u32 = 0x0901_0000;

#[test]
fn encodings_match_the_arm_arm() {
    // Each word as `aarch64-linux-gnu-as` + `objdump -d` print it.
    assert_eq!(movz_x(0, 0x0901, 1), 0xd2a1_2020); // movz x0, #0x901, lsl #16
    assert_eq!(movk_x(0, 0x8400, 1), 0xf2b0_8000); // movk x0, #0x8400, lsl #16
    assert_eq!(movk_x(1, 0x2121, 3), 0xf2e4_2421); // movk x1, #0x2121, lsl #48
    assert_eq!(movz_x(1, 1, 0), 0xd280_0021); // movz x1, #1
    assert_eq!(movn_x_0(0), 0x9280_0000); // mov x0, #-1
    assert_eq!(mov_x(0, 21), 0xaa15_03e0); // mov x0, x21
    assert_eq!(strb(1, 0), 0x3900_0001); // strb w1, [x0]
    assert_eq!(ldst(STRB, 1, 19, 7), 0x3900_1e61); // strb w1, [x19, #7]
    assert_eq!(ldst(LDRB, 0, 19, 2), 0x3940_0a60); // ldrb w0, [x19, #2]
    assert_eq!(ldst(LDRSB_W, 0, 19, 2), 0x39c0_0a60); // ldrsb w0, [x19, #2]
    assert_eq!(ldst(LDRSB_X, 0, 19, 2), 0x3980_0a60); // ldrsb x0, [x19, #2]
    assert_eq!(ldst(STRH, 1, 19, 0), 0x7900_0261); // strh w1, [x19]
    assert_eq!(ldst(LDRH, 0, 20, 0x102), 0x7942_0680); // ldrh w0, [x20, #258]
    assert_eq!(ldst(LDRSH_W, 0, 20, 0x100), 0x79c2_0280); // ldrsh w0, [x20, #256]
    assert_eq!(ldst(LDRSH_X, 0, 20, 0x114), 0x7982_2a80); // ldrsh x0, [x20, #276]
    assert_eq!(ldst(STR_W, 1, 20, 0x70), 0xb900_7281); // str w1, [x20, #112]
    assert_eq!(ldst(LDR_W, 0, 20, 0xb0), 0xb940_b280); // ldr w0, [x20, #176]
    assert_eq!(ldst(LDR_W, 1, 20, 0), 0xb940_0281); // ldr w1, [x20]
    assert_eq!(ldst(LDRSW, 0, 20, 0x100), 0xb981_0280); // ldrsw x0, [x20, #256]
    assert_eq!(ldst(STR_X, 1, 19, 0), 0xf900_0261); // str x1, [x19]
    assert_eq!(ldst(LDR_X, 0, 20, 0x108), 0xf940_8680); // ldr x0, [x20, #264]
    assert_eq!(bl(14, 1), 0x97ff_fff3); // bl .-0x34
    assert_eq!(adr(2, 5, 5), 0x1000_0002); // adr x2, .
    assert_eq!(adr(2, 40, 20), 0x10ff_fd82); // adr x2, .-0x50
    assert_eq!(cbz_w(1, 16, 15), 0x34ff_ffe1); // cbz w1, .-4
    assert_eq!(MRS_X0_MPIDR, 0xd538_00a0); // mrs x0, mpidr_el1
    assert_eq!(DSB_SY, 0xd503_3f9f); // dsb sy
    assert_eq!(mov_imm(2, 60), [0xd280_0782]); // movz x2, #60
}

#[test]
fn psci_system_off_exits_0() {
    let code = [mov_imm(0, PSCI_SYSTEM_OFF.into()).as_slice(), &[HVC_0]].concat();
    let r = run_guest("system-off", &code, &[]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
}

#[test]
fn psci_system_reset_with_no_reboot_exits_3() {
    let code = [mov_imm(0, PSCI_SYSTEM_RESET.into()).as_slice(), &[HVC_0]].concat();
    let r = run_guest("system-reset", &code, &["--no-reboot"]);
    assert_eq!(r.code, Some(3), "{}", r.describe());
}

#[test]
fn uart_byte_stores_reach_stdout() {
    // x0 = THR; then for each byte: movz x1, #byte; strb w1, [x0]; finally SYSTEM_OFF.
    let mut code = mov_imm(0, UART_THR.into());
    for &b in b"hvrun\n" {
        code.extend([movz_x(1, u32::from(b), 0), strb(1, 0)]);
    }
    code.extend(mov_imm(0, PSCI_SYSTEM_OFF.into()));
    code.push(HVC_0);
    let r = run_guest("uart", &code, &[]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.stdout, "hvrun\n", "{}", r.describe());
}

#[test]
fn pvpanic_write_exits_4() {
    // x0 = pvpanic; x1 = PVPANIC_PANICKED; strb w1, [x0]; then park.
    let code = [mov_imm(0, PVPANIC.into()).as_slice(), &[movz_x(1, 1, 0), strb(1, 0)]].concat();
    let r = run_guest("pvpanic", &code, &[]);
    assert_eq!(r.code, Some(4), "{}", r.describe());
    assert!(r.stderr.contains("the guest kernel panicked"), "{}", r.describe());
}
