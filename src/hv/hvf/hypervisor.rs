//! Hypervisor.framework as hvrun's `Hypervisor`: checked to be usable by this process, with
//! what it offers, and the VM it creates.

use hv_sys::newer::{El2Api, GicApi};

use super::caps::{counter_rates, hv_support, query_caps, sysctl_string, HostCaps};
use super::errors::{check, no_hv_support_message};
use super::gic::{choose_gic, geometry};
use super::options::HvfOptions;
use super::vm::{FrameworkVm, HvfVm};
use crate::hv::capabilities::{HvfCapabilities, HvfVmLimits};
use crate::hv::{HostLimits, HvError, Hypervisor, Result, VmSpec};
use boot::PsciConduit;

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
        // A probe VM with the defaults, destroyed when `probe` goes out of scope.
        let probe = FrameworkVm::create(std::ptr::null_mut())?;
        let caps = query_caps()?;
        drop(probe);
        if options.nested {
            check_el2()?;
        }
        Ok(HvfHypervisor { caps, options })
    }
}

/// What this Mac offers (`hvrun host`): the sysctls, the counter rates, and — if this process
/// can create a VM at all — the framework's limits, GIC geometry and EL2 support, read with
/// a probe VM.
pub fn host_capabilities() -> HvfCapabilities {
    let version = sysctl_string(c"kern.osproductversion").unwrap_or_else(|| "?".into());
    let build = sysctl_string(c"kern.osversion").unwrap_or_else(|| "?".into());
    let chip = sysctl_string(c"machdep.cpu.brand_string").unwrap_or_else(|| "?".into());
    let hv_support = hv_support();
    let usable = match no_hv_support_message(hv_support) {
        Some(why) => Err(why),
        None => vm_limits().map_err(|e| e.to_string()),
    };
    HvfCapabilities {
        macos_version: format!("{version} ({build})"),
        chip,
        hv_support,
        usable,
        counter: counter_rates(),
    }
}

/// The limits a VM has here, read with a probe VM that is destroyed before returning.
fn vm_limits() -> Result<HvfVmLimits> {
    let probe = FrameworkVm::create(std::ptr::null_mut())?;
    let caps = query_caps()?;
    let gic_geometry = caps.gic.map(|api| geometry(api).map_err(|e| e.to_string()));
    let gic = choose_gic(gic_geometry.clone(), false).map_err(unsupported)?;
    let el2_supported = El2Api::get().map(|api| {
        let mut supported = false;
        // SAFETY: writes one bool.
        let ret = unsafe { (api.hv_vm_config_get_el2_supported)(&mut supported) };
        ret == hv_sys::HV_SUCCESS && supported
    });
    drop(probe);
    Ok(HvfVmLimits {
        max_vcpus: caps.max_vcpus,
        default_ipa_bits: caps.default_ipa_bits,
        max_ipa_bits: caps.max_ipa_bits,
        gic_geometry,
        gic,
        el2_supported,
    })
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
