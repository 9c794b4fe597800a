//! arm64 facts hvrun needs to start a Linux guest, and the portable policy a backend that traps
//! to userspace (Hypervisor.framework) applies to exits: ESR decoding, PSCI, system registers,
//! WFI and the virtual timer.

pub mod esr;
pub mod features;
pub mod inject;
pub mod power;
pub mod psci;
pub mod sysreg;
pub mod timer;

/// arm64 registers the VMM sets or reads by name (the backends translate them: KVM's
/// `KVM_REG_ARM64` ids, Hypervisor.framework's `hv_reg_t` / `hv_sys_reg_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    /// General-purpose register X0–X30.
    X(u8),
    /// The stack pointer of the current exception level.
    Sp,
    /// The program counter.
    Pc,
    /// PSTATE (CPSR): exception level, stack pointer selection, DAIF masks.
    Pstate,
    /// MPIDR_EL1: the vCPU's affinity, which the FDT `cpu@` nodes must match.
    Mpidr,
}

/// PSTATE at kernel entry: EL1 using SP_EL1 ("EL1h", M[3:0] = 0b0101) with the D, A, I and F
/// exceptions masked — Documentation/arch/arm64/booting.rst §4 ("All forms of interrupts must be
/// masked in PSTATE.DAIF").
pub const PSTATE_EL1H_DAIF_MASKED: u64 = 0x3c5;

/// MPIDR_EL1 of vCPU `index`: Aff0 holds 16 vCPUs, then Aff1, then Aff2 — the layout KVM gives
/// vCPUs by default (arch/arm64/kvm/sys_regs.c, `reset_mpidr`), which the HVF backend sets
/// explicitly so both backends describe the same CPUs in the FDT. Bit 31 is RES1.
pub fn mpidr_for_vcpu(index: u32) -> u64 {
    let index = u64::from(index);
    (1 << 31) | (index & 0x0f) | (((index >> 4) & 0xff) << 8) | (((index >> 12) & 0xff) << 16)
}

/// The registers of the boot vCPU at the kernel's first instruction (booting.rst §4):
/// x0 = physical address of the device tree, x1–x3 = 0 (reserved), PC = the Image's entry.
pub fn boot_registers(kernel_entry: u64, fdt_addr: u64) -> [(Reg, u64); 6] {
    [
        (Reg::X(0), fdt_addr),
        (Reg::X(1), 0),
        (Reg::X(2), 0),
        (Reg::X(3), 0),
        (Reg::Pstate, PSTATE_EL1H_DAIF_MASKED),
        (Reg::Pc, kernel_entry),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpidr_follows_kvm_affinity_layout() {
        assert_eq!(mpidr_for_vcpu(0), 0x8000_0000);
        assert_eq!(mpidr_for_vcpu(1), 0x8000_0001);
        assert_eq!(mpidr_for_vcpu(15), 0x8000_000f);
        assert_eq!(mpidr_for_vcpu(16), 0x8000_0100);
        assert_eq!(mpidr_for_vcpu(122), 0x8000_070a);
    }

    #[test]
    fn boot_registers_follow_the_boot_protocol() {
        let regs = boot_registers(0x4000_0000, 0x5fe0_0000);
        assert!(regs.contains(&(Reg::X(0), 0x5fe0_0000)));
        assert!(regs.contains(&(Reg::Pc, 0x4000_0000)));
        assert!(regs.contains(&(Reg::Pstate, 0x3c5)));
        assert!(regs.contains(&(Reg::X(3), 0)));
    }
}
