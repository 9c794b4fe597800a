//! Delivering a synchronous exception to the guest's EL1, the way the CPU would have taken it
//! (Arm ARM D1.3 "Exception entry", pseudocode `AArch64.TakeException`). Hypervisor.framework
//! has no injection call, so the backend writes the registers itself; this module computes
//! them. Portable and unit-tested.

/// ESR_EL1.IL: the faulting instruction was 32 bits (always, for A64 code).
const ESR_IL: u64 = 1 << 25;
/// PSTATE.M[3:0] for EL1 using SP_EL1.
const MODE_EL1H: u64 = 0b0101;
/// PSTATE.{D,A,I,F}: exception entry masks all four (D1.3.4).
const DAIF: u64 = 0xf << 6;

/// Which exception to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestException {
    /// "Unknown reason" (EC 0x00): what an unimplemented system register access gets.
    Undefined,
    /// A synchronous external data abort at virtual address `far` (EC 0x24/0x25, DFSC 0x10):
    /// what an MMIO access the VMM cannot emulate gets (as KVM's `kvm_inject_dabt`).
    DataAbort { far: u64 },
    /// A synchronous external instruction abort at `far` (EC 0x20/0x21, IFSC 0x10): what
    /// executing from an address without memory gets (as KVM's `kvm_inject_pabt`).
    InstructionAbort { far: u64 },
}

/// The vCPU state the exception is taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FromState {
    /// PSTATE (CPSR) at the faulting instruction.
    pub pstate: u64,
    /// The faulting instruction's address.
    pub pc: u64,
    /// VBAR_EL1.
    pub vbar: u64,
}

/// The registers to write so the guest takes the exception.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injection {
    pub esr_el1: u64,
    /// `Some` for aborts.
    pub far_el1: Option<u64>,
    pub elr_el1: u64,
    pub spsr_el1: u64,
    pub pstate: u64,
    pub pc: u64,
}

/// Computes the register writes that deliver `exception` to EL1 from `from`.
pub fn inject(exception: GuestException, from: FromState) -> Injection {
    let from_el = (from.pstate >> 2) & 0b11;
    let from_lower = from_el == 0;
    // Vector table offsets (D1.3.2, table "Vector offsets from vector table base address"):
    // current EL with SP_EL0 0x000, current EL with SP_ELx 0x200, lower EL AArch64 0x400;
    // "Synchronous" is the first entry of each group.
    let vector = if from_lower {
        0x400
    } else if from.pstate & 1 == 0 {
        0x000
    } else {
        0x200
    };
    let (esr, far) = match exception {
        GuestException::Undefined => (ESR_IL, None),
        GuestException::DataAbort { far } => {
            let ec: u64 = if from_lower { 0x24 } else { 0x25 };
            (ec << 26 | ESR_IL | 0x10, Some(far))
        }
        GuestException::InstructionAbort { far } => {
            let ec: u64 = if from_lower { 0x20 } else { 0x21 };
            (ec << 26 | ESR_IL | 0x10, Some(far))
        }
    };
    Injection {
        esr_el1: esr,
        far_el1: far,
        elr_el1: from.pc,
        spsr_el1: from.pstate,
        pstate: MODE_EL1H | DAIF,
        pc: from.vbar.wrapping_add(vector),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VBAR: u64 = 0xffff_8000_1001_0000;

    #[test]
    fn undef_from_the_kernel_uses_the_current_el_spx_vector() {
        let from = FromState { pstate: 0x3c5, pc: 0xffff_8000_1000_1234, vbar: VBAR };
        let inj = inject(GuestException::Undefined, from);
        assert_eq!(inj.esr_el1, 0x0200_0000);
        assert_eq!(inj.far_el1, None);
        assert_eq!(inj.elr_el1, from.pc);
        assert_eq!(inj.spsr_el1, 0x3c5);
        assert_eq!(inj.pstate, 0x3c5);
        assert_eq!(inj.pc, VBAR + 0x200);
    }

    #[test]
    fn data_abort_from_user_space_uses_the_lower_el_vector() {
        let from = FromState { pstate: 0x0, pc: 0x40_1000, vbar: VBAR };
        let inj = inject(GuestException::DataAbort { far: 0xdead_b000 }, from);
        assert_eq!(inj.esr_el1, 0x9200_0010);
        assert_eq!(inj.far_el1, Some(0xdead_b000));
        assert_eq!(inj.pc, VBAR + 0x400);
        assert_eq!(inj.spsr_el1, 0);
    }

    #[test]
    fn instruction_abort_from_the_kernel() {
        let from = FromState { pstate: 0x3c5, pc: 0x7000_0000, vbar: VBAR };
        let inj = inject(GuestException::InstructionAbort { far: 0x7000_0000 }, from);
        assert_eq!(inj.esr_el1, 0x8600_0010);
        assert_eq!(inj.far_el1, Some(0x7000_0000));
        assert_eq!(inj.pc, VBAR + 0x200);
    }

    #[test]
    fn data_abort_from_el1_on_sp_el0_is_a_same_el_abort() {
        let from = FromState { pstate: 0x3c4, pc: 0x1000, vbar: VBAR };
        let inj = inject(GuestException::DataAbort { far: 0x0a00_0000 }, from);
        assert_eq!(inj.esr_el1 >> 26, 0x25);
        assert_eq!(inj.pc, VBAR);
    }
}
