//! Choosing the VM's IPA (guest physical address) width. Portable and unit-tested.
//!
//! Hypervisor.framework gives a VM 36 bits (64 GiB) unless the VM configuration asks for more
//! (`hv_vm_config_set_ipa_size`, macOS 13), up to `hv_vm_config_get_max_ipa_size`. The width
//! also becomes the guest's ID_AA64MMFR0_EL1.PARange, which can only say 32, 36, 40, 42, 44, 48
//! or 52 bits (Arm ARM D24.2.80), so a wider request is rounded up to one of those.

/// The widths ID_AA64MMFR0_EL1.PARange can express.
const PARANGE_BITS: [u32; 7] = [32, 36, 40, 42, 44, 48, 52];

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
#[error("the guest needs {required}-bit guest physical addresses; this Mac offers at most {max}")]
pub struct IpaTooWide {
    pub required: u32,
    pub max: u32,
}

/// Picks the width for a VM whose RAM and MMIO reach up to `required` bits, given the
/// framework's `default` and `max` widths.
pub fn choose_ipa_bits(required: u32, default: u32, max: u32) -> Result<IpaChoice, IpaTooWide> {
    if required <= default {
        return Ok(IpaChoice::Default);
    }
    if required > max {
        return Err(IpaTooWide { required, max });
    }
    let rounded = PARANGE_BITS.iter().copied().find(|&bits| bits >= required).unwrap_or(max);
    Ok(IpaChoice::Set(rounded.min(max)))
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
        // A maximum that is not a PARange step still caps the request.
        assert_eq!(choose_ipa_bits(41, 36, 41), Ok(IpaChoice::Set(41)));
    }

    #[test]
    fn too_wide_is_an_error() {
        let err = choose_ipa_bits(43, 36, 42).unwrap_err();
        assert_eq!(err, IpaTooWide { required: 43, max: 42 });
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
