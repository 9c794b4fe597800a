//! `hvrun bench`: what one VM exit costs, measured by micro-guests (see [`guest`]) on the
//! host's backend, the way kvm-unit-tests' `arm/micro-bench` measures it, next to the time hvrun
//! itself spent handling each exit.
//!
//! Each case runs in a fresh VM with `--cpus` vCPUs (one VM, so it also works on
//! Hypervisor.framework, which allows one VM per process); every vCPU runs the same micro-guest
//! at the same time, against its own page of the bench device.

pub mod device;
pub mod guest;
pub mod report;

use std::sync::atomic::AtomicU32;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use boot::layout::{self, RAM_BASE};
use devices::MmioBus;
use vm_memory::{Bytes, GuestAddress};

use crate::arch::aarch64::{mpidr_for_vcpu, PSTATE_EL1H_DAIF_MASKED};
use crate::control::{VmControl, VmOutcome};
use crate::hv::{HandledExit, HvError, Hypervisor, Reg, VmSpec};
use crate::stats::{ExitKind, ExitStats};
use crate::vmm::memory::GuestRam;
use crate::vmm::vcpu::{start_vcpus, ExitObserver};
use crate::vmm::{serve_until_stopped, VmmError};
use device::BenchDevice;
use guest::{Op, Params};
pub use report::{BenchReport, CaseReport};

/// The bench device's first page; vCPU `i` uses the page at `BENCH_DEVICE_BASE + i * 4 KiB`.
pub const BENCH_DEVICE_BASE: u64 = 0x0B00_0000;
/// GICD_IIDR, the distributor's implementer ID register (GICv3 §12.9.16): served in the kernel.
pub const GICD_IIDR: u64 = layout::GICD_BASE + 0x8;
/// The SMCCC function ID of the `hvc` case, the one kvm-unit-tests uses: no service answers
/// it, so the round trip is the whole cost (the reply is NOT_SUPPORTED).
pub const HVC_FUNCTION: u64 = 0x4b00_0000;

// Guest RAM layout of a bench VM, as offsets from RAM_BASE.
const PARAMS_OFFSET: u64 = 0x1000;
const CPU_ON_TABLE_OFFSET: u64 = 0x4000;
const RESULTS_OFFSET: u64 = 0x1_0000;

const _: () = {
    // The bench pages sit between the virtio-mmio slots and RAM.
    let virtio_end =
        layout::VIRTIO_MMIO_BASE + layout::VIRTIO_MMIO_SLOTS as u64 * layout::VIRTIO_MMIO_SLOT_SIZE;
    assert!(BENCH_DEVICE_BASE >= virtio_end);
    assert!(BENCH_DEVICE_BASE + layout::MAX_VCPUS as u64 * 0x1000 <= RAM_BASE);
    assert!(PARAMS_OFFSET + layout::MAX_VCPUS as u64 * guest::PARAMS_SIZE <= CPU_ON_TABLE_OFFSET);
    assert!(CPU_ON_TABLE_OFFSET + layout::MAX_VCPUS as u64 * 16 <= RESULTS_OFFSET);
};

/// One benchmark case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// An HVC the hypervisor answers (SMCCC NOT_SUPPORTED).
    Hvc,
    /// A load from the bench device: an MMIO exit to hvrun.
    MmioRead,
    /// A store to the bench device.
    MmioWrite,
    /// A load of GICD_IIDR: MMIO served by the in-kernel GIC.
    MmioReadKernel,
    /// A trapped system-register read (OSDLR_EL1), emulated by hvrun: Hypervisor.framework only.
    SysReg,
    /// A NOP: no exit; the measuring loop's own cost.
    Nop,
}

impl Case {
    /// Every case, in the order they run.
    pub const ALL: [Case; 6] =
        [Case::Nop, Case::Hvc, Case::MmioRead, Case::MmioWrite, Case::MmioReadKernel, Case::SysReg];

    pub fn name(self) -> &'static str {
        match self {
            Case::Hvc => "hvc",
            Case::MmioRead => "mmio-read",
            Case::MmioWrite => "mmio-write",
            Case::MmioReadKernel => "mmio-read-kernel",
            Case::SysReg => "sysreg",
            Case::Nop => "nop",
        }
    }

    fn op(self) -> Op {
        match self {
            Case::Hvc => Op::Hvc,
            Case::MmioRead | Case::MmioReadKernel => Op::Load,
            Case::MmioWrite => Op::Store,
            Case::SysReg => Op::SysRegRead,
            Case::Nop => Op::Nop,
        }
    }

    /// The exit kind hvrun sees when the case's operation reaches it.
    fn exit_kind(self) -> Option<ExitKind> {
        match self {
            Case::Hvc => Some(ExitKind::Handled(HandledExit::Hypercall)),
            Case::MmioRead | Case::MmioReadKernel => Some(ExitKind::MmioRead),
            Case::MmioWrite => Some(ExitKind::MmioWrite),
            Case::SysReg => Some(ExitKind::Handled(HandledExit::SysReg)),
            Case::Nop => None,
        }
    }

    /// Why the case cannot run on `backend`, if it cannot.
    pub fn unavailable_on(self, backend: &str) -> Option<&'static str> {
        match (self, backend) {
            (Case::SysReg, "KVM") => Some(
                "not available on KVM: KVM emulates trapped system registers in the kernel and \
                 never hands them to the VMM",
            ),
            _ => None,
        }
    }

    /// What the case measures on `backend`, said plainly.
    pub fn what(self, backend: &str) -> &'static str {
        match (self, backend) {
            (Case::Nop, _) => "no exit: the loop's own cost per iteration",
            (Case::Hvc, "KVM") => {
                "guest -> KVM -> guest: KVM answers HVCs in the kernel (forwarding them to the VMM \
                 needs the SMCCC filter of Linux >= 6.4, which hvrun does not use); hvrun sees no exit"
            }
            (Case::Hvc, _) => "guest -> hypervisor -> hvrun's SMCCC handler -> guest",
            (Case::MmioRead, _) => "load from hvrun's bench device: a full exit to hvrun and back",
            (Case::MmioWrite, _) => "store to hvrun's bench device: a full exit to hvrun and back",
            (Case::MmioReadKernel, "KVM") => "load of GICD_IIDR, served by KVM's vGIC in the kernel",
            (Case::MmioReadKernel, _) => {
                "load of GICD_IIDR, served by the in-kernel GIC when there is one (macOS 15+)"
            }
            (Case::SysReg, _) => "read of OSDLR_EL1, trapped and emulated by hvrun",
        }
    }
}

impl std::str::FromStr for Case {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Case::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            let names: Vec<_> = Case::ALL.iter().map(|c| c.name()).collect();
            format!("unknown case `{s}` (cases: {})", names.join(", "))
        })
    }
}

/// What to measure, checked.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub cases: Vec<Case>,
    /// Measured iterations per vCPU and case (rounded up to whole batches).
    pub iterations: u64,
    /// Iterations per batch: one pair of counter reads per batch.
    pub batch: u64,
    /// vCPUs running the micro-guest at the same time.
    pub cpus: u32,
    /// Time hvrun's handling of every exit (off only to measure what the timing costs).
    pub vmm_time: bool,
    /// A case that has not finished by then fails.
    pub timeout: Duration,
}

impl BenchConfig {
    /// Measured batches per vCPU.
    pub fn batches(&self) -> u64 {
        self.iterations.div_ceil(self.batch).max(1)
    }

    /// Batches run first and thrown away: a tenth, at least one.
    pub fn warmup_batches(&self) -> u64 {
        (self.batches() / 10).max(1)
    }
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Vmm(#[from] VmmError),
    #[error(transparent)]
    Hypervisor(#[from] HvError),
    #[error("case {0}: {1}")]
    Case(&'static str, String),
}

/// Runs every configured case on `hv`.
pub fn run<H: Hypervisor>(hv: &H, config: &BenchConfig) -> Result<BenchReport, BenchError> {
    let mut cases = Vec::new();
    for &case in &config.cases {
        cases.push(match case.unavailable_on(hv.name()) {
            Some(why) => CaseReport::unavailable(case, why),
            None => run_case(hv, case, config)?,
        });
    }
    Ok(BenchReport::new(hv.name(), config, cases))
}

/// Runs one case in a fresh VM and reads its results out of guest memory.
pub fn run_case<H: Hypervisor>(
    hv: &H,
    case: Case,
    config: &BenchConfig,
) -> Result<CaseReport, BenchError> {
    let fail = |what: String| BenchError::Case(case.name(), what);
    let cpus = config.cpus;
    let batches = config.batches() + config.warmup_batches();
    // CNTFRQ_EL0 and then one u64 per batch, page-aligned per vCPU.
    let stride = ((batches + 1) * 8).next_multiple_of(0x1000);
    let ram = (RESULTS_OFFSET + u64::from(cpus) * stride).next_multiple_of(2 << 20);

    let ram = GuestRam::allocate(ram)?;
    let vm =
        Arc::new(hv.create_vm(&VmSpec {
            vcpus: cpus,
            ipa_bits: layout::required_ipa_bits(ram.bytes()),
        })?);
    // SAFETY: `ram` is declared before `vm`, so dropped after it, and every vCPU thread is
    // joined before this function returns.
    unsafe { ram.map_into(vm.as_ref())? };
    let memory = ram.memory();

    let write = |offset: u64, bytes: &[u8]| {
        memory.write_slice(bytes, GuestAddress(RAM_BASE + offset)).map_err(|e| fail(e.to_string()))
    };
    write(guest::ENTRY, &guest::program_bytes(case.op()))?;
    let control = Arc::new(VmControl::new());
    let done = Arc::new(AtomicU32::new(0));
    let mut bus = MmioBus::new();
    for i in 0..cpus {
        let page = BENCH_DEVICE_BASE + u64::from(i) * 0x1000;
        let dev = BenchDevice::new(done.clone(), cpus, control.clone());
        bus.insert(page, 0x1000, format!("bench{i}"), Arc::new(Mutex::new(dev)))
            .map_err(VmmError::from)?;
        let params = Params {
            results: RAM_BASE + RESULTS_OFFSET + u64::from(i) * stride,
            batches,
            iterations: config.batch,
            target: if case == Case::MmioReadKernel { GICD_IIDR } else { page + device::DATA },
            hvc_function: HVC_FUNCTION,
            done: page + device::DONE,
            secondaries: if i == 0 { u64::from(cpus - 1) } else { 0 },
            cpu_on_table: RAM_BASE + CPU_ON_TABLE_OFFSET,
            entry: RAM_BASE + guest::ENTRY,
        };
        write(PARAMS_OFFSET + u64::from(i) * guest::PARAMS_SIZE, &params.to_bytes())?;
        if i > 0 {
            // PSCI CPU_ON wants the target's affinity fields only (MPIDR without RES1 bit 31).
            let mut entry = [0u8; 16];
            entry[..8].copy_from_slice(&(mpidr_for_vcpu(i) & 0xff_00ff_ffff).to_le_bytes());
            let context = RAM_BASE + PARAMS_OFFSET + u64::from(i) * guest::PARAMS_SIZE;
            entry[8..].copy_from_slice(&context.to_le_bytes());
            write(CPU_ON_TABLE_OFFSET + u64::from(i - 1) * 16, &entry)?;
        }
    }
    let boot_regs = [
        (Reg::X(0), RAM_BASE + PARAMS_OFFSET),
        (Reg::Pstate, PSTATE_EL1H_DAIF_MASKED),
        (Reg::Pc, RAM_BASE + guest::ENTRY),
    ];

    let watchdog = watchdog(control.clone(), config.timeout, case);
    let started = Instant::now();
    let observer = ExitObserver::new(config.vmm_time, None);
    let threads = start_vcpus(vm, cpus, &boot_regs, Arc::new(bus), &control, &observer, None)?;
    // A bench VM gets no requests (no API); any that came would get nothing back.
    let outcome = serve_until_stopped(&control, drop);
    let vcpu_stats = threads.join();
    let wall = started.elapsed();
    drop(watchdog);
    if outcome != VmOutcome::PowerOff {
        return Err(fail(format!("the micro-guest did not finish: {outcome:?}")));
    }

    let mut per_vcpu = Vec::new();
    for i in 0..cpus {
        let base = RAM_BASE + RESULTS_OFFSET + u64::from(i) * stride;
        let read =
            |at: u64| memory.read_obj::<u64>(GuestAddress(at)).map_err(|e| fail(e.to_string()));
        let cntfrq = read(base)?;
        if cntfrq == 0 {
            return Err(fail(format!("vCPU {i} reported no counter frequency")));
        }
        let mut ticks = Vec::with_capacity(batches as usize);
        for b in config.warmup_batches()..batches {
            ticks.push(read(base + 8 + b * 8)?);
        }
        per_vcpu.push((cntfrq, ticks));
    }
    let mut stats = ExitStats::default();
    for s in &vcpu_stats {
        stats.merge(s);
    }
    let exits_per_iteration = config.vmm_time.then(|| {
        // Everything but the DONE writes and the kicks that stop the parked vCPUs.
        let exits =
            stats.total().saturating_sub(stats.kind(ExitKind::Kicked).count() + u64::from(cpus));
        exits as f64 / (u64::from(cpus) * batches * config.batch) as f64
    });
    let vmm = case.exit_kind().and_then(|k| stats.kind(k).summary());
    let what = case.what(hv.name());
    Ok(CaseReport::measured(case, what, config, &per_vcpu, exits_per_iteration, vmm, wall))
}

/// A thread that stops the VM as failed if it runs longer than `timeout`; dropping the returned
/// sender ends it.
fn watchdog(control: Arc<VmControl>, timeout: Duration, case: Case) -> mpsc::Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
            control.request_stop(VmOutcome::Failed(format!(
                "case {} did not finish within {timeout:?}",
                case.name()
            )));
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_parse_by_name() {
        for case in Case::ALL {
            assert_eq!(case.name().parse::<Case>(), Ok(case));
        }
        assert!("ipi".parse::<Case>().unwrap_err().contains("cases: nop, hvc"));
    }

    #[test]
    fn batches_round_up_with_a_warmup() {
        let config = BenchConfig {
            cases: vec![],
            iterations: 1000,
            batch: 64,
            cpus: 1,
            vmm_time: true,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(config.batches(), 16);
        assert_eq!(config.warmup_batches(), 1);
        let big = BenchConfig { iterations: 65536, ..config };
        assert_eq!((big.batches(), big.warmup_batches()), (1024, 102));
    }

    #[test]
    fn sysreg_is_honestly_unavailable_on_kvm() {
        assert!(Case::SysReg.unavailable_on("KVM").unwrap().contains("not available on KVM"));
        assert!(Case::SysReg.unavailable_on("Hypervisor.framework").is_none());
        assert!(Case::Hvc.what("KVM").contains("in the kernel"));
    }
}
