//! The Hypervisor.framework backend (macOS on Apple Silicon), on `hv-sys`.
//!
//! Hypervisor.framework does far less than KVM: every PSCI call, trapped system register,
//! WFI and virtual-timer event comes to hvrun, which completes it with the portable policy in
//! `arch::aarch64` and reports it as `VmExit::Handled`, so exit statistics see every exit.
//!
//! The decisions live in portable modules that build and are unit-tested on every host
//! (`errors`, `ipa`, `kick`, `exit`); the modules that call the framework build only on macOS
//! and are type-checked and linted in CI for `aarch64-apple-darwin` (tests/darwin-check.sh).

pub mod errors;
pub mod exit;
pub mod gic;
pub mod ipa;
pub mod kick;
pub mod options;
pub mod regs;

#[cfg(target_os = "macos")]
mod vcpu;
#[cfg(target_os = "macos")]
mod vm;

#[cfg(target_os = "macos")]
pub use macos::*;
pub use options::HvfOptions;

#[cfg(target_os = "macos")]
mod macos {
    use hv_sys::newer::{El2Api, GicApi};
    use hv_sys::*;

    use super::errors::{check, no_hv_support_message};
    use super::options::HvfOptions;
    use crate::hv::{HostLimits, HvError, Hypervisor, Result, VmSpec};
    use boot::PsciConduit;

    pub use super::vcpu::{HvfKicker, HvfVcpu};
    pub use super::vm::{HvfVm, VmShared};

    /// What this Mac's Hypervisor.framework offers.
    #[derive(Clone, Copy, Debug)]
    pub struct HostCaps {
        pub max_vcpus: u32,
        pub default_ipa_bits: u32,
        pub max_ipa_bits: u32,
        /// The in-kernel GICv3 (macOS 15).
        pub gic: Option<&'static GicApi>,
    }

    /// Hypervisor.framework, checked to be usable by this process.
    pub struct HvfHypervisor {
        caps: HostCaps,
        options: HvfOptions,
    }

    impl HvfHypervisor {
        /// Checks that this Mac and this binary can run VMs, and what they offer. Creates and
        /// destroys a VM once, so a missing entitlement (HV_DENIED) or a host without
        /// virtualisation (HV_UNSUPPORTED) is reported before anything else is set up.
        pub fn open(options: HvfOptions) -> Result<Self> {
            if let Some(why) = no_hv_support_message(hv_support()) {
                return Err(unsupported(why));
            }
            // SAFETY: a null configuration selects the defaults.
            check(unsafe { hv_vm_create(std::ptr::null_mut()) }, "hv_vm_create")?;
            let caps = query_caps();
            // SAFETY: the probe VM has no vCPUs.
            check(unsafe { hv_vm_destroy() }, "hv_vm_destroy")?;
            let caps = caps?;
            if caps.gic.is_none() {
                log::info!("no in-kernel GIC (macOS 13/14): using hvrun's userspace GICv3");
            }
            if options.nested {
                check_el2()?;
            }
            Ok(HvfHypervisor { caps, options })
        }
    }

    /// Whether the chip and macOS support a guest EL2.
    fn check_el2() -> Result<()> {
        // The in-kernel GIC comes with the same macOS; a nested guest needs it (the vCPU
        // interrupt-line calls cannot inject into a guest hypervisor's guests, hv_gic.h).
        let api = El2Api::get()
            .filter(|_| GicApi::get().is_some())
            .ok_or_else(|| unsupported("--nested needs macOS 15 or later".into()))?;
        let mut supported = false;
        // SAFETY: writes one bool.
        let ret = unsafe { (api.hv_vm_config_get_el2_supported)(&mut supported) };
        check(ret, "hv_vm_config_get_el2_supported")?;
        if !supported {
            return Err(unsupported(
                "--nested: this Mac does not support nested virtualisation (it needs an M3 \
                 or later chip and macOS 15)"
                    .into(),
            ));
        }
        Ok(())
    }

    fn query_caps() -> Result<HostCaps> {
        let (mut max_vcpus, mut default_ipa, mut max_ipa) = (0u32, 0u32, 0u32);
        // SAFETY: each call writes one u32.
        unsafe {
            check(hv_vm_get_max_vcpu_count(&mut max_vcpus), "hv_vm_get_max_vcpu_count")?;
            check(hv_vm_config_get_default_ipa_size(&mut default_ipa), "default IPA size")?;
            check(hv_vm_config_get_max_ipa_size(&mut max_ipa), "maximum IPA size")?;
        }
        Ok(HostCaps {
            max_vcpus,
            default_ipa_bits: default_ipa,
            max_ipa_bits: max_ipa,
            gic: GicApi::get(),
        })
    }

    /// `sysctl kern.hv_support`, or `None` if it does not exist.
    fn hv_support() -> Option<i32> {
        let mut value: libc::c_int = 0;
        let mut size = std::mem::size_of::<libc::c_int>();
        // SAFETY: the name is NUL-terminated; `value` and `size` describe a c_int buffer.
        let ret = unsafe {
            libc::sysctlbyname(
                c"kern.hv_support".as_ptr(),
                (&mut value as *mut libc::c_int).cast(),
                &mut size,
                std::ptr::null_mut(),
                0,
            )
        };
        (ret == 0).then_some(value)
    }

    fn unsupported(why: String) -> HvError {
        HvError::new(why, std::io::Error::from(std::io::ErrorKind::Unsupported))
    }

    impl Hypervisor for HvfHypervisor {
        type Vm = HvfVm;

        fn name(&self) -> &'static str {
            "Hypervisor.framework"
        }

        fn limits(&self) -> HostLimits {
            HostLimits {
                max_vcpus: self.caps.max_vcpus.min(boot::layout::MAX_VCPUS),
                max_ipa_bits: self.caps.max_ipa_bits,
                host_ram_bytes: crate::hv::host_ram_bytes(),
            }
        }

        fn psci_conduit(&self) -> PsciConduit {
            // A guest at EL1 reaches hvrun with HVC. A guest kernel at EL2 (--nested) would
            // take its own HVC, so it calls PSCI with SMC, which the framework traps (as in
            // QEMU's virt machine with virtualization=on).
            if self.options.nested {
                PsciConduit::Smc
            } else {
                PsciConduit::Hvc
            }
        }

        fn create_vm(&self, spec: &VmSpec) -> Result<HvfVm> {
            HvfVm::create(&self.caps, &self.options, spec)
        }
    }
}
