//! Choosing the VM's IPA (guest physical address) width. Portable and unit-tested.
//!
//! Hypervisor.framework gives a VM 36 bits (64 GiB) unless the VM configuration asks for more
//! (`hv_vm_config_set_ipa_size`, macOS 13), up to `hv_vm_config_get_max_ipa_size`. The backend
//! tells the guest the width through ID_AA64MMFR0_EL1.PARange (`features::guest_mmfr0`), which
//! can only say 32, 36, 40, 42, 44, 48 or 52 bits (Arm ARM D24.2.80), so a wider request is
//! rounded up to one of those — and must then still fit the host's maximum.

use crate::arch::aarch64::features::PARANGE_BITS;

/// The IPA width to configure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpaChoice {
    /// The framework's default is wide enough: leave the configuration alone.
    Default,
    /// Ask for this many bits.
    Set(u32),
}

/// The guest needs more address space than the host offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the guest needs {required}-bit guest physical addresses ({parange} as the guest CPU can \
     be told); this Mac offers at most {max}: use less --mem"
)]
pub struct IpaTooWide {
    pub required: u32,
    /// `required` rounded up to a width PARange can express.
    pub parange: u32,
    pub max: u32,
}

/// Picks the width for a VM whose RAM and MMIO reach up to `required` bits, given the
/// framework's `default` and `max` widths.
pub fn choose_ipa_bits(required: u32, default: u32, max: u32) -> Result<IpaChoice, IpaTooWide> {
    if required <= default {
        return Ok(IpaChoice::Default);
    }
    let parange = PARANGE_BITS.iter().copied().find(|&bits| bits >= required).unwrap_or(u32::MAX);
    if parange > max {
        return Err(IpaTooWide { required, parange, max });
    }
    Ok(IpaChoice::Set(parange))
}

/// The width the VM gets with `choice` on a host whose default is `default`.
pub fn ipa_bits(choice: IpaChoice, default: u32) -> u32 {
    match choice {
        IpaChoice::Default => default,
        IpaChoice::Set(bits) => bits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_kept_when_it_suffices() {
        assert_eq!(choose_ipa_bits(31, 36, 40), Ok(IpaChoice::Default));
        assert_eq!(choose_ipa_bits(36, 36, 40), Ok(IpaChoice::Default));
    }

    #[test]
    fn wider_requests_round_up_to_a_parange_step() {
        assert_eq!(choose_ipa_bits(37, 36, 40), Ok(IpaChoice::Set(40)));
        assert_eq!(choose_ipa_bits(41, 36, 42), Ok(IpaChoice::Set(42)));
        assert_eq!(ipa_bits(IpaChoice::Set(42), 36), 42);
        assert_eq!(ipa_bits(IpaChoice::Default, 36), 36);
    }

    #[test]
    fn a_width_the_guest_cannot_be_told_is_an_error() {
        // 41 bits would be mapped, but PARange can only say 40 or 42: the guest would ignore
        // the RAM above 40 bits (or believe in addresses up to 42).
        let err = choose_ipa_bits(41, 36, 41).unwrap_err();
        assert_eq!(err, IpaTooWide { required: 41, parange: 42, max: 41 });
        assert!(choose_ipa_bits(53, 36, 60).is_err());
    }

    #[test]
    fn too_wide_is_an_error() {
        let err = choose_ipa_bits(43, 36, 42).unwrap_err();
        assert_eq!(err, IpaTooWide { required: 43, parange: 44, max: 42 });
        assert!(err.to_string().contains("at most 42"));
    }

    #[test]
    fn hvruns_memory_map_fits_the_default_up_to_63_gib() {
        let bits = boot::layout::required_ipa_bits(63 << 30);
        assert_eq!(choose_ipa_bits(bits, 36, 40), Ok(IpaChoice::Default));
        let bits = boot::layout::required_ipa_bits(64 << 30);
        assert_eq!(choose_ipa_bits(bits, 36, 40), Ok(IpaChoice::Set(40)));
    }
}
