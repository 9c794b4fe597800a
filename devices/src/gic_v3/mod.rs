//! A GICv3 interrupt controller in userspace, for hypervisors without an in-kernel one
//! (Hypervisor.framework before macOS 15). It knows no hypervisor: the guest reaches it through
//! MMIO ([`GicV3::distributor`], [`GicV3::redistributors`] on the bus) and trapped ICC system
//! registers ([`GicV3::icc_read`] / [`GicV3::icc_write`]); devices raise SPIs through the
//! [`IrqLine`]s it hands out; the backend raises the timer PPI with [`GicV3::set_ppi_level`],
//! asks [`GicV3::has_pending`] before each run, and is told through a [`VcpuWaker`] when a vCPU
//! that may be running or asleep needs to look again.
//!
//! What it models (Arm IHI 0069): one security state (GICD_CTLR.DS = 1), affinity routing always
//! on, Group 1 delivery only, 5 priority bits, SGIs/PPIs/SPIs, level and edge triggers, EOImode
//! 0 and 1, 1-of-N routing (to the first vCPU with Group 1 enabled). Not modelled: LPIs and the
//! ITS, Group 0 / FIQ, GICv2 compatibility, the interrupt source of SGIs (GICv3 does not report
//! it with affinity routing either).
//!
//! How the backend uses it, per vCPU thread:
//! 1. before `hv_vcpu_run`: `hv_vcpu_set_pending_interrupt(IRQ, gic.has_pending(vcpu))` — set
//!    it every time, high or low (acknowledging through ICC_IAR1_EL1 lowers it);
//! 2. on an MSR/MRS exit for an ICC register: `icc_read` / `icc_write` with the vCPU's index;
//! 3. on VTIMER_ACTIVATED: `set_ppi_level(vcpu, VTIMER_PPI, true)`, and lower it once the
//!    timer condition is gone;
//! 4. [`VcpuWaker::wake`] kicks a running vCPU (`hv_vcpus_exit`) or wakes one sleeping in WFI.

mod banks;
mod cpu_interface;
mod distributor;
mod redistributor;
mod state;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cpu;

use std::sync::{Arc, Mutex, MutexGuard, RwLock};

pub use cpu_interface::{IccRegister, SRE_VALUE};
pub use distributor::GICD_FRAME_SIZE;
pub use redistributor::GICR_FRAME_SIZE;
pub use state::{FIRST_SPI, MAX_VCPUS, SPURIOUS_INTID};

use crate::{BusDevice, IrqLine};
use state::{GicState, VcpuSet};

/// The virtual timer's PPI (INTID 27), as the FDT timer node says (arm,arch_timer.yaml).
pub const VTIMER_PPI: u32 = 27;

/// Told when an interrupt may have become deliverable to a vCPU. Called without the GIC's lock
/// held, from whichever thread changed the state (a device thread, another vCPU).
pub trait VcpuWaker: Send + Sync {
    /// vCPU `vcpu` should re-check [`GicV3::has_pending`]: make it leave the guest if running
    /// (`hv_vcpus_exit`), or wake it if it sleeps in WFI.
    fn wake(&self, vcpu: u32);
}

/// Why a GIC could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GicError {
    #[error("the userspace GIC needs at least one vCPU")]
    NoVcpus,
    #[error("{0} vCPUs: the userspace GIC supports at most {MAX_VCPUS}")]
    TooManyVcpus(usize),
    #[error("{0} interrupt IDs: the GIC needs a multiple of 32 between 64 and 1020")]
    BadIrqCount(u32),
}

struct Shared {
    state: Mutex<GicState>,
    waker: RwLock<Option<Arc<dyn VcpuWaker>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, GicState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `change` under the lock and wakes every vCPU whose IRQ line went up because of it.
    fn mutate<R>(&self, change: impl FnOnce(&mut GicState) -> R) -> R {
        let (result, woken) = {
            let mut gic = self.lock();
            let before = gic.signalled_set();
            let result = change(&mut gic);
            (result, gic.signalled_set().minus(before))
        };
        self.wake(woken);
        result
    }

    /// Like [`Self::mutate`] when only one vCPU can be affected (`affected` picks it before the
    /// change): a device line or a PPI. Saves scanning every vCPU on the hot path.
    fn mutate_one<R>(
        &self,
        affected: impl FnOnce(&GicState) -> Option<usize>,
        change: impl FnOnce(&mut GicState) -> R,
    ) -> R {
        let (result, woken) = {
            let mut gic = self.lock();
            let cpu = affected(&gic);
            let before = cpu.is_some_and(|c| gic.signalled(c).is_some());
            let result = change(&mut gic);
            let mut woken = VcpuSet::default();
            if let Some(c) = cpu.filter(|&c| !before && gic.signalled(c).is_some()) {
                woken.insert(c);
            }
            (result, woken)
        };
        self.wake(woken);
        result
    }

    fn wake(&self, vcpus: VcpuSet) {
        if vcpus == VcpuSet::default() {
            return;
        }
        let waker = self.waker.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        if let Some(waker) = waker {
            for vcpu in vcpus.iter() {
                waker.wake(vcpu);
            }
        }
    }
}

/// A handle on one VM's userspace GICv3. Cheap to clone; all clones share the state.
#[derive(Clone)]
pub struct GicV3 {
    shared: Arc<Shared>,
}

impl GicV3 {
    /// A reset GIC for vCPUs with these MPIDRs (index = vCPU index = redistributor order) and
    /// `nr_irqs` interrupt IDs (32 private + SPIs; `boot::layout::GIC_NR_IRQS`).
    pub fn new(mpidrs: Vec<u64>, nr_irqs: u32) -> Result<Self, GicError> {
        if mpidrs.is_empty() {
            return Err(GicError::NoVcpus);
        }
        if mpidrs.len() > MAX_VCPUS {
            return Err(GicError::TooManyVcpus(mpidrs.len()));
        }
        if nr_irqs % 32 != 0 || !(64..=1020).contains(&nr_irqs) {
            return Err(GicError::BadIrqCount(nr_irqs));
        }
        let shared =
            Shared { state: Mutex::new(GicState::new(mpidrs, nr_irqs)), waker: RwLock::new(None) };
        Ok(GicV3 { shared: Arc::new(shared) })
    }

    /// Installs the backend's waker (once its vCPUs exist; wakes before that are dropped, which
    /// is safe because every vCPU checks [`Self::has_pending`] before its first run).
    pub fn set_waker(&self, waker: Arc<dyn VcpuWaker>) {
        *self.shared.waker.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(waker);
    }

    /// The distributor frame, to put on the MMIO bus at GICD_BASE, [`GICD_FRAME_SIZE`] bytes.
    pub fn distributor(&self) -> Arc<Mutex<dyn BusDevice>> {
        Arc::new(Mutex::new(DistributorFrame(Arc::clone(&self.shared))))
    }

    /// All redistributor frames, to put on the bus at GICR_BASE, [`Self::redistributors_size`]
    /// bytes.
    pub fn redistributors(&self) -> Arc<Mutex<dyn BusDevice>> {
        Arc::new(Mutex::new(RedistributorFrames(Arc::clone(&self.shared))))
    }

    /// Bytes of redistributor space: [`GICR_FRAME_SIZE`] per vCPU.
    pub fn redistributors_size(&self) -> u64 {
        self.shared.lock().cpus.len() as u64 * GICR_FRAME_SIZE
    }

    /// The input line of shared peripheral interrupt `spi` (INTID 32 + `spi`), or `None` if the
    /// GIC has no such SPI.
    pub fn spi_line(&self, spi: u32) -> Option<Arc<dyn IrqLine>> {
        let intid = spi.checked_add(FIRST_SPI)?;
        (intid < self.shared.lock().nr_irqs()).then(|| {
            Arc::new(SpiLine { shared: Arc::clone(&self.shared), intid }) as Arc<dyn IrqLine>
        })
    }

    /// Drives private peripheral interrupt `intid` (16..32) of `vcpu`, e.g. [`VTIMER_PPI`].
    /// Other INTIDs and vCPUs are ignored.
    pub fn set_ppi_level(&self, vcpu: u32, intid: u32, high: bool) {
        if !(16..FIRST_SPI).contains(&intid) {
            return;
        }
        let vcpu = vcpu as usize;
        self.shared.mutate_one(
            |_| Some(vcpu),
            |gic| {
                if let Some(irq) = gic.irq_mut(vcpu, intid) {
                    irq.set_line(high);
                }
            },
        );
    }

    /// Whether `vcpu`'s IRQ line is up: an enabled Group 1 interrupt is pending for it with a
    /// priority that passes ICC_PMR_EL1 and preempts the running priority.
    pub fn has_pending(&self, vcpu: u32) -> bool {
        self.shared.lock().signalled(vcpu as usize).is_some()
    }

    /// A trapped MRS of an ICC register by `vcpu`.
    pub fn icc_read(&self, vcpu: u32, reg: IccRegister) -> u64 {
        // Acknowledging only lowers lines, so nobody needs waking.
        cpu_interface::read(&mut self.shared.lock(), vcpu as usize, reg)
    }

    /// A trapped MSR of an ICC register by `vcpu`. SGIs wake their targets.
    pub fn icc_write(&self, vcpu: u32, reg: IccRegister, value: u64) {
        if reg == IccRegister::Sgi1r {
            self.shared.mutate(|gic| cpu_interface::write(gic, vcpu as usize, reg, value));
        } else {
            // The other registers only change `vcpu` itself, which re-checks before it runs.
            cpu_interface::write(&mut self.shared.lock(), vcpu as usize, reg, value);
        }
    }
}

/// The GICD frame as a bus device.
struct DistributorFrame(Arc<Shared>);

impl BusDevice for DistributorFrame {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        distributor::read(&self.0.lock(), offset, size)
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) {
        self.0.mutate(|gic| distributor::write(gic, offset, size, value));
    }
}

/// The GICR frames of every vCPU as one bus device.
struct RedistributorFrames(Arc<Shared>);

impl BusDevice for RedistributorFrames {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        redistributor::read(&self.0.lock(), offset, size)
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) {
        self.0.mutate(|gic| redistributor::write(gic, offset, size, value));
    }
}

/// One SPI input: what a device holds to raise its interrupt.
struct SpiLine {
    shared: Arc<Shared>,
    intid: u32,
}

impl IrqLine for SpiLine {
    fn set_level(&self, high: bool) {
        let spi = (self.intid - FIRST_SPI) as usize;
        self.shared.mutate_one(
            |gic| gic.routes.get(spi).and_then(|&route| gic.spi_target(route)),
            |gic| {
                if let Some(irq) = gic.spis.get_mut(spi) {
                    irq.set_line(high);
                }
            },
        );
    }
}
