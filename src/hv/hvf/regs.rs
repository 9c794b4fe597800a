//! hvrun's register names ([`Reg`], [`SysReg`]) in Hypervisor.framework's terms. Portable and
//! unit-tested.

use hv_sys::*;

use crate::arch::aarch64::inject::TargetEl;
use crate::arch::aarch64::sysreg::SysReg;
use crate::arch::aarch64::Reg;

/// The registers that take an exception at one EL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExceptionRegs {
    pub esr: hv_sys_reg_t,
    pub far: hv_sys_reg_t,
    pub elr: hv_sys_reg_t,
    pub spsr: hv_sys_reg_t,
    pub vbar: hv_sys_reg_t,
    pub sctlr: hv_sys_reg_t,
}

/// ESR/FAR/ELR/SPSR/VBAR/SCTLR of the EL an exception is injected at (the `_EL2` ones exist
/// only in VMs with EL2 enabled).
pub fn exception_regs(el: TargetEl) -> ExceptionRegs {
    match el {
        TargetEl::El1 => ExceptionRegs {
            esr: HV_SYS_REG_ESR_EL1,
            far: HV_SYS_REG_FAR_EL1,
            elr: HV_SYS_REG_ELR_EL1,
            spsr: HV_SYS_REG_SPSR_EL1,
            vbar: HV_SYS_REG_VBAR_EL1,
            sctlr: HV_SYS_REG_SCTLR_EL1,
        },
        TargetEl::El2 => ExceptionRegs {
            esr: HV_SYS_REG_ESR_EL2,
            far: HV_SYS_REG_FAR_EL2,
            elr: HV_SYS_REG_ELR_EL2,
            spsr: HV_SYS_REG_SPSR_EL2,
            vbar: HV_SYS_REG_VBAR_EL2,
            sctlr: HV_SYS_REG_SCTLR_EL2,
        },
    }
}

/// The framework's name of a system register: `hv_sys_reg_t` is the MRS/MSR encoding
/// `op0 << 14 | op1 << 11 | CRn << 7 | CRm << 3 | op2` (`hv_vcpu_types.h`). Whether the
/// framework accepts a given register is its call (`HV_BAD_ARGUMENT` otherwise).
pub fn hv_sys_reg(reg: SysReg) -> hv_sys_reg_t {
    let SysReg { op0, op1, crn, crm, op2 } = reg;
    (u16::from(op0 & 3) << 14)
        | (u16::from(op1 & 7) << 11)
        | (u16::from(crn & 15) << 7)
        | (u16::from(crm & 15) << 3)
        | u16::from(op2 & 7)
}

/// Where the framework keeps a register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HvReg {
    /// `hv_vcpu_{get,set}_reg`.
    Core(hv_reg_t),
    /// `hv_vcpu_{get,set}_sys_reg`.
    Sys(hv_sys_reg_t),
}

/// The framework's name for `reg`; `None` for a register that does not exist (X31: there is no
/// such general register, and `HV_REG_X0 + 31` would be the PC). `el2`: the guest runs at EL2
/// (`--nested`), so "the stack pointer of the current EL" is SP_EL2.
pub fn hv_reg(reg: Reg, el2: bool) -> Option<HvReg> {
    Some(match reg {
        Reg::X(n) if n <= 30 => HvReg::Core(HV_REG_X0 + u32::from(n)),
        Reg::X(_) => return None,
        Reg::Pc => HvReg::Core(HV_REG_PC),
        Reg::Pstate => HvReg::Core(HV_REG_CPSR),
        Reg::Sp if el2 => HvReg::Sys(HV_SYS_REG_SP_EL2),
        Reg::Sp => HvReg::Sys(HV_SYS_REG_SP_EL1),
        Reg::Mpidr => HvReg::Sys(HV_SYS_REG_MPIDR_EL1),
    })
}

/// PSTATE.M[3:0] of EL1h and EL2h.
const MODE_MASK: u64 = 0xf;
const MODE_EL1H: u64 = 0b0101;
const MODE_EL2H: u64 = 0b1001;

/// With `--nested` the guest kernel is entered at EL2 (booting.rst §4 allows EL2 or EL1, and
/// a kernel entered at EL2 can run KVM): the VMM's EL1h entry state becomes EL2h, the DAIF masks
/// kept (0x3c5 → 0x3c9). Any other mode, and everything without `--nested`, is left alone.
pub fn entry_pstate(pstate: u64, el2: bool) -> u64 {
    if el2 && pstate & MODE_MASK == MODE_EL1H {
        (pstate & !MODE_MASK) | MODE_EL2H
    } else {
        pstate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn general_registers_stop_at_x30() {
        assert_eq!(hv_reg(Reg::X(0), false), Some(HvReg::Core(0)));
        assert_eq!(hv_reg(Reg::X(30), false), Some(HvReg::Core(30)));
        assert_eq!(hv_reg(Reg::X(31), false), None);
        assert_eq!(hv_reg(Reg::Pc, false), Some(HvReg::Core(31)));
        assert_eq!(hv_reg(Reg::Pstate, false), Some(HvReg::Core(34)));
    }

    #[test]
    fn system_registers() {
        assert_eq!(hv_reg(Reg::Mpidr, false), Some(HvReg::Sys(0xc005)));
        assert_eq!(hv_reg(Reg::Sp, false), Some(HvReg::Sys(0xe208)));
        assert_eq!(hv_reg(Reg::Sp, true), Some(HvReg::Sys(0xf208)));
    }

    #[test]
    fn system_register_encodings_match_the_sdk() {
        use crate::arch::aarch64::sysreg::regs;
        assert_eq!(hv_sys_reg(regs::CNTHCTL_EL2), HV_SYS_REG_CNTHCTL_EL2);
        assert_eq!(hv_sys_reg(regs::MDCCINT_EL1), HV_SYS_REG_MDCCINT_EL1);
        assert_eq!(hv_sys_reg(regs::MDSCR_EL1), HV_SYS_REG_MDSCR_EL1);
        assert_eq!(hv_sys_reg(regs::ID_AA64PFR0_EL1), HV_SYS_REG_ID_AA64PFR0_EL1);
        assert_eq!(hv_sys_reg(SysReg::new(3, 3, 14, 2, 1)), HV_SYS_REG_CNTP_CTL_EL0);
        assert_eq!(hv_sys_reg(SysReg::new(3, 7, 15, 15, 7)), 0xffff);
    }

    #[test]
    fn exceptions_at_el2_use_the_el2_registers() {
        let el1 = exception_regs(TargetEl::El1);
        assert_eq!((el1.esr, el1.vbar, el1.sctlr), (0xc290, 0xc600, 0xc080));
        let el2 = exception_regs(TargetEl::El2);
        assert_eq!(
            [el2.esr, el2.far, el2.elr, el2.spsr, el2.vbar, el2.sctlr],
            [0xe290, 0xe300, 0xe201, 0xe200, 0xe600, 0xe080]
        );
    }

    #[test]
    fn nested_guests_start_at_el2h() {
        assert_eq!(entry_pstate(0x3c5, true), 0x3c9);
        assert_eq!(entry_pstate(0x3c5, false), 0x3c5);
        assert_eq!(entry_pstate(0x3c4, true), 0x3c4, "EL1t is not the boot state: left alone");
    }
}
