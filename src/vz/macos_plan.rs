//! macOS guests as plain data: what `hvrun macos install` will create (disk size, CPUs, memory,
//! where the IPSW comes from) and what `hvrun macos run` will boot (resources from the bundle or
//! the command line, display, shares, recovery). `vz/macos` turns these into VZ objects.

use std::path::{Path, PathBuf};

use crate::config::parse_size;
use crate::vz::bundle::Manifest;
use crate::vz::cli::{InstallArgs, RunArgs};
use crate::vz::plan::{VzConfigError, VzLimits};
use crate::vz::share::{self, ShareDevice};
use crate::vz::version::Feature;

/// The smallest disk `macos install` accepts: a macOS install does not fit in less, and a bare
/// number is MiB (`--disk-size 64` would be 64 MiB).
pub const MIN_DISK: u64 = 32 << 30;
/// Default guest RAM when the restore image asks for less.
pub const DEFAULT_MEM: u64 = 4 << 30;
/// Default vCPUs when the host has them and the image asks for fewer.
pub const DEFAULT_CPUS: u32 = 4;

/// Where the restore image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpswSource {
    /// The newest macOS this Mac supports, from Apple's catalog (`fetchLatestSupported`).
    Latest,
    /// An .ipsw file (canonical path).
    File(PathBuf),
}

/// `hvrun macos install`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallPlan {
    pub bundle: PathBuf,
    pub ipsw: IpswSource,
    pub disk_bytes: u64,
    pub cpus: Option<u32>,
    /// `--mem` in bytes, and as written.
    pub mem: Option<(u64, String)>,
}

impl InstallPlan {
    /// Checks the install options (the restore image itself is checked when loaded).
    pub fn from_args(args: &InstallArgs) -> Result<InstallPlan, VzConfigError> {
        let invalid = VzConfigError::Invalid;
        let ipsw = if args.ipsw == "latest" {
            IpswSource::Latest
        } else {
            let path = Path::new(&args.ipsw);
            let file =
                path.canonicalize().map_err(|e| invalid(format!("--ipsw {}: {e}", args.ipsw)))?;
            if !file.is_file() {
                return Err(invalid(format!(
                    "--ipsw {}: not a file (expected an .ipsw)",
                    args.ipsw
                )));
            }
            IpswSource::File(file)
        };
        let disk_bytes =
            parse_size(&args.disk_size).map_err(|e| invalid(format!("--disk-size {e}")))?;
        if disk_bytes < MIN_DISK {
            return Err(invalid(format!(
                "--disk-size {}: a macOS install needs at least 32G (a bare number means MiB)",
                args.disk_size
            )));
        }
        let mem = match &args.mem {
            Some(text) => Some((parse_mem(text)?, text.clone())),
            None => None,
        };
        if args.cpus == Some(0) {
            return Err(invalid("--cpus 0: a guest needs at least one vCPU".into()));
        }
        Ok(InstallPlan { bundle: args.bundle.clone(), ipsw, disk_bytes, cpus: args.cpus, mem })
    }
}

fn parse_mem(text: &str) -> Result<u64, VzConfigError> {
    parse_size(text).map_err(|e| VzConfigError::Invalid(format!("--mem {e}")))
}

/// What the restore image's most featureful supported configuration asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirements {
    pub min_cpus: u32,
    pub min_mem: u64,
}

/// The install's vCPUs and memory: the user's, checked against the image's minimums and the
/// framework's limits, or defaults that are comfortable but never beyond the host.
pub fn choose_resources(
    cpus: Option<u32>,
    mem: Option<(u64, &str)>,
    needs: Requirements,
    limits: &VzLimits,
    host_cpus: u32,
) -> Result<(u32, u64), VzConfigError> {
    let cpus = match cpus {
        Some(n) if n < needs.min_cpus => {
            return Err(VzConfigError::Invalid(format!(
                "--cpus {n}: this macOS needs at least {} vCPUs",
                needs.min_cpus
            )))
        }
        Some(n) => n,
        None => DEFAULT_CPUS.min(host_cpus).max(needs.min_cpus).min(limits.max_cpus),
    };
    let (mem, mem_text) = match mem {
        Some((bytes, text)) if bytes < needs.min_mem => {
            return Err(VzConfigError::Invalid(format!(
                "--mem {text}: this macOS needs at least {} MiB",
                needs.min_mem.div_ceil(1 << 20)
            )))
        }
        Some((bytes, text)) => (bytes, text.to_string()),
        None => {
            let bytes = DEFAULT_MEM.max(needs.min_mem).min(limits.max_mem);
            (bytes, format!("{}M", bytes >> 20))
        }
    };
    limits.check(cpus, mem, &mem_text)?;
    Ok((cpus, mem))
}

/// The macOS guest's display: Apple's sample configuration (1920×1200 at 80 pixels per inch),
/// which the window shows scaled; on macOS 14 the guest follows the window's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacDisplay {
    pub width: u32,
    pub height: u32,
    pub pixels_per_inch: u32,
}

/// The default display.
pub const MAC_DISPLAY: MacDisplay = MacDisplay { width: 1920, height: 1200, pixels_per_inch: 80 };

/// `hvrun macos run`, checked against the bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MacRunPlan {
    pub cpus: u32,
    pub mem_bytes: u64,
    pub mem_text: String,
    pub headless: bool,
    pub recovery: bool,
    pub shares: Vec<ShareDevice>,
    pub display: MacDisplay,
}

impl MacRunPlan {
    /// The run's resources (the install's unless overridden), display and shares.
    pub fn new(manifest: &Manifest, args: &RunArgs) -> Result<MacRunPlan, VzConfigError> {
        let cpus = args.cpus.unwrap_or(manifest.cpus);
        if cpus < manifest.min_cpus {
            return Err(VzConfigError::Invalid(format!(
                "--cpus {cpus}: the macOS in this bundle needs at least {}",
                manifest.min_cpus
            )));
        }
        let (mem_bytes, mem_text) = match &args.mem {
            Some(text) => (parse_mem(text)?, text.clone()),
            None => (manifest.mem_bytes, format!("{}M", manifest.mem_bytes >> 20)),
        };
        if mem_bytes < manifest.min_mem_bytes {
            return Err(VzConfigError::Invalid(format!(
                "--mem {mem_text}: the macOS in this bundle needs at least {} MiB",
                manifest.min_mem_bytes.div_ceil(1 << 20)
            )));
        }
        let specs = args
            .share
            .iter()
            .map(|spec| share::parse_share(spec).map_err(VzConfigError::Share))
            .collect::<Result<Vec<_>, _>>()?;
        let shares = share::group_shares(&specs).map_err(VzConfigError::Share)?;
        Ok(MacRunPlan {
            cpus,
            mem_bytes,
            mem_text,
            headless: args.headless,
            recovery: args.recovery,
            shares,
            display: MAC_DISPLAY,
        })
    }

    /// Features the run cannot do without (a trackpad and a Mac keyboard are used when the host
    /// has them, with USB devices instead before).
    pub fn required_features(&self) -> Vec<Feature> {
        let mut needed = vec![Feature::Engine];
        if self.recovery {
            needed.push(Feature::Recovery);
        }
        if self.shares.iter().any(|s| s.tag == share::AUTOMOUNT) {
            needed.push(Feature::Automount);
        }
        needed
    }
}

/// Where `--ipsw latest` keeps its download: `~/Library/Caches/hvrun/NAME.ipsw`, named after the
/// URL's last path segment (checked to be a plain file name ending in `.ipsw`).
pub fn ipsw_cache_path(home: &Path, url: &str) -> Result<PathBuf, String> {
    let name =
        url.split(['?', '#']).next().unwrap_or_default().rsplit('/').next().unwrap_or_default();
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !plain || !name.ends_with(".ipsw") {
        return Err(format!("the restore image URL {url} does not end in a plain .ipsw file name"));
    }
    Ok(home.join("Library/Caches/hvrun").join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vz::bundle::{BundleState, RestoreImageInfo, FORMAT};

    const LIMITS: VzLimits =
        VzLimits { min_cpus: 1, max_cpus: 10, min_mem: 128 << 20, max_mem: 24 << 30 };
    const NEEDS: Requirements = Requirements { min_cpus: 2, min_mem: 4 << 30 };

    fn install_args(ipsw: &str, disk: &str) -> InstallArgs {
        InstallArgs {
            bundle: "vm.bundle".into(),
            ipsw: ipsw.into(),
            disk_size: disk.into(),
            cpus: None,
            mem: None,
        }
    }

    #[test]
    fn install_options_are_checked() {
        let plan = InstallPlan::from_args(&install_args("latest", "64G")).unwrap();
        assert_eq!((plan.ipsw, plan.disk_bytes), (IpswSource::Latest, 64 << 30));
        let file = std::env::temp_dir().join(format!("hvrun-test-{}.ipsw", std::process::id()));
        std::fs::write(&file, b"not really").unwrap();
        let plan = InstallPlan::from_args(&install_args(file.to_str().unwrap(), "40G")).unwrap();
        assert_eq!(plan.ipsw, IpswSource::File(file.canonicalize().unwrap()));
        std::fs::remove_file(&file).unwrap();
        let err = |a: InstallArgs| InstallPlan::from_args(&a).unwrap_err().to_string();
        assert!(err(install_args("/no/such.ipsw", "64G")).starts_with("--ipsw /no/such.ipsw: "));
        assert!(err(install_args("/tmp", "64G")).contains("not a file"));
        assert!(
            err(install_args("latest", "64")).contains("at least 32G (a bare number means MiB)")
        );
        assert!(err(install_args("latest", "lots")).starts_with("--disk-size `lots` is not a size"));
        let zero = InstallArgs { cpus: Some(0), ..install_args("latest", "64G") };
        assert!(err(zero).starts_with("--cpus 0"));
    }

    #[test]
    fn resources_default_sensibly_and_respect_minimums() {
        assert_eq!(choose_resources(None, None, NEEDS, &LIMITS, 8), Ok((4, 4 << 30)));
        // A small host: no more vCPUs than it has, but never fewer than the image needs.
        assert_eq!(choose_resources(None, None, NEEDS, &LIMITS, 1), Ok((2, 4 << 30)));
        let big = Requirements { min_cpus: 6, min_mem: 8 << 30 };
        assert_eq!(choose_resources(None, None, big, &LIMITS, 8), Ok((6, 8 << 30)));
        assert_eq!(
            choose_resources(Some(8), Some((16 << 30, "16G")), NEEDS, &LIMITS, 8),
            Ok((8, 16 << 30))
        );
        let e = choose_resources(Some(1), None, NEEDS, &LIMITS, 8).unwrap_err();
        assert_eq!(e.to_string(), "--cpus 1: this macOS needs at least 2 vCPUs");
        let e = choose_resources(None, Some((2 << 30, "2G")), NEEDS, &LIMITS, 8).unwrap_err();
        assert_eq!(e.to_string(), "--mem 2G: this macOS needs at least 4096 MiB");
        let e = choose_resources(Some(12), None, NEEDS, &LIMITS, 16).unwrap_err();
        assert!(e.to_string().contains("allows 1 to 10 vCPUs"), "{e}");
    }

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            state: BundleState::Ready,
            created_by: "hvrun 0.1.0".into(),
            created_at: 0,
            host_macos: "14.4".into(),
            restore_image: RestoreImageInfo {
                source: "x.ipsw".into(),
                macos: "14.4".into(),
                build: "23E214".into(),
            },
            disk_bytes: 64 << 30,
            cpus: 4,
            mem_bytes: 8 << 30,
            min_cpus: 2,
            min_mem_bytes: 4 << 30,
        }
    }

    fn run_args() -> RunArgs {
        RunArgs {
            bundle: "vm.bundle".into(),
            cpus: None,
            mem: None,
            headless: false,
            recovery: false,
            share: vec![],
        }
    }

    #[test]
    fn runs_take_the_bundles_resources_unless_told() {
        let plan = MacRunPlan::new(&manifest(), &run_args()).unwrap();
        assert_eq!((plan.cpus, plan.mem_bytes, plan.display), (4, 8 << 30, MAC_DISPLAY));
        assert_eq!(plan.required_features(), [Feature::Engine]);
        let tmp = std::env::temp_dir().display().to_string();
        let more = RunArgs {
            cpus: Some(8),
            mem: Some("12G".into()),
            recovery: true,
            share: vec![format!("{tmp}:automount")],
            ..run_args()
        };
        let plan = MacRunPlan::new(&manifest(), &more).unwrap();
        assert_eq!((plan.cpus, plan.mem_bytes), (8, 12 << 30));
        assert_eq!(
            plan.required_features(),
            [Feature::Engine, Feature::Recovery, Feature::Automount]
        );
        let few = RunArgs { cpus: Some(1), ..run_args() };
        assert!(MacRunPlan::new(&manifest(), &few).unwrap_err().to_string().contains("at least 2"));
        let small = RunArgs { mem: Some("2G".into()), ..run_args() };
        assert!(MacRunPlan::new(&manifest(), &small)
            .unwrap_err()
            .to_string()
            .contains("at least 4096 MiB"));
    }

    #[test]
    fn ipsw_downloads_get_a_plain_cache_name() {
        let home = Path::new("/Users/me");
        let url = "https://updates.cdn-apple.com/2024/x/UniversalMac_14.4.1_23E224_Restore.ipsw";
        assert_eq!(
            ipsw_cache_path(home, url).unwrap(),
            Path::new("/Users/me/Library/Caches/hvrun/UniversalMac_14.4.1_23E224_Restore.ipsw")
        );
        assert!(ipsw_cache_path(home, "https://x/a.ipsw?sig=1").is_ok());
        assert!(ipsw_cache_path(home, "https://x/").is_err());
        assert!(ipsw_cache_path(home, "https://x/..ipsw").is_err());
        assert!(ipsw_cache_path(home, "https://x/a b.ipsw").is_err());
        assert!(ipsw_cache_path(home, "https://x/restore.zip").is_err());
    }
}
