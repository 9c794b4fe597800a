//! Backend conformance: tiny hand-encoded arm64 guests, a few instructions each, run by hvrun on
//! the host's backend, asserting exactly what the VMM must do with each kind of exit. The same
//! behaviour is what the Hypervisor.framework backend's unit tests pin down.
//!
//! Each guest is wrapped in a minimal arm64 Image header (booting.rst §4) so hvrun loads it like
//! any kernel; the header's first word branches over the header to the code at offset 0x40.

#![cfg(all(target_os = "linux", target_arch = "aarch64"))]

mod common;

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

/// `strb wt, [xn]`: STRB (immediate, unsigned offset 0) (C6.2.340).
const fn strb(rt: u32, rn: u32) -> u32 {
    0x3900_0000 | (rn << 5) | rt
}

/// Loads a 32-bit constant into `xd` (two instructions).
fn mov_x_u32(rd: u32, value: u32) -> [u32; 2] {
    [movz_x(rd, value & 0xffff, 0), movk_x(rd, value >> 16, 1)]
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
    let path = scratch.path(name);
    std::fs::write(&path, image).unwrap();
    path
}

fn run_guest(name: &str, code: &[u32], extra: &[&str]) -> Run {
    require_kvm();
    let scratch = Scratch::new(name);
    let mut cmd = hvrun();
    cmd.arg("--kernel").arg(write_guest(&scratch, name, code)).args(["--mem", "64M"]).args(extra);
    run(cmd)
}

/// PSCI function IDs (Arm DEN0022, §5.1).
const PSCI_SYSTEM_OFF: u32 = 0x8400_0008;
const PSCI_SYSTEM_RESET: u32 = 0x8400_0009;
/// Where hvrun's devices are (boot::layout).
const UART_THR: u32 = 0x0900_0000;
const PVPANIC: u32 = 0x0901_0000;

#[test]
fn encodings_match_the_arm_arm() {
    // Cross-checked with `aarch64-linux-gnu-as` + objdump.
    assert_eq!(movz_x(0, 0x0901, 1), 0xd2a1_2020); // movz x0, #0x901, lsl #16
    assert_eq!(movk_x(0, 0x8400, 1), 0xf2b0_8000); // movk x0, #0x8400, lsl #16
    assert_eq!(movz_x(1, 1, 0), 0xd280_0021); // movz x1, #1
    assert_eq!(strb(1, 0), 0x3900_0001); // strb w1, [x0]
}

#[test]
fn psci_system_off_exits_0() {
    let code = [mov_x_u32(0, PSCI_SYSTEM_OFF).as_slice(), &[HVC_0]].concat();
    let r = run_guest("system-off", &code, &[]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
}

#[test]
fn psci_system_reset_with_no_reboot_exits_3() {
    let code = [mov_x_u32(0, PSCI_SYSTEM_RESET).as_slice(), &[HVC_0]].concat();
    let r = run_guest("system-reset", &code, &["--no-reboot"]);
    assert_eq!(r.code, Some(3), "{}", r.describe());
}

#[test]
fn uart_byte_stores_reach_stdout() {
    // x0 = THR; then for each byte: movz x1, #byte; strb w1, [x0]; finally SYSTEM_OFF.
    let mut code = mov_x_u32(0, UART_THR).to_vec();
    for &b in b"hvrun\n" {
        code.extend([movz_x(1, u32::from(b), 0), strb(1, 0)]);
    }
    code.extend(mov_x_u32(0, PSCI_SYSTEM_OFF));
    code.push(HVC_0);
    let r = run_guest("uart", &code, &[]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.stdout, "hvrun\n", "{}", r.describe());
}

#[test]
fn pvpanic_write_exits_4() {
    // x0 = pvpanic; x1 = PVPANIC_PANICKED; strb w1, [x0]; then park.
    let code = [mov_x_u32(0, PVPANIC).as_slice(), &[movz_x(1, 1, 0), strb(1, 0)]].concat();
    let r = run_guest("pvpanic", &code, &[]);
    assert_eq!(r.code, Some(4), "{}", r.describe());
    assert!(r.stderr.contains("the guest kernel panicked"), "{}", r.describe());
}
