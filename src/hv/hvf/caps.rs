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
    use crate::arch::aarch64::timer::{timebase_hz, CounterRates};
    use crate::hv::hvf::errors::check;
    use crate::hv::Result;

    /// CNTFRQ_EL0 as this process reads it: the rate of the counter its VMs see (macOS scales
    /// it for the process and, reportedly, its VMs alike: utmapp/UTM#6942).
    #[cfg(target_arch = "aarch64")]
    pub fn cntfrq_el0() -> u64 {
        let hz: u64;
        // SAFETY: reads a system register EL0 may read (CNTKCTL_EL1 allows it on macOS);
        // no memory is touched.
        unsafe { std::arch::asm!("mrs {}, cntfrq_el0", out(reg) hz, options(nomem, nostack)) };
        hz
    }

    /// Not an arm64 Mac: no counter register to read (CounterRates falls back).
    #[cfg(not(target_arch = "aarch64"))]
    pub fn cntfrq_el0() -> u64 {
        0
    }

    /// Ticks per second of `mach_absolute_time`, the clock the vtimer offset is defined
    /// against.
    pub fn mach_hz() -> Option<u64> {
        let mut info = mach_timebase_info_data_t::default();
        // SAFETY: writes the two fields of `info`.
        let ret = unsafe { mach_timebase_info(&mut info) };
        if ret != 0 {
            return None;
        }
        timebase_hz(info.numer, info.denom)
    }

    /// The guest counter's rate and the host clock's, read once per VM.
    pub fn counter_rates() -> CounterRates {
        CounterRates::new(cntfrq_el0(), mach_hz())
    }

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

    /// A string sysctl (`kern.osproductversion`, `machdep.cpu.brand_string`), or `None`.
    pub fn sysctl_string(name: &std::ffi::CStr) -> Option<String> {
        let mut buf = [0u8; 256];
        let mut size = buf.len();
        // SAFETY: the name is NUL-terminated; `buf` and `size` describe a writable buffer,
        // which the call fills with at most `size` bytes.
        let ret = unsafe {
            libc::sysctlbyname(
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                &mut size,
                std::ptr::null_mut(),
                0,
            )
        };
        if ret != 0 {
            return None;
        }
        let text = buf.get(..size.min(buf.len()))?;
        let text = text.split(|&b| b == 0).next().unwrap_or_default();
        Some(String::from_utf8_lossy(text).into_owned())
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
