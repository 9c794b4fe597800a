//! KVM's names for arm64 registers (`KVM_{GET,SET}_ONE_REG` ids), from the kernel's
//! Documentation/virt/kvm/api.rst §4.68 "ARM64 registers".

use kvm_bindings::{KVM_REG_ARM64, KVM_REG_ARM64_SYSREG, KVM_REG_ARM_CORE, KVM_REG_SIZE_U64};

use crate::hv::Reg;

/// Core registers are addressed by their offset in `struct kvm_regs`, in 32-bit words; the
/// struct starts with `user_pt_regs { u64 regs[31]; u64 sp; u64 pc; u64 pstate; }`.
const fn core_reg(index_in_user_pt_regs: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE as u64 | (index_in_user_pt_regs * 8 / 4)
}

/// System registers are addressed by their MRS/MSR encoding.
const fn sys_reg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG as u64
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
}

/// The `KVM_*_ONE_REG` id of `reg`, or `None` for a register that does not exist.
pub fn one_reg_id(reg: Reg) -> Option<u64> {
    Some(match reg {
        Reg::X(n) if n <= 30 => core_reg(u64::from(n)),
        Reg::X(_) => return None,
        Reg::Sp => core_reg(31),
        Reg::Pc => core_reg(32),
        Reg::Pstate => core_reg(33),
        // MPIDR_EL1 is op0=3, op1=0, CRn=0, CRm=0, op2=5 (Arm ARM D19.2).
        Reg::Mpidr => sys_reg(3, 0, 0, 0, 5),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_the_kernel_uapi() {
        // Values as the kernel's KVM_REG_ARM_CORE_REG(regs.pc) etc. compute them.
        assert_eq!(one_reg_id(Reg::X(0)), Some(0x6030_0000_0010_0000));
        assert_eq!(one_reg_id(Reg::X(1)), Some(0x6030_0000_0010_0002));
        assert_eq!(one_reg_id(Reg::Sp), Some(0x6030_0000_0010_003e));
        assert_eq!(one_reg_id(Reg::Pc), Some(0x6030_0000_0010_0040));
        assert_eq!(one_reg_id(Reg::Pstate), Some(0x6030_0000_0010_0042));
        assert_eq!(one_reg_id(Reg::Mpidr), Some(0x6030_0000_0013_c005));
        assert_eq!(one_reg_id(Reg::X(31)), None);
    }
}
