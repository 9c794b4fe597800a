//! Tests of the shared vCPU power states and the start mailbox, with real threads.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::*;
use crate::arch::aarch64::psci::{handle_call, PsciAction, SmcccCall};

fn states(n: u32) -> Arc<VcpuPowerStates> {
    Arc::new(VcpuPowerStates::new((0..n).map(crate::arch::aarch64::mpidr_for_vcpu).collect()))
}

fn request(target: u32) -> CpuOnRequest {
    CpuOnRequest { target, target_mpidr: u64::from(target), entry: 0x4010_0000, context_id: 42 }
}

#[test]
fn boot_cpu_is_on_the_rest_off() {
    let s = states(3);
    assert_eq!(s.len(), 3);
    assert_eq!(
        [s.state(0), s.state(1), s.state(2)],
        [PowerState::On, PowerState::Off, PowerState::Off]
    );
    assert_eq!(s.state(99), PowerState::Off);
    assert_eq!(s.vcpu_for_mpidr(0x8000_0002), Some(2));
    assert_eq!(s.vcpu_for_mpidr(2), Some(2));
    assert_eq!(s.vcpu_for_mpidr(3), None);
}

#[test]
fn cpu_on_wakes_the_waiting_thread_with_its_start() {
    let s = states(2);
    let waiter = {
        let s = Arc::clone(&s);
        thread::spawn(move || {
            let got = s.wait_for_start(1);
            s.running(1);
            got
        })
    };
    thread::sleep(Duration::from_millis(20));
    assert_eq!(s.cpu_on(&request(1)), ret::SUCCESS);
    let got = waiter.join().unwrap();
    assert_eq!(got, PowerWait::Start(CpuStart { entry: 0x4010_0000, context_id: 42 }));
    assert_eq!(s.state(1), PowerState::On);
    assert_eq!(s.cpu_on(&request(1)), ret::ALREADY_ON);
}

#[test]
fn a_start_posted_before_the_wait_is_not_lost() {
    let s = states(2);
    assert_eq!(s.cpu_on(&request(1)), ret::SUCCESS);
    assert_eq!(s.state(1), PowerState::OnPending);
    assert_eq!(s.cpu_on(&request(1)), ret::ON_PENDING);
    assert!(matches!(s.wait_for_start(1), PowerWait::Start(_)));
}

#[test]
fn kick_wakes_an_off_vcpu_without_starting_it() {
    let s = states(2);
    let waiter = {
        let s = Arc::clone(&s);
        thread::spawn(move || s.wait_for_start(1))
    };
    thread::sleep(Duration::from_millis(20));
    s.kick(1);
    assert_eq!(waiter.join().unwrap(), PowerWait::Kicked);
    assert_eq!(s.state(1), PowerState::Off);
    // A kick is consumed once.
    s.kick(1);
    assert_eq!(s.wait_for_start(1), PowerWait::Kicked);
    assert_eq!(s.cpu_on(&request(1)), ret::SUCCESS);
    assert!(matches!(s.wait_for_start(1), PowerWait::Start(_)));
}

#[test]
fn racing_cpu_ons_start_the_target_once() {
    let s = states(2);
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let s = Arc::clone(&s);
            thread::spawn(move || s.cpu_on(&request(1)))
        })
        .collect();
    let results: Vec<u64> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|&&r| r == ret::SUCCESS).count(), 1, "{results:x?}");
    assert!(results.iter().all(|&r| r == ret::SUCCESS || r == ret::ON_PENDING));
}

#[test]
fn cpu_off_then_on_again() {
    let s = states(2);
    assert_eq!(s.cpu_on(&request(1)), ret::SUCCESS);
    assert!(matches!(s.wait_for_start(1), PowerWait::Start(_)));
    s.running(1);
    s.cpu_off(1);
    assert_eq!(s.state(1), PowerState::Off);
    assert_eq!(s.cpu_on(&request(1)), ret::SUCCESS);
}

#[test]
fn psci_decision_through_the_shared_states() {
    let s = states(2);
    let c = SmcccCall::new(0, 0xc400_0003, 0x1, 0x4020_0000, 7);
    let PsciAction::CpuOn(req) = handle_call(&c, &*s) else { panic!("CPU_ON refused") };
    assert_eq!(s.cpu_on(&req), ret::SUCCESS);
    assert_eq!(handle_call(&c, &*s), PsciAction::Return(ret::ON_PENDING));
    let start = s.wait_for_start(1);
    let PowerWait::Start(start) = start else { panic!("{start:?}") };
    assert_eq!(start.registers(), [(Reg::X(0), 7), (Reg::Pstate, 0x3c5), (Reg::Pc, 0x4020_0000)]);
}

#[test]
fn unknown_indices_never_panic() {
    let s = states(1);
    assert_eq!(s.cpu_on(&request(5)), ret::INVALID_PARAMETERS);
    assert_eq!(s.wait_for_start(5), PowerWait::Kicked);
    s.kick(5);
    s.running(5);
    s.cpu_off(5);
}

/// Finding 9 of reviews/hvf-review.md: a CPU_ON at EL2 turns the EL2 MMU and caches off.
#[test]
fn cpu_on_at_el2_turns_the_mmu_and_caches_off() {
    // A VHE kernel's SCTLR_EL2 (EL1 layout: RES1 0x30d00800) with M, C, I, SA, WXN, EE set.
    let running = 0x30d0_0800 | 1 | (1 << 2) | (1 << 3) | (1 << 12) | (1 << 19) | (1 << 25);
    let started = sctlr_el2_for_cpu_on(running);
    assert_eq!(started, 0x30d0_0800 | (1 << 3) | (1 << 25), "SA and EE kept");
    assert_eq!(started & 0b101, 0, "MMU and data cache off");
    // The non-VHE layout's RES1 bits (0x30c50830) survive as they are.
    assert_eq!(sctlr_el2_for_cpu_on(0x30c5_0830 | 1), 0x30c5_0830);
    assert_eq!(sctlr_el2_for_cpu_on(0), 0, "never sets a bit");
    assert_eq!(SCTLR_EL1_CPU_ON & 0b101, 0);
}
