//! Linux on the vz engine: hvrun's checked [`VmConfig`] plus the vz-only flags, mapped to plain
//! data ([`VzPlan`]) that `vz/macos` turns into a `VZVirtualMachineConfiguration`. Every flag the
//! framework cannot honour is refused here, one line each, before anything is created.

use std::path::PathBuf;

use devices::virtio::block::SyncMode;

use crate::config::{VmConfig, DEFAULT_CMDLINE, DEFAULT_CMDLINE_VIRTIO_CONSOLE};
use crate::vz::cli::EngineArgs;
use crate::vz::net::VzNet;
use crate::vz::share::{self, ShareDevice};
use crate::vz::version::Feature;

/// The command line hvrun gives a VZ guest by default: VZ has no 16550, the console is the
/// virtio console (`hvc0`), and there is no UART for `earlycon`.
pub const VZ_DEFAULT_CMDLINE: &str = "console=hvc0";

/// A flag the vz engine cannot honour, or a value it cannot take.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VzConfigError {
    #[error(
        "--stats: the vz engine has no VM exits to count (Virtualization.framework runs the \
         vCPUs itself); use --engine vmm"
    )]
    Stats,
    #[error(
        "--trace-exits: the vz engine has no VM exits to trace (Virtualization.framework runs the \
         vCPUs itself); use --engine vmm"
    )]
    TraceExits,
    #[error(
        "--no-reboot: Virtualization.framework reports a guest reset as a stop, so hvrun cannot \
         tell it from a power-off (exit 3); on the vz engine every guest stop ends hvrun with 0"
    )]
    NoReboot,
    #[error("{0}")]
    Net(String),
    #[error("{0}")]
    Share(String),
    #[error("{flag}: only the vz engine has this ({why}); add --engine vz (macOS)")]
    VzOnly { flag: &'static str, why: &'static str },
    #[error(
        "--engine vz: Virtualization.framework is part of macOS, and this host is not a Mac; \
         use --engine vmm (the default)"
    )]
    NotAMac,
    #[error("--cpus {given}: Virtualization.framework allows {min} to {max} vCPUs on this Mac")]
    Cpus { given: u32, min: u32, max: u32 },
    #[error(
        "--mem {given}: Virtualization.framework allows {min_mib} MiB to {max_mib} MiB on this Mac"
    )]
    Mem { given: String, min_mib: u64, max_mib: u64 },
    #[error(
        "--nested: this Mac cannot give VZ guests EL2 (Virtualization.framework offers nested \
         virtualization on an M3 or later with macOS 15)"
    )]
    NestedUnsupported,
    #[error("{0}")]
    Invalid(String),
}

/// The framework's limits on this host (`VZVirtualMachineConfiguration.minimumAllowed…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VzLimits {
    pub min_cpus: u32,
    pub max_cpus: u32,
    pub min_mem: u64,
    pub max_mem: u64,
}

impl VzLimits {
    /// Checks a vCPU count and a memory size (`mem_text` is how the user wrote it).
    pub fn check(&self, cpus: u32, mem: u64, mem_text: &str) -> Result<(), VzConfigError> {
        if cpus < self.min_cpus || cpus > self.max_cpus {
            return Err(VzConfigError::Cpus {
                given: cpus,
                min: self.min_cpus,
                max: self.max_cpus,
            });
        }
        // VZ also wants a whole number of MiB ("memorySize must be a multiple of 1 MiB").
        if mem < self.min_mem || mem > self.max_mem || mem % (1 << 20) != 0 {
            return Err(VzConfigError::Mem {
                given: mem_text.to_string(),
                min_mib: self.min_mem.div_ceil(1 << 20),
                max_mib: self.max_mem >> 20,
            });
        }
        Ok(())
    }
}

/// One virtio-blk disk of a VZ guest (VZ opens the image itself, by path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VzDisk {
    pub path: PathBuf,
    pub read_only: bool,
    /// What a guest FLUSH does: VZ's synchronization modes are hvrun's three (`full` is
    /// `F_FULLFSYNC`, `fsync` is fsync, `none` is nothing).
    pub sync: SyncMode,
    /// `blockDeviceIdentifier` (at most 20 ASCII bytes, like virtio-blk's GET_ID).
    pub serial: String,
}

/// A virtio-gpu scanout: the window's initial size in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scanout {
    pub width: u32,
    pub height: u32,
}

/// The default `--gui` scanout: fits a 13-inch laptop's screen with the window's title bar.
pub const GUI_SCANOUT: Scanout = Scanout { width: 1280, height: 800 };

/// Everything a Linux guest on VZ gets, as plain data. Always present besides what is listed:
/// the virtio console on hvrun's stdin/stdout (`hvc0`), a virtio entropy device and a virtio
/// memory balloon (whose target the control API sets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VzPlan {
    pub cpus: u32,
    pub mem_bytes: u64,
    /// How the user wrote `--mem`, for messages.
    pub mem_text: String,
    pub cmdline: String,
    pub disks: Vec<VzDisk>,
    pub nets: Vec<VzNet>,
    pub shares: Vec<ShareDevice>,
    /// `--gui`: a virtio-gpu display in a window, with a USB keyboard and pointer.
    pub gui: Option<Scanout>,
    /// `--nested`: the guest gets EL2.
    pub nested: bool,
}

impl VzPlan {
    /// Maps a checked config and the vz-only flags; refuses what VZ cannot do.
    pub fn from_config(config: &VmConfig, engine: &EngineArgs) -> Result<VzPlan, VzConfigError> {
        if config.stats.is_some() {
            return Err(VzConfigError::Stats);
        }
        if config.trace_exits {
            return Err(VzConfigError::TraceExits);
        }
        if !config.reboot {
            return Err(VzConfigError::NoReboot);
        }
        let nets = engine
            .net
            .iter()
            .map(|spec| spec.parse::<VzNet>().map_err(VzConfigError::Net))
            .collect::<Result<Vec<_>, _>>()?;
        let specs = engine
            .share
            .iter()
            .map(|spec| share::parse_share(spec).map_err(VzConfigError::Share))
            .collect::<Result<Vec<_>, _>>()?;
        let shares = share::group_shares(&specs).map_err(VzConfigError::Share)?;
        // hvrun's defaults name the 16550 (and earlycon through it); VZ has only hvc0. A
        // command line the user wrote is passed as is.
        let cmdline = if config.cmdline == DEFAULT_CMDLINE
            || config.cmdline == DEFAULT_CMDLINE_VIRTIO_CONSOLE
        {
            VZ_DEFAULT_CMDLINE.to_string()
        } else {
            config.cmdline.clone()
        };
        let disks = config
            .disks
            .iter()
            .map(|disk| VzDisk {
                path: disk.path.clone(),
                read_only: disk.image.read_only(),
                sync: disk.sync,
                serial: disk.serial.clone(),
            })
            .collect();
        Ok(VzPlan {
            cpus: config.vcpus,
            mem_bytes: config.mem_bytes,
            mem_text: config.mem_text.clone(),
            cmdline,
            disks,
            nets,
            shares,
            gui: engine.gui.then_some(GUI_SCANOUT),
            nested: config.nested,
        })
    }

    /// The framework features this plan uses, to check against the host's macOS first.
    pub fn required_features(&self) -> Vec<Feature> {
        // Disk serials (12.3) are not here: every disk has one (its file name by default), so
        // an older host boots without them and says so rather than refusing the disk.
        let mut needed = vec![Feature::Engine];
        if self.gui.is_some() {
            needed.push(Feature::VirtioGpu);
        }
        if self.nested {
            needed.push(Feature::Nested);
        }
        needed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConsoleKind, VmArgs};
    use crate::stats::StatsFormat;
    use crate::vz::cli::Engine;
    use crate::vz::net::MacAddress;
    use std::io::Write;

    struct Fixture {
        dir: PathBuf,
    }

    impl Fixture {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("hvrun-vzplan-{name}-{}", std::process::id()));
            std::fs::create_dir_all(dir.join("share")).unwrap();
            let mut image = vec![0u8; 4096];
            image[0x10..0x18].copy_from_slice(&(1u64 << 20).to_le_bytes());
            image[0x38..0x3c].copy_from_slice(b"ARMd");
            std::fs::File::create(dir.join("Image")).unwrap().write_all(&image).unwrap();
            std::fs::File::create(dir.join("disk.img")).unwrap().set_len(1 << 20).unwrap();
            Fixture { dir }
        }

        fn config(&self, args: VmArgs) -> VmConfig {
            VmConfig::from_args(&VmArgs { kernel: Some(self.dir.join("Image")), cpus: 2, ..args })
                .unwrap()
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn vz() -> EngineArgs {
        EngineArgs { engine: Engine::Vz, ..Default::default() }
    }

    #[test]
    fn flags_map_to_the_plan() {
        let f = Fixture::new("map");
        let disk = format!("{},ro,sync=none,serial=ROOT", f.dir.join("disk.img").display());
        let config =
            f.config(VmArgs { mem: Some("1G".into()), disks: vec![disk], ..Default::default() });
        let engine = EngineArgs {
            net: vec!["nat".into(), "nat,mac=52:54:00:00:00:02".into()],
            share: vec![format!("{}:data", f.dir.join("share").display())],
            gui: true,
            ..vz()
        };
        let plan = VzPlan::from_config(&config, &engine).unwrap();
        assert_eq!((plan.cpus, plan.mem_bytes), (2, 1 << 30));
        assert_eq!(plan.cmdline, "console=hvc0");
        assert_eq!(
            plan.disks,
            [VzDisk {
                path: f.dir.join("disk.img"),
                read_only: true,
                sync: SyncMode::None,
                serial: "ROOT".into()
            }]
        );
        assert_eq!(plan.nets[0], VzNet::Nat { mac: None });
        assert_eq!(plan.nets[1], VzNet::Nat { mac: Some(MacAddress([0x52, 0x54, 0, 0, 0, 2])) });
        assert_eq!(plan.shares[0].tag, "data");
        assert_eq!(plan.gui, Some(GUI_SCANOUT));
        assert_eq!(plan.required_features(), [Feature::Engine, Feature::VirtioGpu]);
    }

    #[test]
    fn nested_asks_for_macos_15() {
        let f = Fixture::new("nested");
        let plan =
            VzPlan::from_config(&f.config(VmArgs { nested: true, ..Default::default() }), &vz())
                .unwrap();
        assert!(plan.nested);
        assert_eq!(plan.required_features(), [Feature::Engine, Feature::Nested]);
        let plain = VzPlan::from_config(&f.config(VmArgs::default()), &vz()).unwrap();
        assert_eq!(plain.required_features(), [Feature::Engine]);
    }

    #[test]
    fn default_command_lines_become_hvc0_and_the_users_stays() {
        let f = Fixture::new("cmdline");
        let serial = f.config(VmArgs::default());
        assert_eq!(VzPlan::from_config(&serial, &vz()).unwrap().cmdline, "console=hvc0");
        let virtio = f.config(VmArgs { console: ConsoleKind::Virtio, ..Default::default() });
        assert_eq!(VzPlan::from_config(&virtio, &vz()).unwrap().cmdline, "console=hvc0");
        let own = f.config(VmArgs {
            cmdline: Some("console=hvc0 quiet -- poweroff".into()),
            ..Default::default()
        });
        assert_eq!(
            VzPlan::from_config(&own, &vz()).unwrap().cmdline,
            "console=hvc0 quiet -- poweroff"
        );
    }

    #[test]
    fn what_vz_cannot_do_is_refused_one_line_each() {
        let f = Fixture::new("refuse");
        let err = |args: VmArgs, engine: EngineArgs| {
            VzPlan::from_config(&f.config(args), &engine).unwrap_err().to_string()
        };
        let stats = err(VmArgs { stats: Some(StatsFormat::Table), ..Default::default() }, vz());
        assert!(stats.starts_with("--stats: the vz engine has no VM exits"), "{stats}");
        let trace = err(VmArgs { trace_exits: true, ..Default::default() }, vz());
        assert!(trace.starts_with("--trace-exits: "), "{trace}");
        let reboot = err(VmArgs { no_reboot: true, ..Default::default() }, vz());
        assert!(reboot.starts_with("--no-reboot: "), "{reboot}");
        let tap = err(VmArgs::default(), EngineArgs { net: vec!["tap=tap0".into()], ..vz() });
        assert!(tap.starts_with("--net tap=tap0: tap devices are a Linux feature"), "{tap}");
        let share =
            err(VmArgs::default(), EngineArgs { share: vec!["/no/such/dir:x".into()], ..vz() });
        assert!(share.starts_with("--share /no/such/dir:x: "), "{share}");
        for message in [stats, trace, reboot, tap, share] {
            assert!(!message.contains('\n'), "one line: {message}");
        }
    }

    #[test]
    fn limits_are_checked_with_the_users_words() {
        let limits = VzLimits { min_cpus: 1, max_cpus: 10, min_mem: 128 << 20, max_mem: 16 << 30 };
        assert!(limits.check(4, 2 << 30, "2G").is_ok());
        assert_eq!(
            limits.check(11, 2 << 30, "2G").unwrap_err().to_string(),
            "--cpus 11: Virtualization.framework allows 1 to 10 vCPUs on this Mac"
        );
        assert_eq!(
            limits.check(1, 64 << 20, "64M").unwrap_err().to_string(),
            "--mem 64M: Virtualization.framework allows 128 MiB to 16384 MiB on this Mac"
        );
        assert!(limits.check(1, 32 << 30, "32G").is_err());
        assert!(limits.check(1, (256 << 20) + 4096, "x").is_err(), "whole MiB only");
    }
}
