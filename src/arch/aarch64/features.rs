//! The ID register values a guest should see, computed from what the hypervisor reports and
//! what the VM really offers (Arm ARM D24.2: ID_AA64PFR0_EL1, ID_AA64PFR1_EL1,
//! ID_AA64MMFR0_EL1). Hypervisor.framework passes most of the host's values through; these
//! functions fix the fields where the VM differs from the host.

/// A 4-bit ID register field at `shift`.
fn field(value: u64, shift: u32) -> u64 {
    (value >> shift) & 0xf
}

/// `value` with the 4-bit field at `shift` replaced by `new`.
fn with_field(value: u64, shift: u32, new: u64) -> u64 {
    (value & !(0xf << shift)) | ((new & 0xf) << shift)
}

/// ID_AA64PFR1_EL1.SME [27:24]: the Scalable Matrix Extension.
const PFR1_SME: u32 = 24;

/// ID_AA64PFR1_EL1 for a guest: with EL2 (`--nested`) SME is hidden (the whole field, 0):
/// libkrun found nested guests on M4 break after enabling the MMU otherwise (commit c8c5185d,
/// "mask out SME in ID_AA64PFR1_EL1 ... to fix nested virt on M4", which clears only its low
/// two bits).
pub fn guest_pfr1(reported: u64, el2: bool) -> u64 {
    if el2 {
        with_field(reported, PFR1_SME, 0)
    } else {
        reported
    }
}

/// ID_AA64PFR0_EL1.EL2 [11:8]: 1 = EL2 implemented, AArch64 only.
const PFR0_EL2: u32 = 8;
/// ID_AA64PFR0_EL1.GIC [27:24]: 1 = the GICv3 CPU interface system registers are implemented.
const PFR0_GIC: u32 = 24;

/// ID_AA64PFR0_EL1 for a guest of hvrun's machine, from the value the hypervisor reports.
///
/// - GIC = 1: every hvrun VM has a GICv3 (in-kernel or userspace) whose CPU interface the
///   guest reaches through ICC_* system registers, but Apple cores report GIC = 0 (no GIC in
///   the hardware). Linux's `__init_el2_gicv3` skips ICC_SRE_EL2 setup when it reads 0, and at
///   EL1 its "GIC system register CPU interface" capability stays off. QEMU's HVF backend sets
///   the same bit when it gives the VM a GICv3.
/// - EL2 = 1 with `el2` (`--nested`), unless the hypervisor already reports EL2 (libkrun's
///   nested mode sets it likewise).
pub fn guest_pfr0(reported: u64, el2: bool) -> u64 {
    let value = with_field(reported, PFR0_GIC, 1);
    if el2 && field(value, PFR0_EL2) == 0 {
        with_field(value, PFR0_EL2, 1)
    } else {
        value
    }
}

/// ID_AA64MMFR0_EL1.PARange [3:0]: the physical address widths its values 0..=6 stand for
/// (Arm ARM D24.2.80).
pub const PARANGE_BITS: [u32; 7] = [32, 36, 40, 42, 44, 48, 52];

/// ID_AA64MMFR0_EL1 for a guest whose physical address space is `ipa_bits` wide: PARange
/// lowered to the widest value within it (never raised above what the hypervisor reports), so
/// the guest — and a hypervisor nested in it sizing VTCR_EL2.PS from it — does not try to use
/// addresses the VM cannot map. QEMU's HVF backend does the same
/// (`clamp_id_aa64mmfr0_parange_to_ipa_size`).
pub fn guest_mmfr0(reported: u64, ipa_bits: u32) -> u64 {
    let fits = PARANGE_BITS.iter().rposition(|&bits| bits <= ipa_bits).unwrap_or(0) as u64;
    with_field(reported, 0, field(reported, 0).min(fits))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ID_AA64PFR0_EL1 shaped like an Apple core's (illustrative, not read from one): EL0
    /// and EL1 AArch64 (0x11 in [7:0]), CSV2 and CSV3 set, GIC = 0 (as m1n1's M4 dump shows),
    /// EL2 = 0.
    const APPLE_EL1: u64 = 0x1100_0000_0000_0011;

    #[test]
    fn pfr0_table() {
        let table = [
            // (reported, el2) → guest
            (APPLE_EL1, false, APPLE_EL1 | 1 << 24),
            (APPLE_EL1, true, APPLE_EL1 | 1 << 24 | 1 << 8),
            (APPLE_EL1 | 2 << 8, true, APPLE_EL1 | 1 << 24 | 2 << 8), // EL2 already reported
            (APPLE_EL1 | 3 << 24, false, APPLE_EL1 | 1 << 24), // GICv4.1 claimed: we offer v3
            (0, false, 1 << 24),
            (u64::MAX, true, !(0xe << 24)),
        ];
        for (reported, el2, want) in table {
            assert_eq!(guest_pfr0(reported, el2), want, "{reported:#x} el2 {el2}");
        }
    }

    #[test]
    fn sme_is_hidden_from_nested_guests_only() {
        let m4 = 0x0000_0000_0200_0121; // SME = 2 (SME2) in [27:24], other fields set
        assert_eq!(guest_pfr1(m4, true), 0x0000_0000_0000_0121);
        assert_eq!(guest_pfr1(m4, false), m4);
        assert_eq!(guest_pfr1(0xf << 24, true), 0, "every SME value, not just the low bits");
    }

    /// Finding 6 of reviews/hvf-review.md.
    #[test]
    fn parange_is_clamped_to_the_vms_ipa_width() {
        // A host reporting 42 bits (PARange 3) with other fields set.
        let host = 0x0000_1122_0010_0f23;
        let table = [
            (36, 0x0000_1122_0010_0f21), // the framework's default 36 bits: PARange 1
            (40, 0x0000_1122_0010_0f22),
            (41, 0x0000_1122_0010_0f22), // 41 is no PARange value: 40
            (42, host),
            (48, host),                  // never raised above the host's
            (31, 0x0000_1122_0010_0f20), // below 32: the smallest value PARange has
        ];
        for (ipa_bits, want) in table {
            assert_eq!(guest_mmfr0(host, ipa_bits), want, "{ipa_bits} bits");
        }
        assert_eq!(guest_mmfr0(0x6, 52), 0x6);
        assert_eq!(guest_mmfr0(0xf, 40), 0x2, "a reserved value is clamped too");
    }

    #[test]
    fn fields() {
        assert_eq!(field(0x1234_5678, 8), 6);
        assert_eq!(with_field(0x1234_5678, 8, 0xa), 0x1234_5a78);
        assert_eq!(with_field(0, 60, 0x1f), 0xf << 60, "the new value is 4 bits");
    }
}
