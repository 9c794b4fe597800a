//! What this host's hypervisor offers hvrun, as plain data each backend fills in
//! (`kvm::caps`, `hvf::hypervisor`) and `hvrun host` reports (`crate::host`). Portable, so the
//! report is unit-tested on any host.

use crate::arch::aarch64::timer::CounterRates;
use crate::hv::hvf::gic::{GicChoice, GicGeometry};

/// What `/dev/kvm` offers (arm64 Linux). Each flag is a `KVM_CHECK_EXTENSION` (or a test
/// creation) on this kernel; the numbers are what the kernel reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvmCapabilities {
    /// `KVM_GET_API_VERSION` (12 for every KVM since Linux 2.6.22).
    pub api_version: i32,
    /// The running kernel (`uname -r`).
    pub kernel_release: String,
    /// KVM_CAP_MAX_VCPUS, and KVM_CAP_NR_VCPUS (the recommended maximum).
    pub max_vcpus: u32,
    pub recommended_vcpus: u32,
    /// KVM_CAP_ARM_VM_IPA_SIZE: the widest IPA space a VM can ask for; `None` on kernels
    /// before 4.20, whose VMs always get 40 bits.
    pub max_ipa_bits: Option<u32>,
    /// A vGICv3 can be created (KVM_CREATE_DEVICE with KVM_CREATE_DEVICE_TEST).
    pub vgic_v3: bool,
    /// KVM_CAP_ARM_EL2 (Linux 6.16): guests may get EL2 (nested virtualisation).
    pub el2: bool,
    /// CNTFRQ_EL0 as read on the host: KVM's guests see the same counter.
    pub counter_hz: u64,
    /// KVM_IOEVENTFD (KVM_CAP_IOEVENTFD): queue notifications without an exit to hvrun.
    pub ioeventfd: bool,
    /// KVM_IRQFD (KVM_CAP_IRQFD).
    pub irqfd: bool,
    /// The SMCCC filter (KVM_ARM_VM_SMCCC_CTRL / KVM_ARM_VM_SMCCC_FILTER as a VM attribute,
    /// Linux 6.4): HVCs/SMCs can be forwarded to the VMM.
    pub smccc_filter: bool,
    /// KVM_CAP_COUNTER_OFFSET (KVM_ARM_SET_COUNTER_OFFSET, Linux 6.4): one counter offset for
    /// the whole VM, e.g. to stop guest time while paused.
    pub counter_offset: bool,
    /// KVM_CAP_ARM_NISV_TO_USER: data aborts without a valid syndrome can exit to the VMM.
    pub nisv_to_user: bool,
    /// KVM_CAP_ARM_PMU_V3, KVM_CAP_ARM_SVE, KVM_CAP_ARM_PTRAUTH_{ADDRESS,GENERIC},
    /// KVM_CAP_ARM_MTE: vCPU features the host could give a guest.
    pub pmu_v3: bool,
    pub sve: bool,
    pub pointer_auth: bool,
    pub mte: bool,
}

/// What Hypervisor.framework offers on this Mac.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HvfCapabilities {
    /// `kern.osproductversion` and `kern.osversion` (e.g. "15.1 (24B83)").
    pub macos_version: String,
    /// `machdep.cpu.brand_string` (e.g. "Apple M3 Pro").
    pub chip: String,
    /// `sysctl kern.hv_support` (`None`: no such sysctl).
    pub hv_support: Option<i32>,
    /// Whether this process could create a VM, and if not the framework's answer with advice
    /// (HV_DENIED: the signing command; HV_UNSUPPORTED: a macOS VM, ...).
    pub usable: Result<HvfVmLimits, String>,
    /// The guest counter's rate (CNTFRQ_EL0 in this process) and the host clock's
    /// (`mach_timebase_info`).
    pub counter: CounterRates,
}

/// What a VM can have, read from the framework with a probe VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HvfVmLimits {
    pub max_vcpus: u32,
    pub default_ipa_bits: u32,
    pub max_ipa_bits: u32,
    /// The framework's GIC (macOS 15): its geometry, or why it could not be read; `None`
    /// before macOS 15.
    pub gic_geometry: Option<Result<GicGeometry, String>>,
    /// Which GIC a VM gets (`gic::choose_gic` without `--nested`).
    pub gic: GicChoice,
    /// `hv_vm_config_get_el2_supported` (`None`: before macOS 15, no such call).
    pub el2_supported: Option<bool>,
}
