//! The GIC's state: every interrupt's enable/pending/active/group/priority/trigger bits, each
//! vCPU's CPU-interface registers, and the priority logic that picks what a vCPU is signalled.
//!
//! One lock guards all of it (held by [`super::GicV3`]): the distributor, the redistributors,
//! the CPU interfaces and the device lines all change the same pending state, and a GIC with a
//! few hundred interrupts is cheap to scan. Arm IHI 0069 (GICv3/v4 architecture) §4.1
//! (interrupt state machine), §4.8 (priority, preemption, running priority).

/// INTIDs 0..16 are SGIs, 16..32 PPIs, 32.. SPIs (IHI0069 §2.2).
pub const FIRST_SPI: u32 = 32;
/// The INTID a read of ICC_IAR1_EL1 returns when nothing can be acknowledged (§2.2.1).
pub const SPURIOUS_INTID: u32 = 1023;

/// Implemented priority bits: 5, as KVM's vGIC and GIC-600 (ICC_CTLR_EL1.PRIbits = 4). The low
/// three bits of every priority are RAZ/WI.
pub const PRIORITY_MASK: u8 = 0xf8;
/// "Idle" running priority: no interrupt active (§4.8.5).
pub const IDLE_PRIORITY: u8 = 0xff;
/// Smallest ICC_BPR1_EL1 with 5 priority bits: group priority is bits [7:3] (§4.8.3, Table 4-7).
pub const MIN_BPR1: u8 = 3;
/// Smallest ICC_BPR0_EL1 with 5 priority bits.
pub const MIN_BPR0: u8 = 2;

/// One interrupt's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Irq {
    pub enabled: bool,
    /// Pending latched by an edge, by ISPENDR or by SGI generation; cleared by acknowledge or
    /// ICPENDR.
    pub pending_latch: bool,
    /// The input line's level (SPIs and PPIs driven by a device or the timer).
    pub line_level: bool,
    pub active: bool,
    /// Group 1 (IGROUPR bit set). Only Group 1 is ever signalled: with a single security state
    /// Group 0 would be an FIQ, which hvrun's guests do not use.
    pub group1: bool,
    pub priority: u8,
    /// Edge-triggered (ICFGR bit 2n+1); otherwise level-sensitive.
    pub edge: bool,
}

impl Irq {
    /// Reset state. Group 1 by default, as KVM's vGICv3 does, so a guest that never writes
    /// IGROUPR still gets its interrupts.
    pub const RESET: Irq = Irq {
        enabled: false,
        pending_latch: false,
        line_level: false,
        active: false,
        group1: true,
        priority: 0,
        edge: false,
    };

    /// Pending as the GIC sees it: a latch, or a level-sensitive line held high (§4.1.1).
    pub fn pending(&self) -> bool {
        self.pending_latch || (!self.edge && self.line_level)
    }

    /// Drives the input line. An edge-triggered interrupt latches pending on a rising edge.
    pub fn set_line(&mut self, high: bool) {
        if self.edge && high && !self.line_level {
            self.pending_latch = true;
        }
        self.line_level = high;
    }

    /// Could be signalled if priority allows: enabled, pending, not already active, Group 1.
    fn candidate(&self) -> bool {
        self.enabled && self.pending() && !self.active && self.group1
    }
}

/// One vCPU's redistributor and CPU-interface state.
#[derive(Clone, Debug)]
pub struct CpuState {
    /// SGIs 0..16 and PPIs 16..32.
    pub private: [Irq; 32],
    /// GICR_WAKER.ProcessorSleep (reset 1: Linux clears it before using the redistributor).
    pub processor_sleep: bool,
    /// ICC_PMR_EL1: only priorities below (numerically) this are signalled. Reset 0: all masked.
    pub pmr: u8,
    pub bpr0: u8,
    pub bpr1: u8,
    /// ICC_CTLR_EL1.EOImode (bit 1): EOIR only drops priority, DIR deactivates.
    pub eoi_mode_drop_only: bool,
    /// ICC_CTLR_EL1.CBPR (bit 0): stored and read back; BPR1 is used for Group 1 regardless.
    pub cbpr: bool,
    pub igrpen0: bool,
    pub igrpen1: bool,
    /// ICC_AP1R0_EL1: bit n set = an interrupt of group priority n << 3 is active (§4.8.5).
    pub ap1r0: u32,
    /// ICC_AP0R0_EL1: stored only (Group 0 is never acknowledged).
    pub ap0r0: u32,
}

impl CpuState {
    pub fn new() -> Self {
        let mut private = [Irq::RESET; 32];
        // SGIs are always edge-triggered (GICR_ICFGR0 is read-only 0xaaaa_aaaa).
        for sgi in &mut private[..16] {
            sgi.edge = true;
        }
        CpuState {
            private,
            processor_sleep: true,
            pmr: 0,
            bpr0: MIN_BPR0,
            bpr1: MIN_BPR1,
            eoi_mode_drop_only: false,
            cbpr: false,
            igrpen0: false,
            igrpen1: false,
            ap1r0: 0,
            ap0r0: 0,
        }
    }

    /// ICC_RPR_EL1: the group priority of the highest-priority active interrupt, or idle.
    pub fn running_priority(&self) -> u8 {
        if self.ap1r0 == 0 {
            IDLE_PRIORITY
        } else {
            (self.ap1r0.trailing_zeros() << 3) as u8
        }
    }

    /// The group-priority part of `priority` under ICC_BPR1_EL1 (bits [7:BPR1]).
    pub fn group_priority(&self, priority: u8) -> u8 {
        let bpr = self.bpr1.clamp(MIN_BPR1, 7);
        priority & !((1u8 << bpr) - 1)
    }
}

impl Default for CpuState {
    fn default() -> Self {
        Self::new()
    }
}

/// A set of vCPU indices (at most [`MAX_VCPUS`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuSet(pub u128);

/// The most vCPUs the model supports (one bit each in a [`VcpuSet`]).
pub const MAX_VCPUS: usize = 128;

impl VcpuSet {
    pub fn insert(&mut self, vcpu: usize) {
        if vcpu < MAX_VCPUS {
            self.0 |= 1 << vcpu;
        }
    }

    /// Members of `self` not in `other`.
    pub fn minus(self, other: VcpuSet) -> VcpuSet {
        VcpuSet(self.0 & !other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = u32> {
        (0..MAX_VCPUS as u32).filter(move |&v| self.0 & (1 << v) != 0)
    }
}

/// The affinity fields of an MPIDR or GICD_IROUTER: Aff3 [39:32], Aff2..Aff0 [23:0].
pub const AFFINITY_MASK: u64 = 0xff_00ff_ffff;
/// GICD_IROUTER.Interrupt_Routing_Mode: 1 = any participating PE ("1 of N").
pub const IROUTER_IRM: u64 = 1 << 31;

/// The whole GIC.
#[derive(Clone, Debug)]
pub struct GicState {
    /// GICD_CTLR.EnableGrp0 (bit 0) and EnableGrp1 (bit 1); ARE and DS are fixed at 1.
    pub enable_grp0: bool,
    pub enable_grp1: bool,
    /// SPIs; index = INTID - 32.
    pub spis: Vec<Irq>,
    /// GICD_IROUTER of each SPI.
    pub routes: Vec<u64>,
    pub cpus: Vec<CpuState>,
    /// Each vCPU's MPIDR (for IROUTER and ICC_SGI1R_EL1 affinity matching, GICR_TYPER).
    pub mpidrs: Vec<u64>,
}

impl GicState {
    /// A reset GIC for vCPUs with these MPIDRs and `nr_irqs` interrupt IDs (a multiple of 32).
    pub fn new(mpidrs: Vec<u64>, nr_irqs: u32) -> Self {
        let spis = nr_irqs.saturating_sub(FIRST_SPI) as usize;
        GicState {
            enable_grp0: false,
            enable_grp1: false,
            spis: vec![Irq::RESET; spis],
            routes: vec![0; spis],
            cpus: vec![CpuState::new(); mpidrs.len()],
            mpidrs,
        }
    }

    /// Interrupt IDs implemented (32 private + SPIs).
    pub fn nr_irqs(&self) -> u32 {
        FIRST_SPI + self.spis.len() as u32
    }

    /// The vCPU an SPI with this IROUTER value is delivered to: the one whose affinity matches,
    /// or for IRM = 1 the first vCPU that has Group 1 enabled (else vCPU 0). `None` when the
    /// route names no vCPU: the interrupt stays pending until rerouted (§9.2.8 / IROUTER).
    pub fn spi_target(&self, route: u64) -> Option<usize> {
        if route & IROUTER_IRM != 0 {
            let awake = self.cpus.iter().position(|c| c.igrpen1);
            return awake.or((!self.cpus.is_empty()).then_some(0));
        }
        let want = route & AFFINITY_MASK;
        self.mpidrs.iter().position(|&m| m & AFFINITY_MASK == want)
    }

    /// The interrupt `intid` as seen from `cpu` (private ones are per vCPU).
    pub fn irq_mut(&mut self, cpu: usize, intid: u32) -> Option<&mut Irq> {
        if intid < FIRST_SPI {
            self.cpus.get_mut(cpu).map(|c| &mut c.private[intid as usize])
        } else {
            self.spis.get_mut((intid - FIRST_SPI) as usize)
        }
    }

    /// The highest-priority interrupt that is enabled, pending, inactive and Group 1 for
    /// `cpu`, ignoring PMR and running priority: `(intid, priority)`. Ties go to the lowest
    /// INTID. `None` also when Group 1 is disabled in the distributor or the CPU interface.
    pub fn highest_pending(&self, cpu: usize) -> Option<(u32, u8)> {
        let state = self.cpus.get(cpu)?;
        if !self.enable_grp1 || !state.igrpen1 {
            return None;
        }
        let private = state.private.iter().enumerate().map(|(i, irq)| (i as u32, irq));
        let spis = self
            .spis
            .iter()
            .zip(&self.routes)
            .enumerate()
            .filter(|&(_, (irq, &route))| irq.candidate() && self.spi_target(route) == Some(cpu))
            .map(|(i, (irq, _))| (FIRST_SPI + i as u32, irq));
        private
            .chain(spis)
            .filter(|(_, irq)| irq.candidate())
            .min_by_key(|&(intid, irq)| (irq.priority, intid))
            .map(|(intid, irq)| (intid, irq.priority))
    }

    /// The interrupt `cpu` would acknowledge now: the highest pending one if its priority is
    /// below PMR and its group priority preempts the running priority (§4.8.6).
    pub fn signalled(&self, cpu: usize) -> Option<(u32, u8)> {
        let (intid, priority) = self.highest_pending(cpu)?;
        let state = &self.cpus[cpu];
        let unmasked = priority < state.pmr;
        let preempts = state.group_priority(priority) < state.running_priority();
        (unmasked && preempts).then_some((intid, priority))
    }

    /// The vCPUs whose IRQ line is up now.
    pub fn signalled_set(&self) -> VcpuSet {
        let mut set = VcpuSet::default();
        for cpu in 0..self.cpus.len() {
            if self.signalled(cpu).is_some() {
                set.insert(cpu);
            }
        }
        set
    }
}
