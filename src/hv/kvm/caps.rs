//! What this kernel's KVM offers (`hvrun host`): extensions, limits, and a probe VM that tries
//! the vGICv3 and the VM attributes a capability check cannot see.

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
    KVM_ARM_VM_SMCCC_CTRL, KVM_ARM_VM_SMCCC_FILTER, KVM_CAP_ARM_MTE, KVM_CAP_ARM_NISV_TO_USER,
};
use kvm_ioctls::{Cap, Kvm, VmFd};

use super::KVM_API_VERSION;
use crate::hv::capabilities::KvmCapabilities;
use crate::hv::{HvError, Result};

/// KVM_CAP_ARM_EL2 (Linux 6.16, include/uapi/linux/kvm.h); newer than kvm-bindings 0.14.
const KVM_CAP_ARM_EL2: u64 = 240;

/// Reads what `/dev/kvm` offers. Creates (and drops) one small VM.
pub fn query() -> Result<KvmCapabilities> {
    let kvm = Kvm::new().map_err(|e| HvError::new("cannot open /dev/kvm", e))?;
    let api_version = kvm.get_api_version();
    if api_version != KVM_API_VERSION {
        return Err(HvError::new(
            format!("/dev/kvm answers API version {api_version}, expected {KVM_API_VERSION}"),
            std::io::Error::from(std::io::ErrorKind::Unsupported),
        ));
    }
    let ipa_limit = kvm.get_host_ipa_limit();
    // The smallest stage-2 a VM can have (32 bits) fits every host; without the IPA-size
    // capability the kernel's fixed 40 bits are the only choice.
    let vm = if ipa_limit > 0 { kvm.create_vm_with_ipa_size(32) } else { kvm.create_vm() }
        .map_err(|e| HvError::new("KVM_CREATE_VM (probe)", e))?;
    let has = |cap: Cap| kvm.check_extension(cap);
    Ok(KvmCapabilities {
        api_version,
        kernel_release: kernel_release(),
        max_vcpus: u32::try_from(kvm.get_max_vcpus()).unwrap_or(u32::MAX),
        recommended_vcpus: u32::try_from(kvm.get_nr_vcpus()).unwrap_or(u32::MAX),
        max_ipa_bits: u32::try_from(ipa_limit).ok().filter(|&bits| bits > 0),
        vgic_v3: can_create_vgic_v3(&vm),
        el2: kvm.check_extension_raw(KVM_CAP_ARM_EL2) > 0,
        counter_hz: cntfrq_el0(),
        ioeventfd: has(Cap::Ioeventfd),
        irqfd: has(Cap::Irqfd),
        smccc_filter: vm_has_attr(&vm, KVM_ARM_VM_SMCCC_CTRL, KVM_ARM_VM_SMCCC_FILTER),
        counter_offset: has(Cap::CounterOffset),
        nisv_to_user: kvm.check_extension_raw(u64::from(KVM_CAP_ARM_NISV_TO_USER)) > 0,
        pmu_v3: has(Cap::ArmPmuV3),
        sve: has(Cap::ArmSve),
        pointer_auth: has(Cap::ArmPtrAuthAddress) && has(Cap::ArmPtrAuthGeneric),
        mte: vm.check_extension_raw(u64::from(KVM_CAP_ARM_MTE)) > 0,
    })
}

/// Whether the VM can have a vGICv3. A real device, dropped at once: kvm-ioctls would wrap
/// the fd field of a KVM_CREATE_DEVICE_TEST call (which creates none) as a file.
fn can_create_vgic_v3(vm: &VmFd) -> bool {
    let mut dev =
        kvm_create_device { type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, fd: 0, flags: 0 };
    vm.create_device(&mut dev).is_ok()
}

/// KVM_HAS_DEVICE_ATTR on the VM fd. Kernels without VM attributes on arm64 (before 6.4)
/// refuse the ioctl, which reads as "no".
fn vm_has_attr(vm: &VmFd, group: u32, attr: u32) -> bool {
    let attr = kvm_device_attr { group, attr: u64::from(attr), addr: 0, flags: 0 };
    vm.has_device_attr(&attr).is_ok()
}

/// `uname -r`.
fn kernel_release() -> String {
    // SAFETY: utsname is plain C data; all-zero bytes are a valid value.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes NUL-terminated strings into the struct it is given.
    if unsafe { libc::uname(&mut name) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname succeeded, so `release` holds a NUL-terminated string inside the array.
    let release = unsafe { std::ffi::CStr::from_ptr(name.release.as_ptr()) };
    release.to_string_lossy().into_owned()
}

/// CNTFRQ_EL0: KVM gives guests the host's counter frequency.
fn cntfrq_el0() -> u64 {
    let hz: u64;
    // SAFETY: reads a system register EL0 may read (Linux sets CNTKCTL_EL1.EL0VCTEN, and
    // CNTFRQ_EL0 is readable whenever a counter is); no memory is touched.
    unsafe { std::arch::asm!("mrs {}, cntfrq_el0", out(reg) hz, options(nomem, nostack)) };
    hz
}
