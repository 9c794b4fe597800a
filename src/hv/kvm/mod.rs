//! The KVM backend for arm64 Linux hosts (Asahi, Ampere, Graviton, Raspberry Pi), on kvm-ioctls.
//!
//! KVM does more in the kernel than Hypervisor.framework: the vGICv3, PSCI (CPU_ON/OFF,
//! AFFINITY_INFO, ...) and the timers are all served there, so the only exits hvrun sees are MMIO
//! to its own devices and PSCI SYSTEM_OFF/SYSTEM_RESET.

pub mod caps;
mod kick;
mod regs;
mod vcpu;
mod vm;

use std::sync::Once;

use kvm_ioctls::Kvm;

use super::{HostLimits, HvError, Hypervisor, Result, VmSpec};

use boot::PsciConduit;

pub use kick::KvmKicker;
pub use vcpu::KvmVcpu;
pub use vm::KvmVm;

/// `KVM_GET_API_VERSION` has returned 12 since Linux 2.6.22; anything else is not a usable KVM
/// (under qemu-user, for example, the host's /dev/kvm opens but every ioctl fails).
const KVM_API_VERSION: i32 = 12;
/// The IPA width KVM gives a VM created without asking (the pre-4.20 fixed 40 bits).
const DEFAULT_IPA_BITS: u32 = 40;

/// An open `/dev/kvm`.
pub struct KvmHypervisor {
    kvm: Kvm,
}

impl KvmHypervisor {
    /// Opens `/dev/kvm` and checks it is a working KVM.
    pub fn open() -> Result<Self> {
        let kvm = Kvm::new().map_err(|e| HvError::new("cannot open /dev/kvm", e))?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(HvError::new(
                format!("/dev/kvm answers API version {version}, expected {KVM_API_VERSION}"),
                std::io::Error::from(std::io::ErrorKind::Unsupported),
            ));
        }
        static KICK_SIGNAL: Once = Once::new();
        let mut installed = Ok(());
        KICK_SIGNAL.call_once(|| installed = kick::install_handler());
        installed?;
        Ok(KvmHypervisor { kvm })
    }
}

impl Hypervisor for KvmHypervisor {
    type Vm = KvmVm;

    fn name(&self) -> &'static str {
        "KVM"
    }

    fn limits(&self) -> HostLimits {
        let ipa = self.kvm.get_host_ipa_limit();
        HostLimits {
            max_vcpus: (self.kvm.get_max_vcpus() as u32).min(boot::layout::MAX_VCPUS),
            max_ipa_bits: if ipa > 0 { ipa as u32 } else { DEFAULT_IPA_BITS },
            host_ram_bytes: super::host_ram_bytes(),
        }
    }

    fn psci_conduit(&self) -> PsciConduit {
        // KVM_ARM_VCPU_PSCI_0_2 makes KVM serve PSCI on HVC from EL1.
        PsciConduit::Hvc
    }

    fn create_vm(&self, spec: &VmSpec) -> Result<KvmVm> {
        let sized_ipa = self.kvm.get_host_ipa_limit() > 0;
        KvmVm::create(&self.kvm, spec, sized_ipa)
    }
}
