//! `hvrun host`: what this machine can do for hvrun's VMs — one fact a line, or as JSON. The
//! backends read the facts (`hv::kvm::caps`, `hv::hvf::host_capabilities`); this module names
//! and explains them, and is unit-tested with made-up hosts on any machine.

use serde_json::{json, Map, Value};

use crate::hv::capabilities::{HvfCapabilities, KvmCapabilities};
use crate::hv::hvf::gic::{GicChoice, GicGeometry};

/// One thing this host can or cannot do.
#[derive(Clone, Debug, PartialEq)]
pub struct Fact {
    /// The JSON key; also the table's first column.
    pub key: &'static str,
    pub value: Value,
    /// What it means for hvrun, or where the value comes from ("" for nothing to add).
    pub note: String,
}

/// Everything `hvrun host` says about this machine.
#[derive(Clone, Debug, PartialEq)]
pub struct HostReport {
    pub facts: Vec<Fact>,
    /// Whether hvrun can run VMs here (the exit code says it too).
    pub usable: bool,
}

fn fact(key: &'static str, value: impl Into<Value>, note: impl Into<String>) -> Fact {
    Fact { key, value: value.into(), note: note.into() }
}

fn yes_no(key: &'static str, have: bool, note: &str) -> Fact {
    fact(key, have, note)
}

impl HostReport {
    /// The report for a KVM host.
    pub fn kvm(c: &KvmCapabilities) -> Self {
        let usable = c.api_version == 12 && c.vgic_v3;
        let (ipa, ipa_note) = match c.max_ipa_bits {
            Some(bits) => (bits, "the widest a VM can ask for (KVM_CAP_ARM_VM_IPA_SIZE)"),
            None => (40, "fixed: this kernel predates KVM_CAP_ARM_VM_IPA_SIZE (4.20)"),
        };
        let facts = vec![
            fact("backend", "KVM", format!("API {}, Linux {}", c.api_version, c.kernel_release)),
            fact("usable", usable, if usable { "" } else { "hvrun needs API 12 and a vGICv3" }),
            fact(
                "max_vcpus",
                c.max_vcpus,
                format!(
                    "KVM_CAP_MAX_VCPUS; recommended {} (KVM_CAP_NR_VCPUS); hvrun's memory map \
                     holds {}",
                    c.recommended_vcpus,
                    boot::layout::MAX_VCPUS
                ),
            ),
            fact("ipa_bits", ipa, ipa_note),
            fact(
                "gic",
                if c.vgic_v3 { "in-kernel GICv3" } else { "none" },
                if c.vgic_v3 { "KVM's vGICv3" } else { "no vGICv3: hvrun cannot run here" },
            ),
            yes_no(
                "nested",
                c.el2,
                "KVM_CAP_ARM_EL2 (Linux 6.16): EL2 for guests; hvrun's --nested is \
                 Hypervisor.framework only",
            ),
            fact("counter_hz", c.counter_hz, "CNTFRQ_EL0: the guests' counter rate"),
            yes_no(
                "ioeventfd",
                c.ioeventfd,
                "virtio queue notifications reach hvrun's device threads without an exit",
            ),
            yes_no("irqfd", c.irqfd, "unused: hvrun raises its level interrupts with KVM_IRQ_LINE"),
            yes_no(
                "smccc_filter",
                c.smccc_filter,
                "KVM_ARM_VM_SMCCC_FILTER (Linux 6.4): HVC/SMC calls could reach the VMM; \
                 without it KVM answers every one",
            ),
            yes_no(
                "counter_offset",
                c.counter_offset,
                "KVM_CAP_COUNTER_OFFSET (Linux 6.4): one counter offset per VM, to stop guest \
                 time while paused",
            ),
            yes_no(
                "nisv_to_user",
                c.nisv_to_user,
                "KVM_CAP_ARM_NISV_TO_USER: MMIO without a syndrome could exit to the VMM \
                 (hvrun does not enable it)",
            ),
            yes_no("pmu_v3", c.pmu_v3, "a vCPU feature; hvrun's guests do not get it"),
            yes_no("sve", c.sve, "a vCPU feature; hvrun's guests do not get it"),
            yes_no("pointer_auth", c.pointer_auth, "a vCPU feature; hvrun's guests do not get it"),
            yes_no("mte", c.mte, "a VM feature; hvrun's guests do not get it"),
        ];
        HostReport { facts, usable }
    }

    /// The report for a Mac.
    pub fn hvf(c: &HvfCapabilities) -> Self {
        let mut facts = vec![
            fact(
                "backend",
                "Hypervisor.framework",
                format!("macOS {} on {}", c.macos_version, c.chip),
            ),
            fact(
                "hv_support",
                c.hv_support.map_or(Value::Null, Value::from),
                "sysctl kern.hv_support: 1 when this Mac can run VMs",
            ),
        ];
        match &c.usable {
            Ok(limits) => {
                facts.push(fact("usable", true, "a probe VM was created and destroyed"));
                facts.push(fact(
                    "max_vcpus",
                    limits.max_vcpus,
                    format!(
                        "hv_vm_get_max_vcpu_count; hvrun's memory map holds {}",
                        boot::layout::MAX_VCPUS
                    ),
                ));
                facts.push(fact(
                    "ipa_bits",
                    limits.max_ipa_bits,
                    format!("maximum; {} by default", limits.default_ipa_bits),
                ));
                let (gic, note) = match &limits.gic {
                    GicChoice::InKernel => ("in-kernel GICv3", "the framework's (macOS 15)".into()),
                    GicChoice::Userspace(why) => ("userspace GICv3", why.clone()),
                };
                facts.push(fact("gic", gic, note));
                facts.push(match &limits.gic_geometry {
                    Some(Ok(g)) => {
                        fact("gic_geometry", geometry_text(g), "hv_gic_get_* (macOS 15)")
                    }
                    Some(Err(why)) => fact("gic_geometry", Value::Null, why.clone()),
                    None => fact("gic_geometry", Value::Null, "no in-kernel GIC before macOS 15"),
                });
                facts.push(match limits.el2_supported {
                    Some(el2) => yes_no(
                        "nested",
                        el2,
                        "hv_vm_config_get_el2_supported: --nested (M3 or later, macOS 15)",
                    ),
                    None => fact("nested", false, "--nested needs macOS 15 (and an M3 or later)"),
                });
            }
            Err(why) => facts.push(fact("usable", false, why.clone())),
        }
        facts.push(fact(
            "counter_hz",
            c.counter.counter_hz,
            "CNTFRQ_EL0: the guests' counter rate",
        ));
        facts.push(fact(
            "host_clock_hz",
            c.counter.host_hz,
            if c.counter.agree() {
                "mach_timebase_info: the same rate as the counter"
            } else {
                "mach_timebase_info: differs from CNTFRQ_EL0 (M4-class chip, recent SDK); \
                 hvrun converts WFI deadlines between them, unconfirmed on hardware: please \
                 report this output"
            },
        ));
        HostReport { usable: c.usable.is_ok(), facts }
    }

    /// The report for a host where no backend could be opened: `backend` names the one that
    /// was tried ("none" for a host hvrun has no backend for).
    pub fn unavailable(backend: &str, why: &str) -> Self {
        HostReport {
            facts: vec![fact("backend", backend, ""), fact("usable", false, why)],
            usable: false,
        }
    }

    /// The value of one fact.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.facts.iter().find(|f| f.key == key).map(|f| &f.value)
    }

    /// One line per fact: key, value, and what it means.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        for f in &self.facts {
            let value = match &f.value {
                Value::String(s) => s.clone(),
                Value::Bool(true) => "yes".into(),
                Value::Bool(false) => "no".into(),
                Value::Null => "-".into(),
                other => other.to_string(),
            };
            let line = if f.note.is_empty() {
                format!("{:<15} {value}", f.key)
            } else {
                format!("{:<15} {value:<18} {}", f.key, f.note)
            };
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// The facts as one JSON object (`key: value`), with the notes under `"notes"`.
    pub fn to_json(&self) -> String {
        let mut map = Map::new();
        let mut notes = Map::new();
        for f in &self.facts {
            map.insert(f.key.to_string(), f.value.clone());
            if !f.note.is_empty() {
                notes.insert(f.key.to_string(), json!(f.note));
            }
        }
        map.insert("notes".into(), Value::Object(notes));
        Value::Object(map).to_string()
    }
}

/// The framework GIC's parameters on one line.
fn geometry_text(g: &GicGeometry) -> String {
    format!(
        "distributor {:#x} (align {:#x}); redistributors {:#x} each, region {:#x} (align {:#x}); \
         SPIs {}..{}",
        g.distributor_size,
        g.distributor_alignment,
        g.redistributor_size,
        g.redistributor_region_size,
        g.redistributor_alignment,
        g.spi_base,
        u64::from(g.spi_base) + u64::from(g.spi_count)
    )
}

/// Asks this host's backend what it offers.
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
pub fn query() -> HostReport {
    match crate::hv::kvm::caps::query() {
        Ok(caps) => HostReport::kvm(&caps),
        Err(e) => HostReport::unavailable("KVM", &format!("{e}: hvrun needs a working /dev/kvm")),
    }
}

/// Asks this host's backend what it offers.
#[cfg(target_os = "macos")]
pub fn query() -> HostReport {
    HostReport::hvf(&crate::hv::hvf::host_capabilities())
}

/// Asks this host's backend what it offers: there is none here.
#[cfg(not(any(all(target_os = "linux", target_arch = "aarch64"), target_os = "macos")))]
pub fn query() -> HostReport {
    HostReport::unavailable(
        "none",
        "this host cannot run arm64 guests: hvrun needs an Apple Silicon Mac \
         (Hypervisor.framework) or arm64 Linux with /dev/kvm",
    )
}

/// `hvrun host [--json]`: prints the report and returns the exit code: 0 when hvrun can run
/// VMs here, 2 (an unsupported host) when it cannot.
pub fn run(json: bool) -> i32 {
    let report = query();
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    if report.usable {
        0
    } else {
        crate::exit_code::USAGE
    }
}

#[cfg(test)]
#[path = "host_tests.rs"]
mod tests;
