//! `hvrun host`'s report for made-up hosts: which facts, their values, the table and the JSON.

use super::*;
use crate::arch::aarch64::timer::CounterRates;
use crate::hv::capabilities::HvfVmLimits;

/// Linux 6.1 on the emulated machine the e2e tests use, as far as a test can make it up.
fn kvm_6_1() -> KvmCapabilities {
    KvmCapabilities {
        api_version: 12,
        kernel_release: "6.1.0-26-arm64".into(),
        max_vcpus: 512,
        recommended_vcpus: 2,
        max_ipa_bits: Some(48),
        vgic_v3: true,
        el2: false,
        counter_hz: 62_500_000,
        ioeventfd: true,
        irqfd: true,
        smccc_filter: false,
        counter_offset: false,
        nisv_to_user: true,
        pmu_v3: true,
        sve: true,
        pointer_auth: true,
        mte: false,
    }
}

fn m3_mac() -> HvfCapabilities {
    HvfCapabilities {
        macos_version: "15.1 (24B83)".into(),
        chip: "Apple M3 Pro".into(),
        hv_support: Some(1),
        usable: Ok(HvfVmLimits {
            max_vcpus: 64,
            default_ipa_bits: 36,
            max_ipa_bits: 42,
            gic_geometry: Some(Ok(GicGeometry {
                distributor_size: 0x1_0000,
                distributor_alignment: 0x1_0000,
                redistributor_region_size: 64 * 0x2_0000,
                redistributor_size: 0x2_0000,
                redistributor_alignment: 0x2_0000,
                spi_base: 32,
                spi_count: 988,
            })),
            gic: GicChoice::InKernel,
            el2_supported: Some(true),
        }),
        counter: CounterRates { counter_hz: 24_000_000, host_hz: 24_000_000 },
    }
}

#[test]
fn a_kvm_host_says_what_it_can_do_one_line_each() {
    let report = HostReport::kvm(&kvm_6_1());
    assert!(report.usable);
    assert_eq!(report.value("backend"), Some(&json!("KVM")));
    assert_eq!(report.value("max_vcpus"), Some(&json!(512)));
    assert_eq!(report.value("ipa_bits"), Some(&json!(48)));
    assert_eq!(report.value("gic"), Some(&json!("in-kernel GICv3")));
    assert_eq!(report.value("smccc_filter"), Some(&json!(false)));
    assert_eq!(report.value("ioeventfd"), Some(&json!(true)));
    let table = report.to_table();
    assert_eq!(table.lines().count(), report.facts.len());
    assert!(table.starts_with("backend         KVM "), "{table}");
    assert!(table.contains("Linux 6.1.0-26-arm64"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("counter_offset  no ")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("counter_hz      62500000 ")), "{table}");
}

#[test]
fn the_json_carries_the_same_facts_as_the_table() {
    let report = HostReport::kvm(&kvm_6_1());
    let json: Value = serde_json::from_str(&report.to_json()).unwrap();
    for f in &report.facts {
        assert_eq!(json[f.key], f.value, "{}", f.key);
        if !f.note.is_empty() {
            assert_eq!(json["notes"][f.key], json!(f.note), "{}", f.key);
        }
    }
    assert_eq!(json.as_object().unwrap().len(), report.facts.len() + 1, "+ notes");
}

#[test]
fn an_old_kernel_without_a_vgic_is_not_usable() {
    let old = KvmCapabilities { max_ipa_bits: None, vgic_v3: false, ..kvm_6_1() };
    let report = HostReport::kvm(&old);
    assert!(!report.usable);
    assert_eq!(report.value("ipa_bits"), Some(&json!(40)), "pre-4.20 VMs get 40 bits");
    assert_eq!(report.value("gic"), Some(&json!("none")));
}

#[test]
fn a_mac_reports_its_gic_geometry_el2_and_both_clocks() {
    let report = HostReport::hvf(&m3_mac());
    assert!(report.usable);
    assert_eq!(report.value("backend"), Some(&json!("Hypervisor.framework")));
    assert_eq!(report.value("ipa_bits"), Some(&json!(42)));
    assert_eq!(report.value("nested"), Some(&json!(true)));
    assert_eq!(report.value("gic"), Some(&json!("in-kernel GICv3")));
    let geometry = report.value("gic_geometry").and_then(Value::as_str).unwrap();
    assert!(geometry.contains("redistributors 0x20000 each, region 0x800000"), "{geometry}");
    assert!(geometry.ends_with("SPIs 32..1020"), "{geometry}");
    let table = report.to_table();
    assert!(table.contains("macOS 15.1 (24B83) on Apple M3 Pro"), "{table}");
    assert!(table.contains("the same rate as the counter"), "{table}");
}

#[test]
fn an_m4_with_a_scaled_counter_asks_for_a_report() {
    let m4 = HvfCapabilities {
        counter: CounterRates { counter_hz: 1_000_000_000, host_hz: 24_000_000 },
        ..m3_mac()
    };
    let report = HostReport::hvf(&m4);
    assert_eq!(report.value("counter_hz"), Some(&json!(1_000_000_000u64)));
    assert_eq!(report.value("host_clock_hz"), Some(&json!(24_000_000u64)));
    assert!(report.to_table().contains("please report this output"));
}

#[test]
fn a_mac_without_the_entitlement_says_why_and_is_not_usable() {
    let denied = HvfCapabilities {
        usable: Err("hv_vm_create: HV_DENIED (0xfae94007): ... sign hvrun with: codesign".into()),
        ..m3_mac()
    };
    let report = HostReport::hvf(&denied);
    assert!(!report.usable);
    assert_eq!(report.value("max_vcpus"), None, "nothing read without a VM");
    assert!(report.to_table().contains("sign hvrun with: codesign"));
    let macos13 = HvfCapabilities {
        usable: Ok(HvfVmLimits {
            gic_geometry: None,
            gic: GicChoice::Userspace("no in-kernel GIC (macOS 13/14)".into()),
            el2_supported: None,
            ..m3_mac().usable.unwrap()
        }),
        ..m3_mac()
    };
    let report = HostReport::hvf(&macos13);
    assert_eq!(report.value("gic"), Some(&json!("userspace GICv3")));
    assert_eq!(report.value("gic_geometry"), Some(&Value::Null));
    assert_eq!(report.value("nested"), Some(&json!(false)));
    assert!(report.to_table().lines().any(|l| l.starts_with("gic_geometry    - ")));
}

#[test]
fn a_host_without_a_backend() {
    let report = HostReport::unavailable("none", "no arm64 virtualisation here");
    assert!(!report.usable);
    assert_eq!(
        report.to_table(),
        "backend         none\nusable          no                 no arm64 virtualisation here\n"
    );
    let json: Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["usable"], json!(false));
}
