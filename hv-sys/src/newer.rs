//! Functions introduced in macOS 15 (`hv_gic.h`, `hv_gic_config.h`, `hv_gic_parameters.h`,
//! and the EL2 part of `hv_vm_config.h`), looked up at run time with `dlsym`. Linking them
//! directly would stop the binary from loading on macOS 13 and 14; looked up, they are simply
//! absent there and hvrun falls back to its own GIC.
//!
//! Each table is all or nothing: it exists only when every function in it was found.

use core::ffi::{c_char, c_void, CStr};
use std::sync::OnceLock;

use crate::types::*;

/// Looks `name` up in every image loaded into the process (`RTLD_DEFAULT`).
fn symbol(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym only reads the NUL-terminated name; RTLD_DEFAULT is a valid handle.
    let ptr = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr() as *const c_char) };
    (!ptr.is_null()).then_some(ptr)
}

/// Declares a table of function pointers and the lookup that fills it.
macro_rules! symbol_table {
    ($(#[$doc:meta])* $table:ident { $($name:ident: fn($($arg:ty),*) -> $ret:ty;)* }) => {
        $(#[$doc])*
        #[allow(clippy::type_complexity)]
        #[derive(Clone, Copy, Debug)]
        pub struct $table {
            $(pub $name: unsafe extern "C" fn($($arg),*) -> $ret,)*
        }

        impl $table {
            /// Looks every function up once per process; `None` if any is missing.
            pub fn get() -> Option<&'static $table> {
                static TABLE: OnceLock<Option<$table>> = OnceLock::new();
                TABLE
                    .get_or_init(|| {
                        Some($table {
                            $($name: {
                                let name = concat!(stringify!($name), "\0");
                                let ptr = symbol(CStr::from_bytes_with_nul(name.as_bytes()).ok()?)?;
                                // SAFETY: the framework exports `$name` with exactly this C
                                // signature (transcribed from its header above).
                                unsafe {
                                    core::mem::transmute::<
                                        *mut c_void,
                                        unsafe extern "C" fn($($arg),*) -> $ret,
                                    >(ptr)
                                }
                            },)*
                        })
                    })
                    .as_ref()
            }
        }
    };
}

symbol_table! {
    /// The in-kernel GICv3 (macOS 15). Create it after `hv_vm_create` and before any vCPU.
    GicApi {
        hv_gic_config_create: fn() -> hv_gic_config_t;
        hv_gic_config_set_distributor_base: fn(hv_gic_config_t, hv_ipa_t) -> hv_return_t;
        hv_gic_config_set_redistributor_base: fn(hv_gic_config_t, hv_ipa_t) -> hv_return_t;
        hv_gic_create: fn(hv_gic_config_t) -> hv_return_t;
        hv_gic_reset: fn() -> hv_return_t;
        hv_gic_get_distributor_size: fn(*mut usize) -> hv_return_t;
        hv_gic_get_distributor_base_alignment: fn(*mut usize) -> hv_return_t;
        hv_gic_get_redistributor_region_size: fn(*mut usize) -> hv_return_t;
        hv_gic_get_redistributor_size: fn(*mut usize) -> hv_return_t;
        hv_gic_get_redistributor_base_alignment: fn(*mut usize) -> hv_return_t;
        hv_gic_get_spi_interrupt_range: fn(*mut u32, *mut u32) -> hv_return_t;
        hv_gic_get_redistributor_base: fn(hv_vcpu_t, *mut hv_ipa_t) -> hv_return_t;
        hv_gic_get_intid: fn(hv_gic_intid_t, *mut u32) -> hv_return_t;
        // Any thread. Level-triggered SPIs follow `level`; for edge-triggered ones `true` is an
        // edge and `false` is ignored.
        hv_gic_set_spi: fn(u32, bool) -> hv_return_t;
        hv_gic_send_msi: fn(hv_ipa_t, u32) -> hv_return_t;
        hv_gic_get_distributor_reg: fn(hv_gic_distributor_reg_t, *mut u64) -> hv_return_t;
        // Owning thread of the vCPU.
        hv_gic_get_redistributor_reg:
            fn(hv_vcpu_t, hv_gic_redistributor_reg_t, *mut u64) -> hv_return_t;
        hv_gic_set_redistributor_reg:
            fn(hv_vcpu_t, hv_gic_redistributor_reg_t, u64) -> hv_return_t;
        hv_gic_get_icc_reg: fn(hv_vcpu_t, hv_gic_icc_reg_t, *mut u64) -> hv_return_t;
        hv_gic_set_icc_reg: fn(hv_vcpu_t, hv_gic_icc_reg_t, u64) -> hv_return_t;
    }
}

symbol_table! {
    /// Guest EL2 (nested virtualisation; macOS 15 on M3 or later).
    El2Api {
        hv_vm_config_get_el2_supported: fn(*mut bool) -> hv_return_t;
        hv_vm_config_get_el2_enabled: fn(hv_vm_config_t, *mut bool) -> hv_return_t;
        hv_vm_config_set_el2_enabled: fn(hv_vm_config_t, bool) -> hv_return_t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_misses_unknown_names() {
        assert!(symbol(c"hv_no_such_function").is_none());
    }

    /// A statically linked binary (hvrun's arm64 Linux test builds use `+crt-static`) has no
    /// dynamic symbol table for dlsym to search; macOS binaries are always dynamic.
    #[cfg(not(target_feature = "crt-static"))]
    #[test]
    fn lookup_finds_libc() {
        assert!(symbol(c"malloc").is_some());
    }

    #[cfg(not(target_os = "macos"))]
    #[test]
    fn tables_are_absent_without_the_framework() {
        assert!(GicApi::get().is_none());
        assert!(El2Api::get().is_none());
    }
}
