//! What this Mac's Hypervisor.framework offers a VM, read once when hvrun opens it.

use hv_sys::newer::GicApi;

/// What this Mac's Hypervisor.framework offers.
#[derive(Clone, Copy, Debug)]
pub struct HostCaps {
    pub max_vcpus: u32,
    pub default_ipa_bits: u32,
    pub max_ipa_bits: u32,
    /// The in-kernel GICv3 (macOS 15).
    pub gic: Option<&'static GicApi>,
}

#[cfg(target_os = "macos")]
pub use macos::*;

#[cfg(target_os = "macos")]
mod macos {
    use hv_sys::newer::GicApi;
    use hv_sys::*;

    use super::HostCaps;
    use crate::hv::hvf::errors::check;
    use crate::hv::Result;

    /// Reads the limits of the framework. Needs a VM to exist (the probe VM of
    /// `HvfHypervisor::open`).
    pub fn query_caps() -> Result<HostCaps> {
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
    pub fn hv_support() -> Option<i32> {
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
}
