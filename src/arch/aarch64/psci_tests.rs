//! Table tests for the PSCI/SMCCC decision and the HVC/SMC PC rule.

use super::*;
use function::*;
use PowerState::{Off, On, OnPending};

/// Three vCPUs with hvrun's MPIDRs (bit 31 set): 0 On, 1 Off, 2 OnPending.
const VCPUS: [(u64, PowerState); 3] =
    [(0x8000_0000, On), (0x8000_0001, Off), (0x8000_0002, OnPending)];

fn call(x0: u64, x1: u64, x2: u64, x3: u64) -> PsciAction {
    handle_call(&SmcccCall::new(0, x0, x1, x2, x3), &VCPUS[..])
}

#[test]
fn versions_and_discovery() {
    let r = |v| PsciAction::Return(v);
    let table = [
        (PSCI_VERSION, 0, r(0x1_0001)),
        (MIGRATE_INFO_TYPE, 0, r(2)),
        (SMCCC_VERSION, 0, r(0x1_0001)),
        (SMCCC_ARCH_FEATURES, 0x8000_8000, r(ret::NOT_SUPPORTED)), // ARCH_WORKAROUND_1
        (PSCI_FEATURES, u64::from(CPU_ON_64), r(ret::SUCCESS)),
        (PSCI_FEATURES, u64::from(CPU_ON_32), r(ret::SUCCESS)),
        (PSCI_FEATURES, u64::from(CPU_SUSPEND_64), r(ret::SUCCESS)),
        (PSCI_FEATURES, u64::from(AFFINITY_INFO_64), r(ret::SUCCESS)),
        (PSCI_FEATURES, u64::from(SYSTEM_RESET), r(ret::SUCCESS)),
        (PSCI_FEATURES, u64::from(PSCI_FEATURES), r(ret::SUCCESS)),
        (PSCI_FEATURES, u64::from(SMCCC_VERSION), r(ret::SUCCESS)),
        (PSCI_FEATURES, u64::from(MIGRATE_64), r(ret::NOT_SUPPORTED)),
        (PSCI_FEATURES, 0x8400_0012, r(ret::NOT_SUPPORTED)), // SYSTEM_RESET2
        (PSCI_FEATURES, 0xdead_beef, r(ret::NOT_SUPPORTED)),
        (MIGRATE_32, 1, r(ret::NOT_SUPPORTED)),
        (MIGRATE_INFO_UP_CPU_64, 0, r(ret::NOT_SUPPORTED)),
        (0x8400_0012, 0, r(ret::NOT_SUPPORTED)), // SYSTEM_RESET2
        (0x8600_0000, 0, r(ret::NOT_SUPPORTED)), // KVM vendor hypervisor services
        (0x0000_0000, 0, r(ret::NOT_SUPPORTED)), // a yielding call
        (0xffff_ffff, 0, r(ret::NOT_SUPPORTED)),
    ];
    for (fid, x1, want) in table {
        assert_eq!(call(u64::from(fid), x1, 0, 0), want, "function {fid:#x}");
    }
    assert_eq!(ret::NOT_SUPPORTED, 0xffff_ffff_ffff_ffff);
    assert_eq!(ret::INVALID_PARAMETERS, 0xffff_ffff_ffff_fffe);
}

#[test]
fn only_w0_is_the_function_id() {
    // DEN0028 §2.5: bits [63:32] of x0 are ignored.
    assert_eq!(call(0xffff_ffff_8400_0000, 0, 0, 0), PsciAction::Return(PSCI_VERSION_1_1));
}

#[test]
fn non_zero_immediate_is_not_smccc() {
    let c = SmcccCall::new(0x1234, u64::from(SYSTEM_OFF), 0, 0, 0);
    assert_eq!(handle_call(&c, &VCPUS[..]), PsciAction::Return(ret::NOT_SUPPORTED));
    // The ISS holds the immediate in [15:0]; other ISS bits do not matter.
    let c = SmcccCall::new(0x1ff_0000, u64::from(SYSTEM_OFF), 0, 0, 0);
    assert_eq!(handle_call(&c, &VCPUS[..]), PsciAction::SystemOff);
}

#[test]
fn power_calls() {
    assert_eq!(call(u64::from(SYSTEM_OFF), 0, 0, 0), PsciAction::SystemOff);
    assert_eq!(call(u64::from(SYSTEM_RESET), 0, 0, 0), PsciAction::SystemReset);
    assert_eq!(call(u64::from(CPU_OFF), 0, 0, 0), PsciAction::CpuOff);
    assert_eq!(call(u64::from(CPU_SUSPEND_32), 0, 0, 0), PsciAction::Suspend);
    assert_eq!(call(u64::from(CPU_SUSPEND_64), 0x1_0000, 0x4000_0000, 0), PsciAction::Suspend);
}

#[test]
fn cpu_on_validates_the_target() {
    let on = |fid: u32, mpidr| call(u64::from(fid), mpidr, 0x4008_0000, 0xc0ff_ee00_1234_5678);
    for fid in [CPU_ON_64, CPU_ON_32] {
        assert_eq!(on(fid, 0x8000_0000), PsciAction::Return(ret::ALREADY_ON), "self / running");
        assert_eq!(on(fid, 0x8000_0002), PsciAction::Return(ret::ON_PENDING));
        assert_eq!(on(fid, 0x8000_0003), PsciAction::Return(ret::INVALID_PARAMETERS));
        assert_eq!(on(fid, 0x100), PsciAction::Return(ret::INVALID_PARAMETERS), "Aff1 = 1");
    }
    // Linux passes the hwid without bit 31; both spellings name vCPU 1.
    for mpidr in [0x1, 0x8000_0001] {
        assert_eq!(
            on(CPU_ON_64, mpidr),
            PsciAction::CpuOn(CpuOnRequest {
                target: 1,
                target_mpidr: mpidr,
                entry: 0x4008_0000,
                context_id: 0xc0ff_ee00_1234_5678,
            })
        );
    }
    // SMC32: 32-bit arguments; the upper halves of x1..x3 are not part of the call.
    assert_eq!(
        call(
            u64::from(CPU_ON_32),
            0xffff_ffff_0000_0001,
            0xffff_ffff_4008_0000,
            0xaaaa_bbbb_cccc_dddd
        ),
        PsciAction::CpuOn(CpuOnRequest {
            target: 1,
            target_mpidr: 1,
            entry: 0x4008_0000,
            context_id: 0xcccc_dddd,
        })
    );
}

#[test]
fn affinity_info_reports_each_state() {
    for fid in [AFFINITY_INFO_64, AFFINITY_INFO_32] {
        let info = |mpidr, level| call(u64::from(fid), mpidr, level, 0);
        assert_eq!(info(0x8000_0000, 0), PsciAction::Return(affinity::ON));
        assert_eq!(info(0x1, 0), PsciAction::Return(affinity::OFF));
        assert_eq!(info(0x2, 0), PsciAction::Return(affinity::ON_PENDING));
        assert_eq!(info(0x7, 0), PsciAction::Return(ret::INVALID_PARAMETERS));
        for level in [1, 2, 3, 0x100] {
            assert_eq!(info(0x0, level), PsciAction::Return(ret::INVALID_PARAMETERS));
        }
    }
}

#[test]
fn empty_vm_never_panics() {
    let none: &[(u64, PowerState)] = &[];
    for fid in [CPU_ON_64, AFFINITY_INFO_64, CPU_OFF, PSCI_FEATURES] {
        let c = SmcccCall::new(0, u64::from(fid), 0, 0, 0);
        let _ = handle_call(&c, none);
    }
    assert_eq!(none.power_state(7), Off);
}

#[test]
fn hvc_pc_is_already_advanced_smc_pc_is_not() {
    assert_eq!(pc_after_call(PsciConduit::Hvc, 0x4000_0104), 0x4000_0104);
    assert_eq!(pc_after_call(PsciConduit::Smc, 0x4000_0100), 0x4000_0104);
    assert_eq!(pc_after_call(PsciConduit::Smc, u64::MAX - 3), 0, "wraps, never panics");
}

#[test]
fn the_kvm_conformance_sequence() {
    // tests/conformance/psci.rs makes these calls on KVM; here they go through hvrun's own
    // policy, as on Hypervisor.framework. Comments mark where KVM (Linux 6.1) answers otherwise.
    use crate::arch::aarch64::power::{CpuStart, PowerWait, VcpuPowerStates};
    let states = VcpuPowerStates::new(vec![0x8000_0000, 0x8000_0001]);
    let call = |x0: u32, x1: u64, x2: u64, x3: u64| {
        handle_call(&SmcccCall::new(0, u64::from(x0), x1, x2, x3), &states)
    };
    let (entry, context_id) = (0x4000_0080, 0x0123_4567_89ab_cdef);
    let ret = |v| PsciAction::Return(v);

    assert_eq!(call(PSCI_VERSION, 0, 0, 0), ret(PSCI_VERSION_1_1)); // KVM 6.1: 1.1 too
    assert_eq!(call(AFFINITY_INFO_64, 1, 0, 0), ret(affinity::OFF));
    // KVM: INVALID_PARAMETERS, bit 31 is outside its MPIDR_HWID_BITMASK.
    assert_eq!(call(AFFINITY_INFO_64, 0x8000_0001, 0, 0), ret(affinity::OFF));
    let PsciAction::CpuOn(request) = call(CPU_ON_64, 1, entry, context_id) else {
        panic!("CPU_ON of an Off vCPU must start it");
    };
    assert_eq!(states.cpu_on(&request), ret::SUCCESS);
    // KVM: ON at once; here ON_PENDING until the target's thread has loaded its registers.
    assert_eq!(call(AFFINITY_INFO_64, 1, 0, 0), ret(affinity::ON_PENDING));
    assert_eq!(states.wait_for_start(1), PowerWait::Start(CpuStart { entry, context_id }));
    states.running(1);
    assert_eq!(call(AFFINITY_INFO_64, 1, 0, 0), ret(affinity::ON));
    // KVM: ON (it implements affinity levels 1-3); here level 0 only.
    assert_eq!(call(AFFINITY_INFO_64, 0, 1, 0), ret(ret::INVALID_PARAMETERS));
    assert_eq!(call(CPU_ON_64, 1, entry, context_id), ret(ret::ALREADY_ON));
    assert_eq!(call(SYSTEM_OFF, 0, 0, 0), PsciAction::SystemOff);
}
