//! Power state of each vCPU (PSCI's Off / OnPending / On), shared by a VM's vCPU threads, and
//! the "start mailbox" a powered-off vCPU's thread waits on until a CPU_ON or a kick arrives.
//!
//! The backend creates every vCPU on its own thread at VM start (Hypervisor.framework requires
//! the thread that runs a vCPU to create it). vCPU 0 is On; the others call
//! [`VcpuPowerStates::wait_for_start`] before their first run and after CPU_OFF.

use std::sync::{Condvar, Mutex, MutexGuard};

use super::psci::{ret, CpuOnRequest, PowerStateView, MPIDR_AFFINITY_MASK};
use super::Reg;

pub use super::psci::PowerState;

/// Where and how a vCPU starts after CPU_ON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuStart {
    /// The entry point (PC).
    pub entry: u64,
    /// The value of x0 at the entry point.
    pub context_id: u64,
}

/// SCTLR_EL1 with only its RES1 bits set: MMU and caches off, as PSCI CPU_ON requires of the
/// entry state (DEN0022 §6.4). Bits 29, 28, 23, 22, 20 and 11 are RES1 (Arm ARM D24.2.163).
pub const SCTLR_EL1_CPU_ON: u64 = 0x30d0_0800;

/// SCTLR_ELx bits CPU_ON turns off: M (stage 1 MMU, bit 0), A (alignment checks, 1), C (data
/// cache, 2), I (instruction cache, 12) and WXN (19). DEN0022 §6.4 wants the MMU and data
/// cache off at the entry point (the instruction cache may be either).
const SCTLR_CPU_ON_CLEAR: u64 = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 12) | (1 << 19);

/// SCTLR_EL2 for a vCPU started by CPU_ON at EL2 (`--nested`), from its current value: the
/// MMU and caches off, every other bit kept. Read-modify-write rather than a fixed reset value
/// because SCTLR_EL2's layout (and its RES1 bits) depends on HCR_EL2.E2H, which Apple's cores
/// fix at 1 (m1n1 runs macOS with "VHE mode (forced)"), while the architecture's non-VHE value
/// would set bits that are RES0 then. Without this, a vCPU restarted after CPU_OFF would enter
/// a physical address with its old MMU on.
pub fn sctlr_el2_for_cpu_on(current: u64) -> u64 {
    current & !SCTLR_CPU_ON_CLEAR
}

impl CpuStart {
    /// The registers to set before the first run after CPU_ON (DEN0022 §6.4: EL1, x0 = context
    /// id, interrupts masked). The backend also resets the system registers of the entry EL
    /// ([`SCTLR_EL1_CPU_ON`], and [`sctlr_el2_for_cpu_on`] for a guest with EL2) if the vCPU ran
    /// before.
    pub fn registers(&self) -> [(Reg, u64); 3] {
        [
            (Reg::X(0), self.context_id),
            (Reg::Pstate, super::PSTATE_EL1H_DAIF_MASKED),
            (Reg::Pc, self.entry),
        ]
    }
}

/// Why [`VcpuPowerStates::wait_for_start`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerWait {
    /// CPU_ON: set [`CpuStart::registers`], call [`VcpuPowerStates::running`], run the guest.
    Start(CpuStart),
    /// [`VcpuPowerStates::kick`]: the VMM wants the thread to look at its stop flag. The vCPU
    /// is still Off; wait again if the VM goes on.
    Kicked,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    state: PowerState,
    start: Option<CpuStart>,
    kicked: bool,
}

/// The power states of all vCPUs of one VM. Share it between vCPU threads with an `Arc`.
pub struct VcpuPowerStates {
    mpidrs: Vec<u64>,
    slots: Mutex<Vec<Slot>>,
    changed: Condvar,
}

impl VcpuPowerStates {
    /// One slot per vCPU, indexed like `mpidrs`. vCPU 0 (the boot CPU) starts On, the rest Off.
    pub fn new(mpidrs: Vec<u64>) -> Self {
        let slots = (0..mpidrs.len())
            .map(|i| Slot {
                state: if i == 0 { PowerState::On } else { PowerState::Off },
                start: None,
                kicked: false,
            })
            .collect();
        VcpuPowerStates { mpidrs, slots: Mutex::new(slots), changed: Condvar::new() }
    }

    /// Number of vCPUs.
    pub fn len(&self) -> usize {
        self.mpidrs.len()
    }

    /// Whether the VM has no vCPUs.
    pub fn is_empty(&self) -> bool {
        self.mpidrs.is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        // A panicking vCPU thread must not take the others down with a poisoned lock.
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts `request.target` (PSCI CPU_ON) and returns the caller's x0: SUCCESS, or
    /// ALREADY_ON / ON_PENDING if another vCPU got there first, or INVALID_PARAMETERS for an
    /// index that does not exist. Checked and changed under one lock, so of two racing CPU_ONs
    /// exactly one succeeds.
    pub fn cpu_on(&self, request: &CpuOnRequest) -> u64 {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(request.target as usize) else {
            return ret::INVALID_PARAMETERS;
        };
        match slot.state {
            PowerState::On => ret::ALREADY_ON,
            PowerState::OnPending => ret::ON_PENDING,
            PowerState::Off => {
                slot.state = PowerState::OnPending;
                slot.start =
                    Some(CpuStart { entry: request.entry, context_id: request.context_id });
                self.changed.notify_all();
                ret::SUCCESS
            }
        }
    }

    /// Blocks the thread of vCPU `index` while it is Off, until CPU_ON or a kick. Returns at
    /// once if a start or kick is already waiting (nothing is lost between the caller's checks
    /// and this call). An index that does not exist reports [`PowerWait::Kicked`].
    pub fn wait_for_start(&self, index: u32) -> PowerWait {
        let mut slots = self.lock();
        loop {
            let Some(slot) = slots.get_mut(index as usize) else {
                return PowerWait::Kicked;
            };
            if let Some(start) = slot.start.take() {
                return PowerWait::Start(start);
            }
            if std::mem::take(&mut slot.kicked) {
                return PowerWait::Kicked;
            }
            slots = self.changed.wait(slots).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// vCPU `index` has loaded its start registers and enters the guest: OnPending → On.
    pub fn running(&self, index: u32) {
        if let Some(slot) = self.lock().get_mut(index as usize) {
            slot.state = PowerState::On;
        }
    }

    /// vCPU `index` called CPU_OFF: it becomes Off (and may be started again).
    pub fn cpu_off(&self, index: u32) {
        if let Some(slot) = self.lock().get_mut(index as usize) {
            slot.state = PowerState::Off;
            slot.start = None;
        }
    }

    /// Wakes vCPU `index` if it waits in [`Self::wait_for_start`], or makes its next wait return
    /// at once. The backend's kicker calls this besides interrupting a running vCPU, so a stop
    /// request reaches powered-off vCPUs too.
    pub fn kick(&self, index: u32) {
        if let Some(slot) = self.lock().get_mut(index as usize) {
            slot.kicked = true;
            self.changed.notify_all();
        }
    }

    /// Current state of vCPU `index` (Off for an index that does not exist).
    pub fn state(&self, index: u32) -> PowerState {
        self.lock().get(index as usize).map_or(PowerState::Off, |s| s.state)
    }
}

impl PowerStateView for VcpuPowerStates {
    fn vcpu_for_mpidr(&self, mpidr: u64) -> Option<u32> {
        let want = mpidr & MPIDR_AFFINITY_MASK;
        let at = self.mpidrs.iter().position(|&m| m & MPIDR_AFFINITY_MASK == want)?;
        u32::try_from(at).ok()
    }

    fn power_state(&self, index: u32) -> PowerState {
        self.state(index)
    }
}

#[cfg(test)]
#[path = "power_tests.rs"]
mod tests;
