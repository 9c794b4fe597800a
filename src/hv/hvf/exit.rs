//! Turning a raw `hv_vcpu_exit_t` into what the backend must do next. A pure function over the
//! exit record, so every translation is unit-tested with synthetic exits on any host; the macOS
//! run loop (`vcpu.rs`) only carries the plan out.

use hv_sys::*;

use crate::arch::aarch64::esr::{
    wait_kind, DataAbortIss, Esr, ExceptionClass, MmioDecision, WaitKind,
};
use crate::arch::aarch64::inject::GuestException;

/// What one exit asks of the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitPlan {
    /// `hv_vcpus_exit` (a kick): return `VmExit::Kicked`.
    Canceled,
    /// The virtual timer fired and the framework masked it: raise its interrupt.
    VtimerActivated,
    /// A data abort on an address no memory backs, at guest physical address `ipa`.
    Mmio { ipa: u64, decision: MmioDecision },
    /// An HVC (`smc: false`) or SMC: a PSCI or other SMCCC call. `imm` is the instruction's
    /// 16-bit immediate (ISS[15:0]); SMCCC calls use 0.
    Hypercall { smc: bool, imm: u16 },
    /// A trapped MSR/MRS; the ISS says which register and direction.
    SysReg { iss: u32 },
    /// WFI or WFE.
    Wait(WaitKind),
    /// Something the guest did that hvrun cannot emulate: deliver this exception to it (the
    /// VM keeps running), logging `what` (with the syndrome) once.
    Inject { exception: GuestException, what: &'static str, esr: u64 },
    /// An exit the framework should never produce: stop the VM with this description.
    Unhandled { reason: &'static str, detail: u64 },
}

/// Decides what `exit` asks for.
pub fn plan(exit: &hv_vcpu_exit_t) -> ExitPlan {
    match exit.reason {
        HV_EXIT_REASON_CANCELED => return ExitPlan::Canceled,
        HV_EXIT_REASON_VTIMER_ACTIVATED => return ExitPlan::VtimerActivated,
        HV_EXIT_REASON_EXCEPTION => {}
        HV_EXIT_REASON_UNKNOWN => {
            return ExitPlan::Unhandled { reason: "HVF exit reason UNKNOWN", detail: 3 }
        }
        other => {
            return ExitPlan::Unhandled { reason: "HVF exit reason", detail: u64::from(other) }
        }
    }
    let esr = Esr(exit.exception.syndrome);
    match esr.class() {
        ExceptionClass::DataAbortLowerEl => ExitPlan::Mmio {
            ipa: exit.exception.physical_address,
            decision: DataAbortIss::decode(esr.iss()).mmio_decision(),
        },
        ExceptionClass::Hvc64 => ExitPlan::Hypercall { smc: false, imm: esr.iss() as u16 },
        ExceptionClass::Smc64 => ExitPlan::Hypercall { smc: true, imm: esr.iss() as u16 },
        ExceptionClass::SysReg => ExitPlan::SysReg { iss: esr.iss() },
        ExceptionClass::WfiWfe => ExitPlan::Wait(wait_kind(esr.iss())),
        // As KVM does for an instruction fetch outside every memslot (kvm_inject_pabt).
        ExceptionClass::InstructionAbortLowerEl => ExitPlan::Inject {
            exception: GuestException::InstructionAbort { far: exit.exception.virtual_address },
            what: "instruction fetch from an address without memory",
            esr: esr.0,
        },
        // Other traps the guest can cause but hvrun does not emulate: UNDEF, as the
        // architecture does for an unimplemented instruction.
        ExceptionClass::Unknown(_) => ExitPlan::Inject {
            exception: GuestException::Undefined,
            what: "exception class hvrun does not emulate",
            esr: esr.0,
        },
        // BRK traps only with debug exceptions routed to the host, which hvrun never asks for.
        ExceptionClass::Brk64 => {
            ExitPlan::Unhandled { reason: "HVF exception (ESR_EL2)", detail: esr.0 }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::aarch64::esr::MmioAccess;

    fn exception(syndrome: u64, ipa: u64) -> hv_vcpu_exit_t {
        hv_vcpu_exit_t {
            reason: HV_EXIT_REASON_EXCEPTION,
            exception: hv_vcpu_exit_exception_t {
                syndrome,
                virtual_address: 0,
                physical_address: ipa,
            },
        }
    }

    fn reason(reason: u32) -> hv_vcpu_exit_t {
        hv_vcpu_exit_t { reason, ..Default::default() }
    }

    #[test]
    fn reasons_other_than_exceptions() {
        assert_eq!(plan(&reason(HV_EXIT_REASON_CANCELED)), ExitPlan::Canceled);
        assert_eq!(plan(&reason(HV_EXIT_REASON_VTIMER_ACTIVATED)), ExitPlan::VtimerActivated);
        assert!(matches!(plan(&reason(HV_EXIT_REASON_UNKNOWN)), ExitPlan::Unhandled { .. }));
        assert_eq!(plan(&reason(7)), ExitPlan::Unhandled { reason: "HVF exit reason", detail: 7 });
    }

    #[test]
    fn a_32_bit_store_to_the_uart_is_mmio() {
        // EC 0x24, IL, ISV, SAS=2 (4 bytes), SRT=1, WnR: `str w1, [x0]`.
        let esr = (0x24 << 26) | (1 << 25) | (1 << 24) | (2 << 22) | (1 << 16) | (1 << 6);
        let plan = plan(&exception(esr, 0x0900_0000));
        let access =
            MmioAccess { size: 4, write: true, reg: 1, sign_extend: false, sixty_four: false };
        assert_eq!(
            plan,
            ExitPlan::Mmio { ipa: 0x0900_0000, decision: MmioDecision::Access(access) }
        );
    }

    #[test]
    fn a_load_pair_to_mmio_has_no_syndrome() {
        // ISV = 0: LDP and friends.
        let esr = (0x24 << 26) | (1 << 25);
        assert_eq!(
            plan(&exception(esr, 0x0a00_0000)),
            ExitPlan::Mmio { ipa: 0x0a00_0000, decision: MmioDecision::NoValidSyndrome }
        );
    }

    #[test]
    fn hypercalls_sysregs_and_waits() {
        let hvc0 = (0x16 << 26) | (1 << 25);
        assert_eq!(plan(&exception(hvc0, 0)), ExitPlan::Hypercall { smc: false, imm: 0 });
        let smc1 = (0x17 << 26) | (1 << 25) | 1;
        assert_eq!(plan(&exception(smc1, 0)), ExitPlan::Hypercall { smc: true, imm: 1 });
        let msr = (0x18 << 26) | (1 << 25) | 0x30_c001;
        assert_eq!(plan(&exception(msr, 0)), ExitPlan::SysReg { iss: 0x30_c001 });
        let wfi = (0x01 << 26) | (1 << 25);
        assert_eq!(plan(&exception(wfi, 0)), ExitPlan::Wait(WaitKind::Wfi));
        let wfe = wfi | 1;
        assert_eq!(plan(&exception(wfe, 0)), ExitPlan::Wait(WaitKind::Wfe));
    }

    #[test]
    fn guest_mistakes_get_an_exception_not_a_dead_vm() {
        let iabt = (0x20 << 26) | (1 << 25);
        let mut exit = exception(iabt, 0x1234_0000);
        exit.exception.virtual_address = 0xffff_0000_1234_0000;
        assert!(matches!(
            plan(&exit),
            ExitPlan::Inject {
                exception: GuestException::InstructionAbort { far: 0xffff_0000_1234_0000 },
                ..
            }
        ));
        let sve = (0x19 << 26) | (1 << 25);
        assert!(matches!(
            plan(&exception(sve, 0)),
            ExitPlan::Inject { exception: GuestException::Undefined, esr, .. } if esr == sve
        ));
    }

    #[test]
    fn a_brk_stops_the_vm_with_its_syndrome() {
        let brk = (0x3c << 26) | (1 << 25);
        assert_eq!(
            plan(&exception(brk, 0)),
            ExitPlan::Unhandled { reason: "HVF exception (ESR_EL2)", detail: brk }
        );
    }
}
