//! Hypervisor.framework's arm64 types and constants (`hv_kern_types.h`, `hv_vcpu_types.h`,
//! `hv_vm_types.h`, `hv_gic_types.h`, `hv_vcpu_config.h`). Portable: no function here calls the
//! framework.

use core::ffi::c_void;

/// A framework status code (`mach_error_t`): `err_local | err_sub(0xba5) | code`.
pub type hv_return_t = i32;

/// Builds the framework's error codes exactly as `hv_kern_types.h` does.
const fn hv_error(code: u32) -> hv_return_t {
    (0xfae9_4000 | code) as hv_return_t
}

/// The operation succeeded.
pub const HV_SUCCESS: hv_return_t = 0;
/// The operation failed.
pub const HV_ERROR: hv_return_t = hv_error(0x01);
/// The owning resource is busy (e.g. a second `hv_vm_create` in one process).
pub const HV_BUSY: hv_return_t = hv_error(0x02);
/// An argument is invalid.
pub const HV_BAD_ARGUMENT: hv_return_t = hv_error(0x03);
/// The guest is in an illegal state (arm64 only).
pub const HV_ILLEGAL_GUEST_STATE: hv_return_t = hv_error(0x04);
/// The host has no resources left for the request.
pub const HV_NO_RESOURCES: hv_return_t = hv_error(0x05);
/// No VM or vCPU is available.
pub const HV_NO_DEVICE: hv_return_t = hv_error(0x06);
/// The system did not allow the operation (typically: the binary lacks the
/// `com.apple.security.hypervisor` entitlement).
pub const HV_DENIED: hv_return_t = hv_error(0x07);
/// The object already exists. Apple's arm64 `hv_kern_types.h` (XNU, © 2019-2026) names 0x08
/// `HV_EXISTS`; some transcriptions call it `HV_FAULT` (the x86 header's name for the code).
pub const HV_EXISTS: hv_return_t = hv_error(0x08);
/// The hypervisor does not support the operation (e.g. inside a macOS VM without nested
/// virtualisation, or EL2 on a chip before M3).
pub const HV_UNSUPPORTED: hv_return_t = hv_error(0x0f);

/// A vCPU handle.
pub type hv_vcpu_t = u64;
/// An intermediate physical address: a guest physical address.
pub type hv_ipa_t = u64;
/// Permissions of a guest memory mapping.
pub type hv_memory_flags_t = u64;
/// The guest may read the mapping.
pub const HV_MEMORY_READ: hv_memory_flags_t = 1 << 0;
/// The guest may write the mapping.
pub const HV_MEMORY_WRITE: hv_memory_flags_t = 1 << 1;
/// The guest may execute from the mapping.
pub const HV_MEMORY_EXEC: hv_memory_flags_t = 1 << 2;

/// An OS object (`os_object_t`, released with `os_release`) describing a VM (macOS 13+).
pub type hv_vm_config_t = *mut c_void;
/// An OS object describing a vCPU; null selects the defaults.
pub type hv_vcpu_config_t = *mut c_void;
/// An OS object describing the in-kernel GIC (macOS 15+).
pub type hv_gic_config_t = *mut c_void;
/// An OS object holding the in-kernel GIC's saved state (macOS 15+).
pub type hv_gic_state_t = *mut c_void;

/// Why `hv_vcpu_run` returned (`hv_vcpu_types.h`, a `uint32_t` enum).
pub type hv_exit_reason_t = u32;
/// `hv_vcpus_exit` asked for the exit.
pub const HV_EXIT_REASON_CANCELED: hv_exit_reason_t = 0;
/// A synchronous exception to EL2; `exception.syndrome` is its ESR.
pub const HV_EXIT_REASON_EXCEPTION: hv_exit_reason_t = 1;
/// The virtual timer became pending; the framework has masked it.
pub const HV_EXIT_REASON_VTIMER_ACTIVATED: hv_exit_reason_t = 2;
/// "Should not happen under normal operation."
pub const HV_EXIT_REASON_UNKNOWN: hv_exit_reason_t = 3;

/// The exception part of an exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct hv_vcpu_exit_exception_t {
    /// ESR_EL2 of the exception.
    pub syndrome: u64,
    /// FAR_EL2: the faulting virtual address.
    pub virtual_address: u64,
    /// The faulting IPA (for stage-2 aborts: the MMIO address).
    pub physical_address: hv_ipa_t,
}

/// What `hv_vcpu_run` writes on every return, into memory the framework owns
/// (`hv_vcpu_create` hands out a pointer to it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct hv_vcpu_exit_t {
    pub reason: hv_exit_reason_t,
    pub exception: hv_vcpu_exit_exception_t,
}

// The C layout: reason at 0 (plus 4 bytes of padding), syndrome at 8, virtual address at 16,
// physical address at 24, 32 bytes in all.
const _: () = {
    assert!(core::mem::size_of::<hv_vcpu_exit_t>() == 32);
    assert!(core::mem::align_of::<hv_vcpu_exit_t>() == 8);
    assert!(core::mem::offset_of!(hv_vcpu_exit_t, reason) == 0);
    assert!(core::mem::offset_of!(hv_vcpu_exit_t, exception) == 8);
    assert!(core::mem::offset_of!(hv_vcpu_exit_exception_t, virtual_address) == 8);
    assert!(core::mem::offset_of!(hv_vcpu_exit_exception_t, physical_address) == 16);
};

/// General registers (`hv_reg_t`, a `uint32_t` enum): X0–X30 are 0–30, so Xn is
/// `HV_REG_X0 + n` for n ≤ 30. There is no SP here (it is `HV_SYS_REG_SP_EL0/1`), and 31 is PC,
/// not XZR: a register number 31 from a syndrome must never be added to `HV_REG_X0`.
pub type hv_reg_t = u32;
pub const HV_REG_X0: hv_reg_t = 0;
pub const HV_REG_FP: hv_reg_t = 29;
pub const HV_REG_LR: hv_reg_t = 30;
pub const HV_REG_PC: hv_reg_t = 31;
pub const HV_REG_FPCR: hv_reg_t = 32;
pub const HV_REG_FPSR: hv_reg_t = 33;
/// PSTATE, in SPSR format.
pub const HV_REG_CPSR: hv_reg_t = 34;

/// System registers (`hv_sys_reg_t`, a `uint16_t` enum). The value is the MRS/MSR encoding
/// `op0 << 14 | op1 << 11 | CRn << 7 | CRm << 3 | op2` — not the ESR ISS layout of a trapped
/// access. Only the registers hvrun uses are listed.
pub type hv_sys_reg_t = u16;
/// MDCCINT_EL1: with EL2 enabled the framework traps it and expects it passed through.
pub const HV_SYS_REG_MDCCINT_EL1: hv_sys_reg_t = 0x8010;
pub const HV_SYS_REG_MDSCR_EL1: hv_sys_reg_t = 0x8012;
pub const HV_SYS_REG_MIDR_EL1: hv_sys_reg_t = 0xc000;
pub const HV_SYS_REG_MPIDR_EL1: hv_sys_reg_t = 0xc005;
pub const HV_SYS_REG_ID_AA64PFR0_EL1: hv_sys_reg_t = 0xc020;
pub const HV_SYS_REG_ID_AA64PFR1_EL1: hv_sys_reg_t = 0xc021;
pub const HV_SYS_REG_ID_AA64DFR0_EL1: hv_sys_reg_t = 0xc028;
pub const HV_SYS_REG_ID_AA64ISAR0_EL1: hv_sys_reg_t = 0xc030;
pub const HV_SYS_REG_ID_AA64ISAR1_EL1: hv_sys_reg_t = 0xc031;
pub const HV_SYS_REG_ID_AA64MMFR0_EL1: hv_sys_reg_t = 0xc038;
pub const HV_SYS_REG_ID_AA64MMFR1_EL1: hv_sys_reg_t = 0xc039;
pub const HV_SYS_REG_ID_AA64MMFR2_EL1: hv_sys_reg_t = 0xc03a;
pub const HV_SYS_REG_SCTLR_EL1: hv_sys_reg_t = 0xc080;
pub const HV_SYS_REG_CPACR_EL1: hv_sys_reg_t = 0xc082;
pub const HV_SYS_REG_TTBR0_EL1: hv_sys_reg_t = 0xc100;
pub const HV_SYS_REG_TTBR1_EL1: hv_sys_reg_t = 0xc101;
pub const HV_SYS_REG_TCR_EL1: hv_sys_reg_t = 0xc102;
pub const HV_SYS_REG_SPSR_EL1: hv_sys_reg_t = 0xc200;
pub const HV_SYS_REG_ELR_EL1: hv_sys_reg_t = 0xc201;
pub const HV_SYS_REG_SP_EL0: hv_sys_reg_t = 0xc208;
pub const HV_SYS_REG_ESR_EL1: hv_sys_reg_t = 0xc290;
pub const HV_SYS_REG_FAR_EL1: hv_sys_reg_t = 0xc300;
pub const HV_SYS_REG_MAIR_EL1: hv_sys_reg_t = 0xc510;
pub const HV_SYS_REG_VBAR_EL1: hv_sys_reg_t = 0xc600;
pub const HV_SYS_REG_CNTKCTL_EL1: hv_sys_reg_t = 0xc708;
pub const HV_SYS_REG_CNTV_CTL_EL0: hv_sys_reg_t = 0xdf19;
pub const HV_SYS_REG_CNTV_CVAL_EL0: hv_sys_reg_t = 0xdf1a;
pub const HV_SYS_REG_SP_EL1: hv_sys_reg_t = 0xe208;
/// macOS 15, only in VMs with an in-kernel GIC.
pub const HV_SYS_REG_CNTP_CTL_EL0: hv_sys_reg_t = 0xdf11;
/// macOS 15, only in VMs with an in-kernel GIC.
pub const HV_SYS_REG_CNTP_CVAL_EL0: hv_sys_reg_t = 0xdf12;
/// macOS 15, only in VMs with EL2 enabled (like the other `_EL2` registers below).
pub const HV_SYS_REG_SCTLR_EL2: hv_sys_reg_t = 0xe080;
pub const HV_SYS_REG_HCR_EL2: hv_sys_reg_t = 0xe088;
pub const HV_SYS_REG_SPSR_EL2: hv_sys_reg_t = 0xe200;
pub const HV_SYS_REG_ELR_EL2: hv_sys_reg_t = 0xe201;
pub const HV_SYS_REG_ESR_EL2: hv_sys_reg_t = 0xe290;
pub const HV_SYS_REG_FAR_EL2: hv_sys_reg_t = 0xe300;
pub const HV_SYS_REG_VBAR_EL2: hv_sys_reg_t = 0xe600;
pub const HV_SYS_REG_CNTVOFF_EL2: hv_sys_reg_t = 0xe703;
/// With EL2 enabled the framework traps it and expects it passed through.
pub const HV_SYS_REG_CNTHCTL_EL2: hv_sys_reg_t = 0xe708;
pub const HV_SYS_REG_SP_EL2: hv_sys_reg_t = 0xf208;

/// The vCPU's interrupt lines (`hv_interrupt_type_t`, a `uint32_t` enum). IRQ is 0 and FIQ 1 in
/// the SDK's `hv_vcpu_types.h` and in a bindgen transcription of it; an older hand-written
/// binding (`applevisor-sys` 0.1) has them the other way round.
pub type hv_interrupt_type_t = u32;
pub const HV_INTERRUPT_TYPE_IRQ: hv_interrupt_type_t = 0;
pub const HV_INTERRUPT_TYPE_FIQ: hv_interrupt_type_t = 1;

/// ID registers a vCPU configuration reports (`hv_feature_reg_t`, a `uint32_t` enum).
pub type hv_feature_reg_t = u32;
pub const HV_FEATURE_REG_ID_AA64DFR0_EL1: hv_feature_reg_t = 0;
pub const HV_FEATURE_REG_ID_AA64DFR1_EL1: hv_feature_reg_t = 1;
pub const HV_FEATURE_REG_ID_AA64ISAR0_EL1: hv_feature_reg_t = 2;
pub const HV_FEATURE_REG_ID_AA64ISAR1_EL1: hv_feature_reg_t = 3;
pub const HV_FEATURE_REG_ID_AA64MMFR0_EL1: hv_feature_reg_t = 4;
pub const HV_FEATURE_REG_ID_AA64MMFR1_EL1: hv_feature_reg_t = 5;
pub const HV_FEATURE_REG_ID_AA64MMFR2_EL1: hv_feature_reg_t = 6;
pub const HV_FEATURE_REG_ID_AA64PFR0_EL1: hv_feature_reg_t = 7;
pub const HV_FEATURE_REG_ID_AA64PFR1_EL1: hv_feature_reg_t = 8;
pub const HV_FEATURE_REG_CTR_EL0: hv_feature_reg_t = 9;
pub const HV_FEATURE_REG_CLIDR_EL1: hv_feature_reg_t = 10;
pub const HV_FEATURE_REG_DCZID_EL0: hv_feature_reg_t = 11;

/// The interrupts the framework's GIC reserves (`hv_gic_intid_t`, `uint16_t`). These are keys
/// for `hv_gic_get_intid`, which returns the INTID to use: the values below agree with two
/// independent transcriptions (and with QEMU comparing the maintenance INTID against
/// `HV_GIC_INT_MAINTENANCE`), but VirtualBox's fallback enum for older SDKs orders the names
/// differently over the same numbers, so hvrun does not treat them as INTIDs.
pub type hv_gic_intid_t = u16;
pub const HV_GIC_INT_PERFORMANCE_MONITOR: hv_gic_intid_t = 23;
pub const HV_GIC_INT_MAINTENANCE: hv_gic_intid_t = 25;
pub const HV_GIC_INT_EL2_PHYSICAL_TIMER: hv_gic_intid_t = 26;
pub const HV_GIC_INT_EL1_VIRTUAL_TIMER: hv_gic_intid_t = 27;
pub const HV_GIC_INT_EL1_PHYSICAL_TIMER: hv_gic_intid_t = 30;

/// In-kernel GIC distributor registers (`uint16_t`): the GICD offset itself.
pub type hv_gic_distributor_reg_t = u16;
pub const HV_GIC_DISTRIBUTOR_REG_GICD_CTLR: hv_gic_distributor_reg_t = 0x0000;
pub const HV_GIC_DISTRIBUTOR_REG_GICD_TYPER: hv_gic_distributor_reg_t = 0x0004;
/// GICD_ISENABLER<n> is at 0x0100 + 4n.
pub const HV_GIC_DISTRIBUTOR_REG_GICD_ISENABLER0: hv_gic_distributor_reg_t = 0x0100;
/// GICD_ISPENDR<n> is at 0x0200 + 4n.
pub const HV_GIC_DISTRIBUTOR_REG_GICD_ISPENDR0: hv_gic_distributor_reg_t = 0x0200;

/// In-kernel GIC redistributor registers (`uint32_t`): the offset from RD_base; the SGI_base
/// frame starts at 0x10000.
pub type hv_gic_redistributor_reg_t = u32;
pub const HV_GIC_REDISTRIBUTOR_REG_GICR_TYPER: hv_gic_redistributor_reg_t = 0x0008;
pub const HV_GIC_REDISTRIBUTOR_REG_GICR_ISENABLER0: hv_gic_redistributor_reg_t = 0x1_0100;
pub const HV_GIC_REDISTRIBUTOR_REG_GICR_ISPENDR0: hv_gic_redistributor_reg_t = 0x1_0200;
pub const HV_GIC_REDISTRIBUTOR_REG_GICR_ICPENDR0: hv_gic_redistributor_reg_t = 0x1_0280;

/// In-kernel GIC CPU-interface registers (`uint16_t`), in the [`hv_sys_reg_t`] encoding.
pub type hv_gic_icc_reg_t = u16;
pub const HV_GIC_ICC_REG_PMR_EL1: hv_gic_icc_reg_t = 0xc230;
pub const HV_GIC_ICC_REG_RPR_EL1: hv_gic_icc_reg_t = 0xc65b;
pub const HV_GIC_ICC_REG_CTLR_EL1: hv_gic_icc_reg_t = 0xc664;
pub const HV_GIC_ICC_REG_SRE_EL1: hv_gic_icc_reg_t = 0xc665;
pub const HV_GIC_ICC_REG_IGRPEN1_EL1: hv_gic_icc_reg_t = 0xc667;

#[cfg(test)]
mod tests {
    use super::*;

    /// The MRS/MSR encoding the framework uses for `hv_sys_reg_t` and `hv_gic_icc_reg_t`.
    fn encode(op0: u16, op1: u16, crn: u16, crm: u16, op2: u16) -> u16 {
        op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2
    }

    #[test]
    fn return_codes_match_the_sdk() {
        assert_eq!(HV_ERROR as u32, 0xfae9_4001);
        assert_eq!(HV_BAD_ARGUMENT as u32, 0xfae9_4003);
        assert_eq!(HV_DENIED as u32, 0xfae9_4007);
        assert_eq!(HV_UNSUPPORTED as u32, 0xfae9_400f);
    }

    #[test]
    fn system_registers_use_the_msr_encoding() {
        // Tuples from the Arm ARM's register descriptions (DDI0487, D24).
        assert_eq!(HV_SYS_REG_MPIDR_EL1, encode(3, 0, 0, 0, 5));
        assert_eq!(HV_SYS_REG_ID_AA64PFR1_EL1, encode(3, 0, 0, 4, 1));
        assert_eq!(HV_SYS_REG_ID_AA64MMFR0_EL1, encode(3, 0, 0, 7, 0));
        assert_eq!(HV_SYS_REG_MDSCR_EL1, encode(2, 0, 0, 2, 2));
        assert_eq!(HV_SYS_REG_ESR_EL1, encode(3, 0, 5, 2, 0));
        assert_eq!(HV_SYS_REG_VBAR_EL1, encode(3, 0, 12, 0, 0));
        assert_eq!(HV_SYS_REG_CNTV_CTL_EL0, encode(3, 3, 14, 3, 1));
        assert_eq!(HV_SYS_REG_CNTV_CVAL_EL0, encode(3, 3, 14, 3, 2));
        assert_eq!(HV_SYS_REG_CNTP_CTL_EL0, encode(3, 3, 14, 2, 1));
        assert_eq!(HV_SYS_REG_SP_EL1, encode(3, 4, 4, 1, 0));
        assert_eq!(HV_SYS_REG_HCR_EL2, encode(3, 4, 1, 1, 0));
        assert_eq!(HV_SYS_REG_SCTLR_EL2, encode(3, 4, 1, 0, 0));
        assert_eq!(HV_SYS_REG_CNTHCTL_EL2, encode(3, 4, 14, 1, 0));
        assert_eq!(HV_SYS_REG_MDCCINT_EL1, encode(2, 0, 0, 2, 0));
        assert_eq!(HV_SYS_REG_CNTVOFF_EL2, encode(3, 4, 14, 0, 3));
        assert_eq!(HV_SYS_REG_SP_EL2, encode(3, 6, 4, 1, 0));
        assert_eq!(HV_GIC_ICC_REG_PMR_EL1, encode(3, 0, 4, 6, 0));
        assert_eq!(HV_GIC_ICC_REG_SRE_EL1, encode(3, 0, 12, 12, 5));
        assert_eq!(HV_GIC_ICC_REG_IGRPEN1_EL1, encode(3, 0, 12, 12, 7));
    }

    #[test]
    fn exit_record_layout() {
        // The framework writes the record as C lays it out: reason in the first 4 bytes,
        // then three u64 fields from byte 8 (little-endian, as on every arm64 Mac).
        let words: [u64; 4] = [1, 0x9300_0046, 0xffff_0000_0900_0000, 0x0900_0000];
        // SAFETY: 32 initialised, 8-aligned bytes; every bit pattern is a valid hv_vcpu_exit_t.
        let exit: hv_vcpu_exit_t = unsafe { core::ptr::read(words.as_ptr().cast()) };
        assert_eq!(exit.reason, HV_EXIT_REASON_EXCEPTION);
        assert_eq!(exit.exception.syndrome, 0x9300_0046);
        assert_eq!(exit.exception.virtual_address, 0xffff_0000_0900_0000);
        assert_eq!(exit.exception.physical_address, 0x0900_0000);
    }
}
