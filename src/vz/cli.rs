//! The vz engine's command line: `--engine`, the flags only it has (`--net nat`, `--gui`,
//! `--share`), and `hvrun macos install|run`. `main.rs` flattens [`EngineArgs`] into its own
//! options and dispatches [`MacosCli`]; everything else lives here.

use std::path::PathBuf;

use crate::vz::plan::VzConfigError;

/// Which VMM runs the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// hvrun's own: its vCPU loop and devices, on Hypervisor.framework or KVM.
    #[default]
    Vmm,
    /// Apple's Virtualization.framework (macOS only): Apple's devices, a display with --gui.
    Vz,
}

/// Options that choose the engine, and those only the vz engine has.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct EngineArgs {
    /// Which VMM runs the guest: `vmm` (hvrun's own, on Hypervisor.framework or KVM) or `vz`
    /// (Apple's Virtualization.framework; macOS).
    #[arg(long, value_enum, default_value_t = Engine::Vmm)]
    pub engine: Engine,
    /// [--engine vz] A network device on macOS's shared network (NAT, DHCP from the host):
    /// `nat[,mac=52:54:00:12:34:56]`. Repeatable: eth0, eth1, ...
    #[arg(long, value_name = "nat[,mac=MAC]")]
    pub net: Vec<String>,
    /// [--engine vz] Show the guest's display (virtio-gpu) in a window, with a keyboard and a
    /// pointer.
    #[arg(long)]
    pub gui: bool,
    /// [--engine vz] Share a host directory over virtio-fs (in the guest:
    /// `mount -t virtiofs TAG /mnt`). Repeatable; `,ro` makes it read-only.
    #[arg(long, value_name = "HOST_DIR:TAG[,ro]")]
    pub share: Vec<String>,
}

impl EngineArgs {
    /// For `--engine vmm`: refuses the flags only the vz engine has.
    pub fn check_vmm(&self) -> Result<(), VzConfigError> {
        if self.gui {
            return Err(VzConfigError::VzOnly {
                flag: "--gui",
                why: "hvrun's own engine has no display device",
            });
        }
        if !self.share.is_empty() {
            return Err(VzConfigError::VzOnly {
                flag: "--share",
                why: "hvrun's own engine has no virtio-fs device",
            });
        }
        if !self.net.is_empty() {
            return Err(VzConfigError::VzOnly {
                flag: "--net",
                why: "hvrun's own engine has no network device yet",
            });
        }
        Ok(())
    }
}

/// `hvrun macos ...`: macOS guests on Virtualization.framework (Apple Silicon Macs).
#[derive(clap::Args, Debug)]
pub struct MacosCli {
    #[command(subcommand)]
    pub command: MacosCommand,
}

/// The `hvrun macos` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum MacosCommand {
    /// Install macOS from a restore image (IPSW) into a new VM bundle.
    Install(InstallArgs),
    /// Boot the macOS installed in a bundle.
    Run(RunArgs),
}

/// `hvrun macos install`.
#[derive(clap::Args, Debug, Clone)]
pub struct InstallArgs {
    /// Directory to create for the VM: disk image, NVRAM, identity and hvrun-macos.json.
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// The restore image: an .ipsw file, or `latest` (download the newest macOS this Mac
    /// supports, into ~/Library/Caches/hvrun).
    #[arg(long, value_name = "PATH|latest")]
    pub ipsw: String,
    /// Size of the guest's disk. The image is sparse: it takes host space only as the guest
    /// writes.
    #[arg(long, value_name = "SIZE", default_value = "64G")]
    pub disk_size: String,
    /// vCPUs for the install, and `macos run`'s default [default: 4, at least the image's
    /// minimum, at most the host's cores].
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Guest RAM for the install, and `macos run`'s default [default: 4G or the image's minimum].
    #[arg(long, value_name = "SIZE")]
    pub mem: Option<String>,
}

/// `hvrun macos run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The bundle made by `hvrun macos install`.
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// vCPUs [default: the install's].
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Guest RAM [default: the install's].
    #[arg(long, value_name = "SIZE")]
    pub mem: Option<String>,
    /// No window: the guest runs with its display unshown (for CI runners and SSH sessions;
    /// reach it by Screen Sharing or SSH over the NAT network).
    #[arg(long)]
    pub headless: bool,
    /// Start macOS Recovery instead of the installed system (macOS 13 or later).
    #[arg(long)]
    pub recovery: bool,
    /// Share a host directory over virtio-fs. The tag `automount` appears in the guest under
    /// /Volumes/My Shared Files; another tag is mounted with `mount_virtiofs TAG DIR`.
    /// Repeatable; `,ro` makes it read-only.
    #[arg(long, value_name = "HOST_DIR:TAG[,ro]")]
    pub share: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A stand-in for main.rs's parser: the same flatten and subcommand.
    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        engine: EngineArgs,
        #[command(subcommand)]
        macos: Option<Top>,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Top {
        Macos(MacosCli),
    }

    #[test]
    fn engine_flags_parse() {
        let cli =
            Cli::try_parse_from(["hvrun", "--engine", "vz", "--net", "nat", "--gui"]).unwrap();
        assert_eq!(cli.engine.engine, Engine::Vz);
        assert_eq!(cli.engine.net, ["nat"]);
        assert!(cli.engine.gui);
        let cli = Cli::try_parse_from(["hvrun"]).unwrap();
        assert_eq!(cli.engine.engine, Engine::Vmm);
        assert!(Cli::try_parse_from(["hvrun", "--engine", "qemu"]).is_err());
    }

    #[test]
    fn vz_only_flags_are_refused_on_hvruns_engine() {
        assert!(EngineArgs::default().check_vmm().is_ok());
        let gui = EngineArgs { gui: true, ..Default::default() };
        assert_eq!(
            gui.check_vmm().unwrap_err().to_string(),
            "--gui: only the vz engine has this (hvrun's own engine has no display device); add \
             --engine vz (macOS)"
        );
        let net = EngineArgs { net: vec!["nat".into()], ..Default::default() };
        assert!(net.check_vmm().unwrap_err().to_string().starts_with("--net: "));
        let share = EngineArgs { share: vec!["/tmp:t".into()], ..Default::default() };
        assert!(share.check_vmm().unwrap_err().to_string().starts_with("--share: "));
    }

    #[test]
    fn macos_subcommands_parse() {
        let cli = Cli::try_parse_from([
            "hvrun",
            "macos",
            "install",
            "vm.bundle",
            "--ipsw",
            "latest",
            "--disk-size",
            "80G",
        ])
        .unwrap();
        let Some(Top::Macos(MacosCli { command: MacosCommand::Install(install) })) = cli.macos
        else {
            panic!("not an install");
        };
        assert_eq!((install.ipsw.as_str(), install.disk_size.as_str()), ("latest", "80G"));
        assert_eq!(install.cpus, None);
        let cli = Cli::try_parse_from([
            "hvrun",
            "macos",
            "run",
            "vm.bundle",
            "--headless",
            "--share",
            "/tmp:automount",
            "--share",
            "/var:v,ro",
            "--cpus",
            "6",
        ])
        .unwrap();
        let Some(Top::Macos(MacosCli { command: MacosCommand::Run(run) })) = cli.macos else {
            panic!("not a run");
        };
        assert!(run.headless && !run.recovery);
        assert_eq!(run.share.len(), 2);
        assert_eq!(run.cpus, Some(6));
        assert!(
            Cli::try_parse_from(["hvrun", "macos", "install", "vm.bundle"]).is_err(),
            "--ipsw is required"
        );
    }
}
