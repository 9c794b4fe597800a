//! A Hypervisor.framework vCPU: created on, and owned by, the thread that runs it. `run`
//! completes the previous MMIO load, waits while the vCPU is powered off, enters the guest and
//! carries out the plan `exit::plan` made of the exit.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use hv_sys::*;

use super::errors::check;
use super::exit::{plan, ExitPlan};
use super::gic::{vtimer_activation, GicBackend, VtimerActivation};
use super::kick::Doorbell;
use super::regs::{entry_pstate, exception_regs, hv_reg, hv_sys_reg, HvReg};
use super::shared::VmShared;
use crate::arch::aarch64::esr::{MmioAccess, MmioDecision, WaitKind};
use crate::arch::aarch64::features::{guest_mmfr0, guest_pfr0, guest_pfr1};
use crate::arch::aarch64::inject::{
    current_el, inject, target_el, FromState, GuestException, TargetState,
};
use crate::arch::aarch64::mpidr_for_vcpu;
use crate::arch::aarch64::power::{sctlr_el2_for_cpu_on, PowerWait, SCTLR_EL1_CPU_ON};
use crate::arch::aarch64::psci::{handle_call, pc_after_call, ret, PsciAction, SmcccCall};
use crate::arch::aarch64::sysreg::{
    emulate, ForwardedAccess, ForwardedOp, SysRegAccess, SysRegContext, SysRegOutcome,
};
use crate::arch::aarch64::timer::{
    vtimer_should_unmask, wfi_decision, WfiDecision, WfiInputs, IMPLAUSIBLE_TIMER_WAIT,
};
use crate::hv::{HandledExit, HvError, Kicker, Reg, Result, SystemEvent, Vcpu, VmEntry, VmExit};
use boot::layout;
use boot::PsciConduit;
use devices::gic_v3::VTIMER_PPI;

/// The longest a WFI sleeps in hvrun when the in-kernel GIC may have an SGI for the vCPU that
/// hvrun cannot see arrive.
const IN_KERNEL_GIC_WFI_LIMIT: std::time::Duration = std::time::Duration::from_millis(1);

/// One vCPU, owned by its thread.
pub struct HvfVcpu {
    id: hv_vcpu_t,
    /// The framework's exit record for this vCPU, rewritten by every `hv_vcpu_run`.
    exit: *const hv_vcpu_exit_t,
    index: u32,
    vm: Arc<VmShared>,
    doorbell: Arc<Doorbell>,
    /// The MMIO load the last exit returned, completed by the next `run`.
    pending_load: Option<MmioAccess>,
    /// The framework masked the vtimer on VTIMER_ACTIVATED and the userspace GIC's timer PPI
    /// is up; lower it and unmask once the timer's line is low.
    vtimer_masked: bool,
    /// PSCI state: off until CPU_ON (vCPU 0 starts on).
    powered_on: bool,
}

impl HvfVcpu {
    pub(super) fn create(vm: Arc<VmShared>, index: u32) -> Result<Self> {
        let doorbell = vm
            .doorbells
            .get(index)
            .cloned()
            .ok_or_else(|| invalid(&format!("vCPU {index} beyond the VM's vCPU count")))?;
        let mut id: hv_vcpu_t = 0;
        let mut exit: *const hv_vcpu_exit_t = std::ptr::null();
        // SAFETY: both out-pointers are valid; a null configuration selects the defaults. The
        // vCPU belongs to this thread from now on.
        let ret = unsafe { hv_vcpu_create(&mut id, &mut exit, std::ptr::null_mut()) };
        check(ret, "hv_vcpu_create")?;
        let vcpu = HvfVcpu {
            id,
            exit,
            index,
            powered_on: index == 0,
            vm,
            doorbell,
            pending_load: None,
            vtimer_masked: false,
        };
        vcpu.set_sys(HV_SYS_REG_MPIDR_EL1, mpidr_for_vcpu(index))?;
        // SAFETY: this thread owns the vCPU.
        let ret = unsafe { hv_vcpu_set_vtimer_offset(id, vcpu.vm.vtimer_offset) };
        check(ret, "hv_vcpu_set_vtimer_offset")?;
        // Advertise the GICv3 CPU interface (and EL2 with --nested): Apple cores report neither.
        let pfr0 = vcpu.get_sys(HV_SYS_REG_ID_AA64PFR0_EL1)?;
        vcpu.set_sys(HV_SYS_REG_ID_AA64PFR0_EL1, guest_pfr0(pfr0, vcpu.vm.el2))?;
        // Tell the guest the VM's address width, not the host's (PARange).
        let mmfr0 = vcpu.get_sys(HV_SYS_REG_ID_AA64MMFR0_EL1)?;
        vcpu.set_sys(HV_SYS_REG_ID_AA64MMFR0_EL1, guest_mmfr0(mmfr0, vcpu.vm.ipa_bits))?;
        // Hide SME from nested guests (features::guest_pfr1).
        let pfr1 = vcpu.get_sys(HV_SYS_REG_ID_AA64PFR1_EL1)?;
        vcpu.set_sys(HV_SYS_REG_ID_AA64PFR1_EL1, guest_pfr1(pfr1, vcpu.vm.el2))?;
        vcpu.check_redistributor();
        vcpu.doorbell.attach(id);
        Ok(vcpu)
    }

    /// Warns if the framework put this vCPU's redistributor elsewhere than the device tree says.
    fn check_redistributor(&self) {
        let GicBackend::InKernel(api) = self.vm.gic else { return };
        let mut base = 0;
        // SAFETY: this thread owns the vCPU, whose MPIDR is set; writes one u64.
        let ret = unsafe { (api.hv_gic_get_redistributor_base)(self.id, &mut base) };
        let want = layout::GICR_BASE + u64::from(self.index) * layout::GICR_SIZE_PER_VCPU;
        if ret != HV_SUCCESS {
            log::warn!("vCPU {}: hv_gic_get_redistributor_base: {ret:#x}", self.index);
        } else if base != want {
            log::warn!(
                "vCPU {}: the GIC put its redistributor at {base:#x}, the device tree says {want:#x}",
                self.index
            );
        } else {
            // One of the facts the review asks a Mac owner for (tests/macos-smoke.sh).
            log::info!("vCPU {}: redistributor at {base:#x}", self.index);
        }
    }

    fn get_sys(&self, reg: hv_sys_reg_t) -> Result<u64> {
        let mut value = 0;
        // SAFETY: this thread owns the vCPU; writes one u64.
        check(unsafe { hv_vcpu_get_sys_reg(self.id, reg, &mut value) }, "hv_vcpu_get_sys_reg")?;
        Ok(value)
    }

    fn set_sys(&self, reg: hv_sys_reg_t, value: u64) -> Result<()> {
        // SAFETY: this thread owns the vCPU.
        check(unsafe { hv_vcpu_set_sys_reg(self.id, reg, value) }, "hv_vcpu_set_sys_reg")
    }

    fn get_core(&self, reg: hv_reg_t) -> Result<u64> {
        let mut value = 0;
        // SAFETY: this thread owns the vCPU; writes one u64.
        check(unsafe { hv_vcpu_get_reg(self.id, reg, &mut value) }, "hv_vcpu_get_reg")?;
        Ok(value)
    }

    fn set_core(&self, reg: hv_reg_t, value: u64) -> Result<()> {
        // SAFETY: this thread owns the vCPU.
        check(unsafe { hv_vcpu_set_reg(self.id, reg, value) }, "hv_vcpu_set_reg")
    }

    /// Register `n` of a syndrome (0..=30); callers handle 31 (XZR) themselves.
    fn x(&self, n: u8) -> Result<u64> {
        self.get_core(HV_REG_X0 + u32::from(n.min(30)))
    }

    fn skip_instruction(&self) -> Result<()> {
        let pc = self.get_core(HV_REG_PC)?;
        self.set_core(HV_REG_PC, pc.wrapping_add(4))
    }

    /// Writes the value of the pending MMIO load to its register and steps past the load.
    fn complete_load(&mut self, bus_value: u64) -> Result<()> {
        let Some(access) = self.pending_load.take() else { return Ok(()) };
        if let Some((reg, value)) = access.load_result(bus_value) {
            self.set_core(HV_REG_X0 + u32::from(reg), value)?;
        }
        self.skip_instruction()
    }

    /// Waits while powered off; `false` if a kick ended the wait.
    fn wait_until_powered_on(&mut self) -> Result<bool> {
        match self.vm.power.wait_for_start(self.index) {
            PowerWait::Kicked => Ok(false),
            PowerWait::Start(start) => {
                self.set_sys(HV_SYS_REG_SCTLR_EL1, SCTLR_EL1_CPU_ON)?;
                if self.vm.el2 {
                    // The entry is at EL2 (entry_pstate): its MMU must be off too.
                    let sctlr = self.get_sys(HV_SYS_REG_SCTLR_EL2)?;
                    self.set_sys(HV_SYS_REG_SCTLR_EL2, sctlr_el2_for_cpu_on(sctlr))?;
                }
                for (reg, value) in start.registers() {
                    self.set_reg(reg, value)?;
                }
                self.vm.power.running(self.index);
                self.powered_on = true;
                Ok(true)
            }
        }
    }

    fn handle(&mut self, exit: hv_vcpu_exit_t) -> Result<VmExit> {
        Ok(match plan(&exit) {
            ExitPlan::Canceled => {
                self.doorbell.take_kick();
                VmExit::Kicked
            }
            ExitPlan::VtimerActivated => {
                self.vtimer_activated()?;
                VmExit::Handled(HandledExit::VtimerActivated)
            }
            ExitPlan::Mmio { ipa, decision } => self.mmio(ipa, decision, &exit)?,
            ExitPlan::Hypercall { smc, imm } => self.hypercall(smc, imm)?,
            ExitPlan::SysReg { iss } => self.sysreg(iss)?,
            ExitPlan::Wait(WaitKind::Wfe) => {
                self.skip_instruction()?;
                VmExit::Handled(HandledExit::Wfe)
            }
            ExitPlan::Wait(WaitKind::Wfi) => {
                self.skip_instruction()?;
                self.wfi()?;
                VmExit::Handled(HandledExit::Wfi)
            }
            ExitPlan::Inject { exception, what, esr } => {
                if !self.vm.injected_logged.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "vCPU {}: {what} (ESR_EL2 {esr:#x}): injected {exception:?} (logged once)",
                        self.index
                    );
                }
                self.inject(exception)?;
                VmExit::Handled(HandledExit::ExceptionInjected)
            }
            ExitPlan::Unhandled { reason, detail } => VmExit::Unhandled { reason, detail },
        })
    }

    fn mmio(&mut self, ipa: u64, decision: MmioDecision, exit: &hv_vcpu_exit_t) -> Result<VmExit> {
        if let (GicBackend::Userspace(_), MmioDecision::Access(access)) = (&self.vm.gic, decision) {
            if let Some(exit) = self.userspace_gic_mmio(ipa, access)? {
                return Ok(exit);
            }
        }
        match decision {
            MmioDecision::Access(access) if access.write => {
                let reg_value = match access.source_register() {
                    Some(reg) => self.x(reg)?,
                    None => 0,
                };
                self.skip_instruction()?;
                Ok(VmExit::Mmio {
                    addr: ipa,
                    size: access.size,
                    write: Some(access.store_value(reg_value)),
                })
            }
            MmioDecision::Access(access) => {
                self.pending_load = Some(access);
                Ok(VmExit::Mmio { addr: ipa, size: access.size, write: None })
            }
            MmioDecision::CacheMaintenance => {
                self.skip_instruction()?;
                Ok(VmExit::Handled(HandledExit::CacheMaintenance))
            }
            MmioDecision::NoValidSyndrome | MmioDecision::TranslationTableWalk => {
                log::warn!(
                    "vCPU {}: MMIO access at {ipa:#x} without a usable syndrome ({decision:?}): \
                     injecting a data abort",
                    self.index
                );
                self.inject(GuestException::DataAbort { far: exit.exception.virtual_address })?;
                Ok(VmExit::Handled(HandledExit::ExceptionInjected))
            }
        }
    }

    /// Serves an access to the userspace GIC's registers here, as KVM serves its vGIC in the
    /// kernel: `None` if `ipa` is not the GIC's.
    fn userspace_gic_mmio(&mut self, ipa: u64, access: MmioAccess) -> Result<Option<VmExit>> {
        let GicBackend::Userspace(gic) = &self.vm.gic else { return Ok(None) };
        let write = match (access.write, access.source_register()) {
            (true, Some(reg)) => Some(access.store_value(self.x(reg)?)),
            (true, None) => Some(0),
            (false, _) => None,
        };
        let Some(value) = gic.mmio(ipa, access.size, write) else { return Ok(None) };
        if write.is_none() {
            if let Some((reg, value)) = access.load_result(value) {
                self.set_core(HV_REG_X0 + u32::from(reg), value)?;
            }
        }
        self.skip_instruction()?;
        Ok(Some(VmExit::Handled(HandledExit::GicMmio)))
    }

    fn hypercall(&mut self, smc: bool, imm: u16) -> Result<VmExit> {
        let call = SmcccCall::new(u32::from(imm), self.x(0)?, self.x(1)?, self.x(2)?, self.x(3)?);
        let conduit = if smc { PsciConduit::Smc } else { PsciConduit::Hvc };
        let resume = |vcpu: &Self, x0: u64| -> Result<VmExit> {
            vcpu.set_core(HV_REG_X0, x0)?;
            let pc = vcpu.get_core(HV_REG_PC)?;
            vcpu.set_core(HV_REG_PC, pc_after_call(conduit, pc))?;
            Ok(VmExit::Handled(HandledExit::Hypercall))
        };
        match handle_call(&call, &self.vm.power) {
            PsciAction::Return(x0) => resume(self, x0),
            PsciAction::CpuOn(request) => {
                let x0 = self.vm.power.cpu_on(&request);
                resume(self, x0)
            }
            PsciAction::Suspend => {
                self.wfi()?;
                resume(self, ret::SUCCESS)
            }
            PsciAction::CpuOff => {
                self.vm.power.cpu_off(self.index);
                self.powered_on = false;
                Ok(VmExit::Handled(HandledExit::Hypercall))
            }
            PsciAction::SystemOff => Ok(VmExit::System(SystemEvent::PowerOff)),
            PsciAction::SystemReset => Ok(VmExit::System(SystemEvent::Reset)),
        }
    }

    /// A trapped MSR/MRS, completed with the shared policy (`arch::aarch64::sysreg`): GIC CPU
    /// interface registers go to the userspace GIC, PMU/debug/ID registers are constants, the
    /// rest get an UNDEF.
    fn sysreg(&mut self, iss: u32) -> Result<VmExit> {
        let access = SysRegAccess::decode(iss);
        let rt_value = if access.read || access.rt == 31 { 0 } else { self.x(access.rt)? };
        let ctx = SysRegContext { el2: self.vm.el2, in_kernel_gic: self.vm.gic.is_in_kernel() };
        let write = match emulate(&access, rt_value, ctx) {
            SysRegOutcome::Complete(write) => Some(write),
            SysRegOutcome::Hypervisor(forwarded) => self.framework_sysreg(&forwarded),
            SysRegOutcome::ReadVirtualCount { rt } => Some(rt.map(|rt| (rt, self.guest_count()))),
            SysRegOutcome::GicCpuInterface(forwarded) => match &self.vm.gic {
                GicBackend::Userspace(u) => u.icc_access(self.index, &forwarded),
                // With the in-kernel GIC the framework serves these without a trap.
                GicBackend::InKernel(_) => None,
            },
            SysRegOutcome::Undefined => None,
        };
        let Some(write) = write else {
            self.vm.undefined_sysregs.record(&access);
            self.inject(GuestException::Undefined)?;
            return Ok(VmExit::Handled(HandledExit::ExceptionInjected));
        };
        if let Some((reg, value)) = write {
            self.set_core(HV_REG_X0 + u32::from(reg), value)?;
        }
        self.skip_instruction()?;
        Ok(VmExit::Handled(HandledExit::SysReg))
    }

    /// Reads or writes the framework's copy of a register it trapped; `None` if it refuses the
    /// register (the caller injects UNDEF and logs it once).
    fn framework_sysreg(&self, access: &ForwardedAccess) -> Option<Option<(u8, u64)>> {
        let reg = hv_sys_reg(access.reg);
        match access.op {
            ForwardedOp::Read { .. } => self.get_sys(reg).ok().map(|v| access.completion(v)),
            ForwardedOp::Write(value) => self.set_sys(reg, value).ok().map(|()| None),
        }
    }

    /// Delivers `exception` at the EL the architecture takes it to: EL1, or EL2 for a guest
    /// running at EL2 (`--nested`) — never to EL1 from EL2.
    fn inject(&self, exception: GuestException) -> Result<()> {
        let from = FromState { pstate: self.get_core(HV_REG_CPSR)?, pc: self.get_core(HV_REG_PC)? };
        // HCR_EL2 matters only to a guest with EL2: routing from EL0 (TGE), and PAN at EL2 (E2H).
        let hcr_el2 = if self.vm.el2 { Some(self.get_sys(HV_SYS_REG_HCR_EL2)?) } else { None };
        let el = target_el(from.pstate, hcr_el2);
        let regs = exception_regs(el);
        let target = TargetState {
            el,
            vbar: self.get_sys(regs.vbar)?,
            sctlr: self.get_sys(regs.sctlr)?,
            hcr_el2: hcr_el2.unwrap_or(0),
        };
        let to = inject(exception, from, target);
        log::debug!(
            "vCPU {}: {exception:?} from EL{} injected at {el:?}",
            self.index,
            current_el(from.pstate)
        );
        self.set_sys(regs.esr, to.esr)?;
        if let Some(far) = to.far {
            self.set_sys(regs.far, far)?;
        }
        self.set_sys(regs.elr, to.elr)?;
        self.set_sys(regs.spsr, to.spsr)?;
        self.set_core(HV_REG_CPSR, to.pstate)?;
        self.set_core(HV_REG_PC, to.pc)
    }

    /// The virtual timer fired and the framework masked it. With the userspace GIC: raise the
    /// timer PPI and keep the vtimer masked until the guest has dealt with it (`sync_vtimer`).
    /// With the in-kernel GIC the framework delivers the timer itself and this exit should not
    /// happen; should it, hand the timer straight back (unmask) and never touch the
    /// redistributor, whose pending state the framework owns.
    fn vtimer_activated(&mut self) -> Result<()> {
        match (vtimer_activation(self.vm.gic.is_in_kernel()), &self.vm.gic) {
            (VtimerActivation::RaisePpi, GicBackend::Userspace(u)) => {
                self.vtimer_masked = true;
                u.gic.set_ppi_level(self.index, VTIMER_PPI, true);
                Ok(())
            }
            _ => {
                if !self.vm.vtimer_exit_logged.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "vCPU {}: VTIMER_ACTIVATED with the in-kernel GIC (not expected: the \
                         framework delivers the timer); unmasking it (logged once)",
                        self.index
                    );
                }
                // SAFETY: this thread owns the vCPU.
                let ret = unsafe { hv_vcpu_set_vtimer_mask(self.id, false) };
                check(ret, "hv_vcpu_set_vtimer_mask")
            }
        }
    }

    /// After VTIMER_ACTIVATED (userspace GIC) the framework keeps the vtimer masked; lower the
    /// PPI and unmask once the guest has dealt with the interrupt (the line is low: disabled,
    /// masked, or reprogrammed), or every entry would exit again at once.
    fn sync_vtimer(&mut self) -> Result<()> {
        if !vtimer_should_unmask(self.get_sys(HV_SYS_REG_CNTV_CTL_EL0)?) {
            return Ok(());
        }
        if let GicBackend::Userspace(u) = &self.vm.gic {
            u.gic.set_ppi_level(self.index, VTIMER_PPI, false);
        }
        // SAFETY: this thread owns the vCPU.
        check(unsafe { hv_vcpu_set_vtimer_mask(self.id, false) }, "hv_vcpu_set_vtimer_mask")?;
        self.vtimer_masked = false;
        Ok(())
    }

    /// Whether an enabled interrupt is pending for this vCPU in the in-kernel GIC: its SGIs and
    /// PPIs, and any SPI (whose routing the framework keeps to itself). WFI must not sleep then.
    fn interrupt_pending(&self) -> Result<bool> {
        let api = match &self.vm.gic {
            GicBackend::Userspace(u) => return Ok(u.gic.has_pending(self.index)),
            GicBackend::InKernel(api) => api,
        };
        let mut pend = 0;
        let mut enabled = 0;
        // SAFETY: this thread owns the vCPU; each call writes one u64.
        unsafe {
            (api.hv_gic_get_redistributor_reg)(
                self.id,
                HV_GIC_REDISTRIBUTOR_REG_GICR_ISPENDR0,
                &mut pend,
            );
            (api.hv_gic_get_redistributor_reg)(
                self.id,
                HV_GIC_REDISTRIBUTOR_REG_GICR_ISENABLER0,
                &mut enabled,
            );
        }
        if pend & enabled != 0 {
            return Ok(true);
        }
        for n in 1..(layout::GIC_NR_IRQS / 32) as u16 {
            // SAFETY: raw distributor offsets are allowed (hv_gic.h); each writes one u64.
            unsafe {
                (api.hv_gic_get_distributor_reg)(
                    HV_GIC_DISTRIBUTOR_REG_GICD_ISPENDR0 + 4 * n,
                    &mut pend,
                );
                (api.hv_gic_get_distributor_reg)(
                    HV_GIC_DISTRIBUTOR_REG_GICD_ISENABLER0 + 4 * n,
                    &mut enabled,
                );
            }
            if pend & enabled != 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Checks for a kick, sets the IRQ line, and runs the guest once: `None` if a kick came
    /// first. Called between `Doorbell::enter_guest` and `leave_guest`.
    fn enter(&mut self) -> Result<Option<hv_vcpu_exit_t>> {
        if self.doorbell.take_kick() {
            return Ok(None);
        }
        if let GicBackend::Userspace(u) = &self.vm.gic {
            // The framework clears the line when the run returns (hv_vcpu.h): set it, high or
            // low, before every entry.
            let pending = u.gic.has_pending(self.index);
            // SAFETY: this thread owns the vCPU.
            let ret =
                unsafe { hv_vcpu_set_pending_interrupt(self.id, HV_INTERRUPT_TYPE_IRQ, pending) };
            check(ret, "hv_vcpu_set_pending_interrupt")?;
        }
        // SAFETY: this thread owns the vCPU.
        check(unsafe { hv_vcpu_run(self.id) }, "hv_vcpu_run")?;
        // SAFETY: the framework keeps the record alive for the vCPU's lifetime and wrote it
        // before hv_vcpu_run returned on this thread.
        Ok(Some(unsafe { *self.exit }))
    }

    /// The guest's virtual count now, in its own counter's ticks: host clock ticks since the
    /// vtimer offset, rescaled when the guest counter runs at another rate (M4, recent SDK).
    fn guest_count(&self) -> u64 {
        // SAFETY: mach_absolute_time has no preconditions.
        let host_ticks = unsafe { mach_absolute_time() }.wrapping_sub(self.vm.vtimer_offset);
        self.vm.counter.to_counter_ticks(host_ticks)
    }

    /// WFI, with the shared policy (`arch::aarch64::timer`): return at once if an interrupt is
    /// pending or the timer is (nearly) due; otherwise sleep until the timer's deadline, an
    /// interrupt, or a kick.
    fn wfi(&mut self) -> Result<()> {
        // Before looking at the GIC: an interrupt raised after the look still ends the sleep.
        self.doorbell.clear_wake();
        let inputs = WfiInputs {
            cntv_ctl: self.get_sys(HV_SYS_REG_CNTV_CTL_EL0)?,
            cntv_cval: self.get_sys(HV_SYS_REG_CNTV_CVAL_EL0)?,
            cntvct: self.guest_count(),
            cntfrq_hz: self.vm.counter.counter_hz,
            interrupt_pending: self.interrupt_pending()?,
        };
        let limit = match self.vm.gic {
            // The in-kernel GIC delivers SGIs from other vCPUs without telling hvrun, so a
            // sleep here could miss one: sleep briefly, and let the guest's idle loop WFI
            // again (then GICR_ISPENDR0 shows the SGI). With an in-kernel GIC the framework is
            // expected to handle WFI itself, making this a fallback (see HVF.md).
            GicBackend::InKernel(_) => Some(IN_KERNEL_GIC_WFI_LIMIT),
            GicBackend::Userspace(_) => None,
        };
        let wait = match wfi_decision(&inputs, self.vm.wfi_spin) {
            WfiDecision::Resume => return Ok(()),
            WfiDecision::SleepUntilKick => limit,
            WfiDecision::SleepFor(wait) => {
                if wait > IMPLAUSIBLE_TIMER_WAIT
                    && !self.vm.timer_warned.swap(true, Ordering::Relaxed)
                {
                    log::warn!(
                        "vCPU {}: the guest's timer is due in {wait:?}: its counter and hvrun's \
                         clock may disagree ({:?}); please report `hvrun host` (logged once)",
                        self.index,
                        self.vm.counter
                    );
                }
                Some(limit.map_or(wait, |l| l.min(wait)))
            }
        };
        self.doorbell.sleep(wait.map(|w| Instant::now() + w));
        Ok(())
    }
}

impl Drop for HvfVcpu {
    fn drop(&mut self) {
        self.doorbell.detach();
        // SAFETY: this thread created the vCPU and drops it here.
        if let Err(e) = check(unsafe { hv_vcpu_destroy(self.id) }, "hv_vcpu_destroy") {
            log::warn!("vCPU {}: {e}", self.index);
        }
    }
}

impl Vcpu for HvfVcpu {
    type Kicker = HvfKicker;

    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<()> {
        let value = if reg == Reg::Pstate { entry_pstate(value, self.vm.el2) } else { value };
        match hv_reg(reg, self.vm.el2) {
            Some(HvReg::Core(r)) => self.set_core(r, value),
            Some(HvReg::Sys(r)) => self.set_sys(r, value),
            None => Err(invalid(&format!("no such register {reg:?}"))),
        }
    }

    fn get_reg(&mut self, reg: Reg) -> Result<u64> {
        match hv_reg(reg, self.vm.el2) {
            Some(HvReg::Core(r)) => self.get_core(r),
            Some(HvReg::Sys(r)) => self.get_sys(r),
            None => Err(invalid(&format!("no such register {reg:?}"))),
        }
    }

    fn run(&mut self, entry: VmEntry) -> Result<VmExit> {
        match entry {
            VmEntry::MmioData(value) => self.complete_load(value)?,
            VmEntry::Resume => {
                if self.pending_load.is_some() {
                    log::warn!("vCPU {}: MMIO load resumed without data: reads 0", self.index);
                    self.complete_load(0)?;
                }
            }
        }
        if !self.powered_on && !self.wait_until_powered_on()? {
            return Ok(VmExit::Kicked);
        }
        if self.vtimer_masked {
            self.sync_vtimer()?;
        }
        // From here until the run returns, a kick or a new interrupt for this vCPU also calls
        // hv_vcpus_exit (kick.rs), so the checks in `enter` cannot miss one; outside this
        // window the doorbell alone reaches the thread, and no empty exit is made.
        self.doorbell.enter_guest();
        let entered = self.enter();
        self.doorbell.leave_guest();
        match entered? {
            Some(exit) => self.handle(exit),
            None => Ok(VmExit::Kicked),
        }
    }

    fn kicker(&self) -> HvfKicker {
        HvfKicker { index: self.index, vm: self.vm.clone() }
    }
}

/// Kicks one vCPU from any thread: out of the guest (`hv_vcpus_exit`), out of a WFI sleep
/// (its doorbell), or out of the wait for CPU_ON (its power state).
pub struct HvfKicker {
    index: u32,
    vm: Arc<VmShared>,
}

impl Kicker for HvfKicker {
    fn kick(&self) {
        if let Some(bell) = self.vm.doorbells.get(self.index) {
            bell.kick_vcpu();
        }
        self.vm.power.kick(self.index);
    }
}

fn invalid(what: &str) -> HvError {
    HvError::new(what, std::io::Error::from(std::io::ErrorKind::InvalidInput))
}
