//! The benchmark micro-guest: a few dozen hand-encoded arm64 instructions that time a batch of
//! exits with the virtual counter, the method of kvm-unit-tests' `arm/micro-bench`.
//!
//! Every vCPU enters at [`ENTRY`] with x0 pointing at its [`Params`] block (vCPU 0 through its
//! registers, the others through PSCI CPU_ON's context id). The guest stores CNTFRQ_EL0 and then
//! one CNTVCT_EL0 tick delta per batch into its results buffer, writes the bench device's DONE
//! register (an exit outside the timed region) and parks in WFI. hvrun reads the results out of
//! guest RAM after the VM stops. The MMU is off, so all addresses are physical.

/// The operation timed, one instance per iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `mov x0, x23; hvc #0`: an SMCCC call with the function ID from the params.
    Hvc,
    /// `ldr w9, [x22]`: a 32-bit load from the target address.
    Load,
    /// `str w9, [x22]`: a 32-bit store to the target address.
    Store,
    /// `mrs x9, osdlr_el1`: a system-register read that Hypervisor.framework traps to the VMM.
    SysRegRead,
    /// `nop`: no exit at all; the loop's own cost.
    Nop,
}

/// Where each vCPU starts: the first instruction of the program.
pub const ENTRY: u64 = 0;

/// Size of one params block in guest memory.
pub const PARAMS_SIZE: u64 = 9 * 8;

/// What one vCPU's run of the program is told, stored little-endian in guest RAM in this order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// Where to store CNTFRQ_EL0 and then one tick delta per batch.
    pub results: u64,
    /// Batches to run, warm-up included.
    pub batches: u64,
    /// Iterations per batch (at least 1).
    pub iterations: u64,
    /// The address loaded from or stored to.
    pub target: u64,
    /// The SMCCC function ID of the HVC case.
    pub hvc_function: u64,
    /// The bench device's DONE register.
    pub done: u64,
    /// How many secondary vCPUs this vCPU starts with PSCI CPU_ON before measuring.
    pub secondaries: u64,
    /// A table of `(target MPIDR, context id = that vCPU's params address)` pairs.
    pub cpu_on_table: u64,
    /// The program's entry address, for CPU_ON.
    pub entry: u64,
}

impl Params {
    /// The block as guest memory holds it.
    pub fn to_bytes(self) -> [u8; PARAMS_SIZE as usize] {
        let words = [
            self.results,
            self.batches,
            self.iterations,
            self.target,
            self.hvc_function,
            self.done,
            self.secondaries,
            self.cpu_on_table,
            self.entry,
        ];
        let mut bytes = [0u8; PARAMS_SIZE as usize];
        for (chunk, w) in bytes.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        bytes
    }
}

// Instruction encodings, from the Arm ARM (DDI 0487) section C6.2 entry named in each comment.
// Registers are 0..=31; 31 is XZR/WZR where the instruction reads it as a register.

/// `mov xd, xm` = ORR (shifted register) `xd, xzr, xm` (C6.2.205).
pub const fn mov_x(rd: u32, rm: u32) -> u32 {
    0xaa00_03e0 | (rm << 16) | rd
}

/// `movz xd, #imm16, lsl #(16 * hw)` (C6.2.231).
pub const fn movz_x(rd: u32, imm16: u32, hw: u32) -> u32 {
    0xd280_0000 | (hw << 21) | (imm16 << 5) | rd
}

/// `movk xd, #imm16, lsl #(16 * hw)` (C6.2.230).
pub const fn movk_x(rd: u32, imm16: u32, hw: u32) -> u32 {
    0xf280_0000 | (hw << 21) | (imm16 << 5) | rd
}

/// `ldp xt1, xt2, [xn, #offset]`, signed offset, a multiple of 8 in -512..=504 (C6.2.164).
pub const fn ldp_x(rt1: u32, rt2: u32, rn: u32, offset: i32) -> u32 {
    0xa940_0000 | ((((offset / 8) as u32) & 0x7f) << 15) | (rt2 << 10) | (rn << 5) | rt1
}

/// `ldp xt1, xt2, [xn], #offset`, post-index (C6.2.164).
pub const fn ldp_x_post(rt1: u32, rt2: u32, rn: u32, offset: i32) -> u32 {
    0xa8c0_0000 | ((((offset / 8) as u32) & 0x7f) << 15) | (rt2 << 10) | (rn << 5) | rt1
}

/// `ldr xt, [xn, #offset]`, unsigned offset, a multiple of 8 (C6.2.166).
pub const fn ldr_x(rt: u32, rn: u32, offset: u32) -> u32 {
    0xf940_0000 | ((offset / 8) << 10) | (rn << 5) | rt
}

/// `ldr wt, [xn]` (C6.2.166, 32-bit, offset 0).
pub const fn ldr_w(rt: u32, rn: u32) -> u32 {
    0xb940_0000 | (rn << 5) | rt
}

/// `str wt, [xn]` (C6.2.322, 32-bit, offset 0).
pub const fn str_w(rt: u32, rn: u32) -> u32 {
    0xb900_0000 | (rn << 5) | rt
}

/// `str xt, [xn], #offset`, post-index, -256..=255 (C6.2.322).
pub const fn str_x_post(rt: u32, rn: u32, offset: i32) -> u32 {
    0xf800_0400 | (((offset as u32) & 0x1ff) << 12) | (rn << 5) | rt
}

/// `sub xd, xn, #imm12` (C6.2.358).
pub const fn sub_x_imm(rd: u32, rn: u32, imm12: u32) -> u32 {
    0xd100_0000 | (imm12 << 10) | (rn << 5) | rd
}

/// `subs xd, xn, #imm12` (C6.2.364).
pub const fn subs_x_imm(rd: u32, rn: u32, imm12: u32) -> u32 {
    0xf100_0000 | (imm12 << 10) | (rn << 5) | rd
}

/// `sub xd, xn, xm` (shifted register, no shift) (C6.2.360).
pub const fn sub_x(rd: u32, rn: u32, rm: u32) -> u32 {
    0xcb00_0000 | (rm << 16) | (rn << 5) | rd
}

/// `b <label>`, `offset` in instructions from this one (C6.2.26).
pub const fn b(offset: i32) -> u32 {
    0x1400_0000 | ((offset as u32) & 0x03ff_ffff)
}

/// `b.ne <label>` (B.cond with cond = NE = 0b0001) (C6.2.27).
pub const fn b_ne(offset: i32) -> u32 {
    0x5400_0001 | (((offset as u32) & 0x7_ffff) << 5)
}

/// `cbz xt, <label>` (C6.2.48).
pub const fn cbz_x(rt: u32, offset: i32) -> u32 {
    0xb400_0000 | (((offset as u32) & 0x7_ffff) << 5) | rt
}

/// `mrs xt, S<op0>_<op1>_C<crn>_C<crm>_<op2>` (C6.2.229).
pub const fn mrs(rt: u32, op0: u32, op1: u32, crn: u32, crm: u32, op2: u32) -> u32 {
    0xd520_0000
        | ((op0 - 2) << 19)
        | (1 << 20)
        | (op1 << 16)
        | (crn << 12)
        | (crm << 8)
        | (op2 << 5)
        | rt
}

/// `hvc #0` (C6.2.124).
pub const HVC_0: u32 = 0xd400_0002;
/// `isb` (C6.2.128): the counter read may not be taken early or late across it.
pub const ISB: u32 = 0xd503_3fdf;
/// `wfi` (C6.2.390).
pub const WFI: u32 = 0xd503_207f;
/// `nop` (C6.2.203).
pub const NOP: u32 = 0xd503_201f;
/// `mrs x9, cntfrq_el0`: the counter frequency (op0=3 op1=3 CRn=14 CRm=0 op2=0).
pub const MRS_X9_CNTFRQ: u32 = mrs(9, 3, 3, 14, 0, 0);
/// `mrs x11, cntvct_el0` (op2=2).
pub const MRS_X11_CNTVCT: u32 = mrs(11, 3, 3, 14, 0, 2);
/// `mrs x12, cntvct_el0`.
pub const MRS_X12_CNTVCT: u32 = mrs(12, 3, 3, 14, 0, 2);
/// `mrs x9, osdlr_el1` (op0=2 op1=0 CRn=1 CRm=3 op2=4): the OS Double Lock register.
pub const MRS_X9_OSDLR: u32 = mrs(9, 2, 0, 1, 3, 4);

/// PSCI CPU_ON, SMC64 calling convention (Arm DEN0022, §5.1.4).
pub const PSCI_CPU_ON_64: u32 = 0xc400_0003;

/// The instructions of one [`Op`].
fn op_words(op: Op) -> &'static [u32] {
    const HVC: [u32; 2] = [mov_x(0, 23), HVC_0]; // mov x0, x23; hvc #0
    const LOAD: [u32; 1] = [ldr_w(9, 22)]; // ldr w9, [x22]
    const STORE: [u32; 1] = [str_w(9, 22)]; // str w9, [x22]
    const SYSREG: [u32; 1] = [MRS_X9_OSDLR]; // mrs x9, osdlr_el1
    const NOPS: [u32; 1] = [NOP]; // nop
    match op {
        Op::Hvc => &HVC,
        Op::Load => &LOAD,
        Op::Store => &STORE,
        Op::SysRegRead => &SYSREG,
        Op::Nop => &NOPS,
    }
}

/// The whole program for `op`, as instruction words (placed at [`ENTRY`] in guest RAM).
pub fn program(op: Op) -> Vec<u32> {
    let ops = op_words(op);
    let n = ops.len() as i32;
    let mut code = vec![
        mov_x(28, 0),          // 0  mov  x28, x0            ; params (x0 is the HVC argument)
        ldp_x(19, 20, 28, 0),  // 1  ldp  x19, x20, [x28]    ; results, batches
        ldp_x(21, 22, 28, 16), // 2  ldp  x21, x22, [x28, #16] ; iterations, target
        ldp_x(23, 24, 28, 32), // 3  ldp  x23, x24, [x28, #32] ; hvc function, done register
        ldp_x(25, 26, 28, 48), // 4  ldp  x25, x26, [x28, #48] ; secondaries, CPU_ON table
        ldr_x(27, 28, 64),     // 5  ldr  x27, [x28, #64]    ; entry
        // start_secondaries:
        cbz_x(25, 9),                          // 6  cbz  x25, measure (15)
        movz_x(0, PSCI_CPU_ON_64 & 0xffff, 0), // 7  movz x0, #0x3
        movk_x(0, PSCI_CPU_ON_64 >> 16, 1),    // 8  movk x0, #0xc400, lsl #16
        ldp_x_post(1, 3, 26, 16), // 9  ldp x1, x3, [x26], #16 ; target MPIDR, context id
        mov_x(2, 27),             // 10 mov  x2, x27            ; entry point
        HVC_0,                    // 11 hvc  #0                 ; PSCI CPU_ON
        sub_x_imm(25, 25, 1),     // 12 sub  x25, x25, #1
        b(-7),                    // 13 b    start_secondaries (6)
        NOP,                      // 14 nop
        // measure:
        MRS_X9_CNTFRQ,        // 15 mrs  x9, cntfrq_el0
        str_x_post(9, 19, 8), // 16 str  x9, [x19], #8
        // batch:
        mov_x(10, 21),  // 17 mov  x10, x21           ; iterations left
        ISB,            // 18 isb
        MRS_X11_CNTVCT, // 19 mrs  x11, cntvct_el0    ; batch start
    ];
    // loop: the timed operation, then the loop counter.
    code.extend_from_slice(ops); // 20..   the operation
    code.extend([
        subs_x_imm(10, 10, 1), //        subs x10, x10, #1
        b_ne(-(n + 1)),        //        b.ne loop (20)
        ISB,                   //        isb
        MRS_X12_CNTVCT,        //        mrs  x12, cntvct_el0 ; batch end
        sub_x(12, 12, 11),     //        sub  x12, x12, x11
        str_x_post(12, 19, 8), //        str  x12, [x19], #8
        subs_x_imm(20, 20, 1), //        subs x20, x20, #1
        b_ne(-(n + 10)),       //        b.ne batch (17)
        str_w(31, 24),         //        str  wzr, [x24]      ; DONE: an exit after timing
        // park:
        WFI,   //        wfi
        b(-1), //        b    park
    ]);
    code
}

/// The program as little-endian bytes.
pub fn program_bytes(op: Op) -> Vec<u8> {
    program(op).iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words from `aarch64-linux-gnu-as` + `objdump -d` for the same mnemonics (binutils 2.40).
    #[test]
    fn encodings_match_binutils() {
        let table: &[(u32, u32, &str)] = &[
            (mov_x(28, 0), 0xaa0003fc, "mov x28, x0"),
            (mov_x(0, 23), 0xaa1703e0, "mov x0, x23"),
            (ldp_x(19, 20, 28, 0), 0xa9405393, "ldp x19, x20, [x28]"),
            (ldp_x(21, 22, 28, 16), 0xa9415b95, "ldp x21, x22, [x28, #16]"),
            (ldp_x(25, 26, 28, 48), 0xa9436b99, "ldp x25, x26, [x28, #48]"),
            (ldr_x(27, 28, 64), 0xf940239b, "ldr x27, [x28, #64]"),
            (ldp_x_post(1, 3, 26, 16), 0xa8c10f41, "ldp x1, x3, [x26], #16"),
            (movz_x(0, 3, 0), 0xd2800060, "mov x0, #0x3"),
            (movk_x(0, 0xc400, 1), 0xf2b88000, "movk x0, #0xc400, lsl #16"),
            (sub_x_imm(25, 25, 1), 0xd1000739, "sub x25, x25, #0x1"),
            (subs_x_imm(10, 10, 1), 0xf100054a, "subs x10, x10, #0x1"),
            (sub_x(12, 12, 11), 0xcb0b018c, "sub x12, x12, x11"),
            (str_x_post(9, 19, 8), 0xf8008669, "str x9, [x19], #8"),
            (ldr_w(9, 22), 0xb94002c9, "ldr w9, [x22]"),
            (str_w(9, 22), 0xb90002c9, "str w9, [x22]"),
            (str_w(31, 24), 0xb900031f, "str wzr, [x24]"),
            (MRS_X9_CNTFRQ, 0xd53be009, "mrs x9, cntfrq_el0"),
            (MRS_X11_CNTVCT, 0xd53be04b, "mrs x11, cntvct_el0"),
            (MRS_X9_OSDLR, 0xd5301389, "mrs x9, osdlr_el1"),
            (HVC_0, 0xd4000002, "hvc #0x0"),
            (ISB, 0xd5033fdf, "isb"),
            (WFI, 0xd503207f, "wfi"),
            (NOP, 0xd503201f, "nop"),
            (b(-6), 0x17fffffa, "b .-24"),
            (b(0), 0x14000000, "b ."),
            (b_ne(-1), 0x54ffffe1, "b.ne .-4"),
            (cbz_x(25, 9), 0xb4000139, "cbz x25, .+36"),
        ];
        for &(ours, binutils, text) in table {
            assert_eq!(ours, binutils, "{text}: {ours:#010x} != {binutils:#010x}");
        }
    }

    /// The whole HVC program, assembled from its listing (the comments in [`program`]) by
    /// `aarch64-linux-gnu-as` and dumped with objdump.
    #[test]
    fn hvc_program_matches_binutils() {
        let binutils = [
            0xaa0003fc, 0xa9405393, 0xa9415b95, 0xa9426397, 0xa9436b99, 0xf940239b, 0xb4000139,
            0xd2800060, 0xf2b88000, 0xa8c10f41, 0xaa1b03e2, 0xd4000002, 0xd1000739, 0x17fffff9,
            0xd503201f, 0xd53be009, 0xf8008669, 0xaa1503ea, 0xd5033fdf, 0xd53be04b, 0xaa1703e0,
            0xd4000002, 0xf100054a, 0x54ffffa1, 0xd5033fdf, 0xd53be04c, 0xcb0b018c, 0xf800866c,
            0xf1000694, 0x54fffe81, 0xb900031f, 0xd503207f, 0x17ffffff,
        ];
        assert_eq!(program(Op::Hvc), binutils);
    }

    /// Decodes the branch target of a B, B.cond or CBZ at `at`.
    fn target(code: &[u32], at: usize) -> usize {
        let w = code[at];
        let offset = if w & 0xfc00_0000 == 0x1400_0000 {
            ((w << 6) as i32) >> 6
        } else {
            (((w >> 5) & 0x7_ffff) << 13) as i32 >> 13
        };
        (at as i32 + offset) as usize
    }

    #[test]
    fn branches_land_on_their_labels() {
        for op in [Op::Hvc, Op::Load, Op::Store, Op::SysRegRead, Op::Nop] {
            let code = program(op);
            let n = op_words(op).len();
            assert_eq!(target(&code, 6), 15, "{op:?}: cbz → measure");
            assert_eq!(code[15], MRS_X9_CNTFRQ);
            assert_eq!(target(&code, 13), 6, "{op:?}: b → start_secondaries");
            let loop_start = 20;
            assert_eq!(&code[loop_start..loop_start + n], op_words(op));
            assert_eq!(target(&code, loop_start + n + 1), loop_start, "{op:?}: b.ne → loop");
            assert_eq!(target(&code, loop_start + n + 7), 17, "{op:?}: b.ne → batch");
            assert_eq!(code[17], mov_x(10, 21));
            let park = code.len() - 2;
            assert_eq!(code[park], WFI);
            assert_eq!(target(&code, park + 1), park);
        }
    }

    #[test]
    fn params_are_laid_out_in_order() {
        let p = Params { results: 1, entry: 9, secondaries: 7, ..Default::default() };
        let bytes = p.to_bytes();
        assert_eq!(&bytes[0..8], &1u64.to_le_bytes());
        assert_eq!(&bytes[48..56], &7u64.to_le_bytes());
        assert_eq!(&bytes[64..72], &9u64.to_le_bytes());
    }
}
