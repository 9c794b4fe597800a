//! ESR_EL2 decoding: why a guest trapped, and — for a data abort on an unbacked address — the
//! exact MMIO access the instruction made, so the backend can complete it without decoding the
//! instruction itself.
//!
//! Encodings: Arm ARM (DDI 0487) D24.2.40 "ESR_EL2" (EC table and the ISS encodings for
//! "an exception from a Data Abort", "trapped MSR/MRS", "WF* instruction"). Hypervisor.framework
//! hands the raw ESR_EL2 to the VMM (`hv_vcpu_exit_t.exception.syndrome`); KVM decodes it in the
//! kernel, so only the HVF backend uses this module on the hot path.

/// Why the guest trapped: ESR_EL2.EC, bits [31:26].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExceptionClass {
    /// 0x01: WFI or WFE (or WFIT/WFET), trapped because HCR_EL2.TWI/TWE is set.
    WfiWfe,
    /// 0x16: HVC from AArch64. The preferred return address is already past the HVC.
    Hvc64,
    /// 0x17: SMC from AArch64, trapped by HCR_EL2.TSC. The return address is the SMC itself.
    Smc64,
    /// 0x18: MSR, MRS or system instruction from AArch64 (a trapped system-register access).
    SysReg,
    /// 0x20: instruction abort from a lower EL: the guest executed from an unbacked address.
    InstructionAbortLowerEl,
    /// 0x24: data abort from a lower EL: the guest loaded or stored to an unbacked address (MMIO).
    DataAbortLowerEl,
    /// 0x3c: BRK from AArch64 (only seen when debug exceptions are trapped, e.g. for a gdb stub).
    Brk64,
    /// Any other class, including 0x00 ("Unknown reason"), with its raw EC.
    Unknown(u8),
}

impl ExceptionClass {
    /// Classifies a raw 6-bit EC.
    pub fn from_ec(ec: u8) -> Self {
        match ec {
            0x01 => ExceptionClass::WfiWfe,
            0x16 => ExceptionClass::Hvc64,
            0x17 => ExceptionClass::Smc64,
            0x18 => ExceptionClass::SysReg,
            0x20 => ExceptionClass::InstructionAbortLowerEl,
            0x24 => ExceptionClass::DataAbortLowerEl,
            0x3c => ExceptionClass::Brk64,
            other => ExceptionClass::Unknown(other),
        }
    }
}

/// A raw ESR_EL2 value with accessors for its fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Esr(pub u64);

impl Esr {
    /// EC, bits [31:26].
    pub fn ec(self) -> u8 {
        ((self.0 >> 26) & 0x3f) as u8
    }

    /// The exception class.
    pub fn class(self) -> ExceptionClass {
        ExceptionClass::from_ec(self.ec())
    }

    /// IL, bit 25: the trapped instruction was 32 bits long (always, for A64 code).
    pub fn il(self) -> bool {
        self.0 & (1 << 25) != 0
    }

    /// ISS, bits [24:0]: the class-specific syndrome.
    pub fn iss(self) -> u32 {
        (self.0 & 0x1ff_ffff) as u32
    }
}

/// The kind of WF* instruction that trapped: ISS.TI, bits [1:0] of the WFx ISS (D24.2.40).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitKind {
    /// WFI, or WFIT (FEAT_WFxT) which the VMM treats as WFI: sleeping less is always allowed.
    Wfi,
    /// WFE or WFET: an event hint the VMM can treat as a no-op (advance the PC).
    Wfe,
}

/// Decodes the ISS of an EC 0x01 exception. TI = 0b00 WFI, 0b01 WFE, 0b10 WFIT, 0b11 WFET.
pub fn wait_kind(iss: u32) -> WaitKind {
    match iss & 0b11 {
        0b00 | 0b10 => WaitKind::Wfi,
        _ => WaitKind::Wfe,
    }
}

/// The data-abort ISS fields (D24.2.40, "ISS encoding for an exception from a Data Abort").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataAbortIss {
    /// ISV, bit 24: bits [23:14] hold a valid instruction syndrome. Clear for load/store pair,
    /// writeback and SIMD forms: the VMM then cannot know the register, width or direction.
    pub isv: bool,
    /// Access size in bytes, 1 << SAS (bits [23:22]).
    pub size: u8,
    /// SSE, bit 21: the load sign-extends.
    pub sse: bool,
    /// SRT, bits [20:16]: the transfer register; 31 means XZR (WZR).
    pub srt: u8,
    /// SF, bit 15: the transfer register is 64 bits wide (X) rather than 32 (W).
    pub sf: bool,
    /// AR, bit 14: the instruction has acquire/release semantics (LDAR/STLR).
    pub ar: bool,
    /// CM, bit 8: the fault came from a cache maintenance or address translation instruction.
    pub cm: bool,
    /// S1PTW, bit 7: the fault happened on a stage-1 translation table walk, not the access.
    pub s1ptw: bool,
    /// WnR, bit 6: the access was a write.
    pub wnr: bool,
    /// DFSC, bits [5:0]: the fault status code.
    pub dfsc: u8,
}

impl DataAbortIss {
    /// Splits a data-abort ISS into its fields.
    pub fn decode(iss: u32) -> Self {
        let bit = |n: u32| iss & (1 << n) != 0;
        DataAbortIss {
            isv: bit(24),
            size: 1 << ((iss >> 22) & 0b11),
            sse: bit(21),
            srt: ((iss >> 16) & 0x1f) as u8,
            sf: bit(15),
            ar: bit(14),
            cm: bit(8),
            s1ptw: bit(7),
            wnr: bit(6),
            dfsc: (iss & 0x3f) as u8,
        }
    }

    /// What the VMM should do with this abort when the address is not RAM.
    pub fn mmio_decision(&self) -> MmioDecision {
        if self.cm {
            return MmioDecision::CacheMaintenance;
        }
        if self.s1ptw {
            return MmioDecision::TranslationTableWalk;
        }
        if !self.isv {
            return MmioDecision::NoValidSyndrome;
        }
        MmioDecision::Access(MmioAccess {
            size: self.size,
            write: self.wnr,
            reg: self.srt,
            sign_extend: self.sse,
            sixty_four: self.sf,
        })
    }
}

/// What to do with a data abort on an address no memory backs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioDecision {
    /// An ordinary load or store: forward it to the bus, complete it, PC += 4.
    Access(MmioAccess),
    /// A cache maintenance instruction (DC CIVAC, ...) on a device address: nothing to maintain,
    /// skip it (PC += 4), as KVM does (`kvm_handle_guest_abort`, "cache maintenance").
    CacheMaintenance,
    /// ISV = 0 (LDP/STP, pre/post-index writeback, SIMD loads): the syndrome does not say which
    /// register or width. Inject a data abort into the guest; never guess.
    NoValidSyndrome,
    /// The guest's own page tables live in unbacked space (S1PTW = 1): not an MMIO access at
    /// all. Inject a data abort.
    TranslationTableWalk,
}

/// One MMIO load or store as the trapped instruction made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// Bytes accessed: 1, 2, 4 or 8.
    pub size: u8,
    /// A store (`true`) or a load.
    pub write: bool,
    /// The transfer register number, 0..=30, or 31 for XZR/WZR.
    pub reg: u8,
    /// The load sign-extends (LDRSB, LDRSH, LDRSW).
    pub sign_extend: bool,
    /// The register is an X register (64-bit); otherwise a W register.
    pub sixty_four: bool,
}

/// SRT value that names the zero register.
pub const ZERO_REGISTER: u8 = 31;

impl MmioAccess {
    /// The register a store reads its value from, or `None` for XZR (stores zero; do not read
    /// "register 31": to the backend that would be SP).
    pub fn source_register(&self) -> Option<u8> {
        (self.reg != ZERO_REGISTER).then_some(self.reg)
    }

    /// The value a store puts on the bus: `reg_value` truncated to the access size, or 0 when
    /// the source is XZR (whatever `reg_value` is).
    pub fn store_value(&self, reg_value: u64) -> u64 {
        if self.reg == ZERO_REGISTER {
            return 0;
        }
        reg_value & size_mask(self.size)
    }

    /// What a load writes to its destination register, given the bus's zero-extended value:
    /// `Some((reg, value))`, or `None` when the destination is XZR (the result is discarded).
    ///
    /// With SSE the value is sign-extended from the access size to 64 bits (X destination) or
    /// to 32 bits with the upper half zero (W destination, SF = 0): writing a W register clears
    /// bits [63:32] (Arm ARM B1.2.1 / C1.2.5). Without SSE it is zero-extended, and a W
    /// destination never sees more than 32 bits.
    pub fn load_result(&self, bus_value: u64) -> Option<(u8, u64)> {
        if self.reg == ZERO_REGISTER {
            return None;
        }
        let bits = u32::from(self.size) * 8;
        let raw = bus_value & size_mask(self.size);
        let mut value = if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            (((raw << shift) as i64) >> shift) as u64
        } else {
            raw
        };
        if !self.sixty_four {
            value &= 0xffff_ffff;
        }
        Some((self.reg, value))
    }
}

/// The low `size` bytes of a u64 (size 8 or more: all of it).
fn size_mask(size: u8) -> u64 {
    match size {
        0 => 0,
        1..=7 => (1u64 << (u32::from(size) * 8)) - 1,
        _ => u64::MAX,
    }
}

#[cfg(test)]
#[path = "esr_tests.rs"]
mod tests;
