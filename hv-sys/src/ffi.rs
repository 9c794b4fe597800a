//! Functions linked from Hypervisor.framework: those of macOS 11 (`hv_vm.h`, `hv_vcpu.h`,
//! `hv_vcpu_config.h`) and the macOS 13 VM configuration (`hv_vm_config.h`). hvrun needs
//! macOS 13 or later; newer functions are in [`crate::newer`].
//!
//! Per Apple's documentation, every per-vCPU function must be called on the thread that created
//! the vCPU, except `hv_vcpus_exit`.

use core::ffi::c_void;

use crate::types::*;

#[link(name = "Hypervisor", kind = "framework")]
extern "C" {
    // hv_vm.h (macOS 11)
    pub fn hv_vm_get_max_vcpu_count(max_vcpu_count: *mut u32) -> hv_return_t;
    /// `config` may be null (the defaults).
    pub fn hv_vm_create(config: hv_vm_config_t) -> hv_return_t;
    /// Requires every vCPU to be destroyed first.
    pub fn hv_vm_destroy() -> hv_return_t;
    /// `addr` and `ipa` page-aligned, `size` a multiple of the host page size, and `addr` inside a
    /// single VM region (mmap, not malloc).
    pub fn hv_vm_map(
        addr: *mut c_void,
        ipa: hv_ipa_t,
        size: usize,
        flags: hv_memory_flags_t,
    ) -> hv_return_t;
    pub fn hv_vm_unmap(ipa: hv_ipa_t, size: usize) -> hv_return_t;
    pub fn hv_vm_protect(ipa: hv_ipa_t, size: usize, flags: hv_memory_flags_t) -> hv_return_t;

    // hv_vm_config.h (macOS 13)
    pub fn hv_vm_config_create() -> hv_vm_config_t;
    pub fn hv_vm_config_get_max_ipa_size(ipa_bit_length: *mut u32) -> hv_return_t;
    pub fn hv_vm_config_get_default_ipa_size(ipa_bit_length: *mut u32) -> hv_return_t;
    pub fn hv_vm_config_set_ipa_size(config: hv_vm_config_t, ipa_bit_length: u32) -> hv_return_t;
    pub fn hv_vm_config_get_ipa_size(
        config: hv_vm_config_t,
        ipa_bit_length: *mut u32,
    ) -> hv_return_t;

    // hv_vcpu_config.h (macOS 11)
    pub fn hv_vcpu_config_create() -> hv_vcpu_config_t;
    pub fn hv_vcpu_config_get_feature_reg(
        config: hv_vcpu_config_t,
        feature_reg: hv_feature_reg_t,
        value: *mut u64,
    ) -> hv_return_t;

    // hv_vcpu.h (macOS 11)
    /// Binds the new vCPU to the calling thread; `exit` receives a pointer to the vCPU's exit
    /// record, which every `hv_vcpu_run` rewrites.
    pub fn hv_vcpu_create(
        vcpu: *mut hv_vcpu_t,
        exit: *mut *const hv_vcpu_exit_t,
        config: hv_vcpu_config_t,
    ) -> hv_return_t;
    pub fn hv_vcpu_destroy(vcpu: hv_vcpu_t) -> hv_return_t;
    pub fn hv_vcpu_get_reg(vcpu: hv_vcpu_t, reg: hv_reg_t, value: *mut u64) -> hv_return_t;
    pub fn hv_vcpu_set_reg(vcpu: hv_vcpu_t, reg: hv_reg_t, value: u64) -> hv_return_t;
    pub fn hv_vcpu_get_sys_reg(vcpu: hv_vcpu_t, reg: hv_sys_reg_t, value: *mut u64) -> hv_return_t;
    pub fn hv_vcpu_set_sys_reg(vcpu: hv_vcpu_t, reg: hv_sys_reg_t, value: u64) -> hv_return_t;
    pub fn hv_vcpu_get_pending_interrupt(
        vcpu: hv_vcpu_t,
        type_: hv_interrupt_type_t,
        pending: *mut bool,
    ) -> hv_return_t;
    /// The pending state is cleared when `hv_vcpu_run` returns: set it before every run.
    pub fn hv_vcpu_set_pending_interrupt(
        vcpu: hv_vcpu_t,
        type_: hv_interrupt_type_t,
        pending: bool,
    ) -> hv_return_t;
    pub fn hv_vcpu_set_trap_debug_exceptions(vcpu: hv_vcpu_t, value: bool) -> hv_return_t;
    pub fn hv_vcpu_set_trap_debug_reg_accesses(vcpu: hv_vcpu_t, value: bool) -> hv_return_t;
    pub fn hv_vcpu_run(vcpu: hv_vcpu_t) -> hv_return_t;
    /// The one cross-thread call: the targets leave the guest (or do not enter it on their next
    /// `hv_vcpu_run`) with `HV_EXIT_REASON_CANCELED`.
    pub fn hv_vcpus_exit(vcpus: *const hv_vcpu_t, vcpu_count: u32) -> hv_return_t;
    /// Cumulative guest time, in `mach_absolute_time` units.
    pub fn hv_vcpu_get_exec_time(vcpu: hv_vcpu_t, time: *mut u64) -> hv_return_t;
    pub fn hv_vcpu_get_vtimer_mask(vcpu: hv_vcpu_t, vtimer_is_masked: *mut bool) -> hv_return_t;
    pub fn hv_vcpu_set_vtimer_mask(vcpu: hv_vcpu_t, vtimer_is_masked: bool) -> hv_return_t;
    /// `CNTVCT_EL0 = mach_absolute_time() - vtimer_offset` (CNTVOFF_EL2).
    pub fn hv_vcpu_get_vtimer_offset(vcpu: hv_vcpu_t, vtimer_offset: *mut u64) -> hv_return_t;
    pub fn hv_vcpu_set_vtimer_offset(vcpu: hv_vcpu_t, vtimer_offset: u64) -> hv_return_t;
}

/// `mach_timebase_info_data_t`: `nanoseconds = ticks * numer / denom`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct mach_timebase_info_data_t {
    pub numer: u32,
    pub denom: u32,
}

// From libSystem, which every macOS binary links.
extern "C" {
    /// Releases an OS object (`hv_vm_config_t`, `hv_gic_config_t`, ...).
    pub fn os_release(object: *mut c_void);
    /// The host counter the guest's virtual counter follows:
    /// `CNTVCT_EL0 = mach_absolute_time() - vtimer_offset` (`hv_vcpu.h`).
    pub fn mach_absolute_time() -> u64;
    /// The counter's rate.
    pub fn mach_timebase_info(info: *mut mach_timebase_info_data_t) -> i32;
}
