//! Validated user intent: what VM to build. Every mistake a user can make on the command line is
//! caught here and explained in one line, before any hypervisor is touched.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use boot::layout::{self, MIN_RAM};
use boot::{KernelError, KernelImage};
use devices::virtio::block::{DiskError, DiskImage, SyncMode};

use crate::hv::HostLimits;
use crate::stats::StatsFormat;

/// The default kernel command line: the 16550 as the console, and `earlycon` (which finds the
/// UART through the FDT's stdout-path) so messages before the console driver are not lost.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 earlycon";
/// The default with `--console virtio`: `hvc0` is the console once its driver is up; until
/// then `earlycon` still prints through the UART.
pub const DEFAULT_CMDLINE_VIRTIO_CONSOLE: &str = "console=hvc0 earlycon";

/// Which guest device hvrun's stdin and stdout are attached to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsoleKind {
    /// The 16550 UART, `ttyS0` (always present, for earlycon).
    #[default]
    Serial,
    /// A virtio-console, `hvc0`; the UART still prints, but input goes to `hvc0`.
    Virtio,
}
/// Guest RAM if `--mem` is not given.
pub const DEFAULT_MEM: u64 = 512 << 20;
/// Largest initrd we read into memory.
const MAX_INITRD: u64 = 1 << 30;
/// Guest RAM is handed out in 2 MiB blocks (the device tree takes the last one).
const MEM_GRANULE: u64 = 2 << 20;

/// A user mistake, said so the user knows what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--kernel PATH is required")]
    NoKernel,
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("{flag} {path}: {source}")]
    Unreadable {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--initrd {0}: larger than 1 GiB; is it really an initramfs?")]
    InitrdTooBig(PathBuf),
    #[error("--mem {0}")]
    BadMem(String),
    #[error("--mem {0}: guest memory must be at least 64 MiB")]
    MemTooSmall(String),
    #[error("--mem {0}: guest memory must be a multiple of 2 MiB")]
    MemNotAligned(String),
    #[error(
        "--mem {given}: this host's guest address space ({ipa_bits} bits) holds at most {max_mib} MiB \
         of RAM; ask for less"
    )]
    MemBeyondHost { given: String, ipa_bits: u32, max_mib: u64 },
    #[error("--mem {given}: more than this host's {host_mib} MiB of RAM; ask for less")]
    MemBeyondHostRam { given: String, host_mib: u64 },
    #[error("--cpus 0: a guest needs at least one vCPU")]
    NoCpus,
    #[error("--cpus {given}: this host allows at most {max} vCPUs per VM")]
    TooManyCpus { given: u32, max: u32 },
    #[error("--cmdline: the kernel command line may not contain a NUL byte")]
    CmdlineNul,
    #[error("--disk {spec}: {problem}")]
    DiskSpec { spec: String, problem: String },
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("--disk: at most {0} disks fit in the machine next to the other virtio devices")]
    TooManyDisks(usize),
}

/// One `--disk PATH[,ro][,sync=full|fsync|none][,serial=ID]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub read_only: bool,
    pub sync: SyncMode,
    /// GET_ID's answer; defaults to the image's file name (first 20 bytes).
    pub serial: String,
}

impl std::str::FromStr for DiskSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut parts = spec.split(',');
        let path = PathBuf::from(parts.next().unwrap_or_default());
        if path.as_os_str().is_empty() {
            return Err("expected PATH[,ro][,sync=full|fsync|none][,serial=ID]".into());
        }
        let mut disk = DiskSpec {
            serial: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            path,
            read_only: false,
            sync: SyncMode::default(),
        };
        for option in parts {
            match option.split_once('=') {
                None if option == "ro" => disk.read_only = true,
                Some(("sync", mode)) => disk.sync = mode.parse()?,
                Some(("serial", id)) if id.len() <= 20 && id.is_ascii() => disk.serial = id.into(),
                Some(("serial", _)) => return Err("serial=ID: at most 20 ASCII characters".into()),
                _ => {
                    return Err(format!("unknown option `{option}` (expected ro, sync=, serial=)"))
                }
            }
        }
        Ok(disk)
    }
}

/// A disk image opened and locked for the whole run, with its options.
#[derive(Clone, Debug)]
pub struct Disk {
    pub image: Arc<DiskImage>,
    pub serial: String,
    /// Where the image is and its sync mode (the vz engine hands both to Virtualization.framework).
    pub path: PathBuf,
    pub sync: SyncMode,
}

/// Parses a memory size: a bare number is MiB (`2048`); `K`, `M`, `G`, `T` suffixes (optionally
/// followed by `B` or `iB`, any case) are binary units (`512M`, `2G`, `1GiB`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let number_end = lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(number_end);
    let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" if unit.is_empty() => 20,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("`{t}` is not a size: use MiB (2048) or a unit (512M, 2G)")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{t}` is not a size: use MiB (2048) or a unit (512M, 2G)"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("`{t}` is too large"))
}

/// Everything needed to build the VM, checked.
#[derive(Debug)]
pub struct VmConfig {
    pub kernel: KernelImage,
    pub initrd: Option<Vec<u8>>,
    pub cmdline: String,
    pub mem_bytes: u64,
    /// How the user wrote `--mem`, for messages.
    pub mem_text: String,
    pub vcpus: u32,
    /// Disk images, opened and locked, in `--disk` order (the guest's vda, vdb, ...).
    pub disks: Vec<Disk>,
    /// Reboot the guest on PSCI SYSTEM_RESET (the default) instead of exiting.
    pub reboot: bool,
    /// The device attached to hvrun's stdio.
    pub console: ConsoleKind,
    /// Give the guest EL2 (`--nested`; Hypervisor.framework on macOS 15 with an M3 or later).
    pub nested: bool,
    /// Print exit statistics when the VM stops (`--stats`).
    pub stats: Option<StatsFormat>,
    /// Print every exit, rate-limited (`--trace-exits`).
    pub trace_exits: bool,
    /// Let the hypervisor complete queue notifications itself where it can (KVM's ioeventfd);
    /// off with `HVRUN_IOEVENTFD=off`.
    pub ioeventfd: bool,
}

/// The user's choices as given on the command line, before checking: the one shape of "what
/// VM to run" (clap fills it from the command line; `VmConfig::from_args` checks it).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct VmArgs {
    /// Kernel: an arm64 `Image`, gzip'd Image (`vmlinuz`) or EFI zboot image.
    #[arg(long, value_name = "PATH", required = true)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk (initramfs) to hand to the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 earlycon", with --console virtio
    /// "console=hvc0 earlycon"].
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// Guest RAM: MiB (2048) or with a unit (512M, 2G) [default: 512M].
    #[arg(long, value_name = "SIZE", value_parser = check_size)]
    pub mem: Option<String>,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u32,
    /// Raw disk image as a virtio-blk device (repeatable: vda, vdb, ...). Options: `ro`;
    /// `sync=full` (default: flushes reach the medium), `fsync`, or `none`; `serial=ID`.
    #[arg(long = "disk", value_name = "PATH[,ro][,sync=MODE][,serial=ID]")]
    pub disks: Vec<String>,
    /// Exit with code 3 when the guest resets, instead of rebooting it.
    #[arg(long)]
    pub no_reboot: bool,
    /// The guest device on hvrun's stdin/stdout: `serial` (ttyS0) or `virtio` (hvc0; the UART
    /// still prints early messages). Changes the default --cmdline to match.
    #[arg(long, value_enum, default_value_t = ConsoleKind::Serial)]
    pub console: ConsoleKind,
    /// Give the guest EL2, so it can run its own VMs (Hypervisor.framework on macOS 15 with an
    /// M3 or later chip; the guest kernel starts at EL2 and calls PSCI with SMC).
    #[arg(long)]
    pub nested: bool,
    /// When the VM stops, print per-exit-reason counts and hvrun's handling time per exit
    /// (per vCPU and in total) to stderr, as a table or as JSON.
    #[arg(long, value_name = "table|json", num_args = 0..=1, default_missing_value = "table")]
    pub stats: Option<StatsFormat>,
    /// Print every exit on one line to stderr (rate-limited: 1000 lines, then 200 a second).
    #[arg(long)]
    pub trace_exits: bool,
}

/// Lets clap reject a malformed size with the parser's message.
fn check_size(text: &str) -> Result<String, String> {
    parse_size(text).map(|_| text.to_string())
}

/// The environment variable that turns KVM's ioeventfd off (`off` or `0`), to measure what it
/// saves: every queue notification is then an MMIO exit to hvrun.
pub const IOEVENTFD_ENV: &str = "HVRUN_IOEVENTFD";

/// [`IOEVENTFD_ENV`]'s meaning: on unless `off` or `0`.
fn ioeventfd_setting(value: Option<&str>) -> bool {
    !matches!(value.map(str::trim), Some("off" | "0"))
}

impl VmConfig {
    /// Checks `args` and reads the kernel and initrd.
    pub fn from_args(args: &VmArgs) -> Result<Self, ConfigError> {
        let mem_text = args.mem.clone().unwrap_or_else(|| format!("{}M", DEFAULT_MEM >> 20));
        let mem_bytes = parse_size(&mem_text).map_err(ConfigError::BadMem)?;
        if mem_bytes < MIN_RAM {
            return Err(ConfigError::MemTooSmall(mem_text));
        }
        if mem_bytes % MEM_GRANULE != 0 {
            return Err(ConfigError::MemNotAligned(mem_text));
        }
        if args.cpus == 0 {
            return Err(ConfigError::NoCpus);
        }
        if args.cpus > layout::MAX_VCPUS {
            return Err(ConfigError::TooManyCpus { given: args.cpus, max: layout::MAX_VCPUS });
        }
        let default_cmdline = match args.console {
            ConsoleKind::Serial => DEFAULT_CMDLINE,
            ConsoleKind::Virtio => DEFAULT_CMDLINE_VIRTIO_CONSOLE,
        };
        let cmdline = args.cmdline.clone().unwrap_or_else(|| default_cmdline.to_string());
        if cmdline.contains('\0') {
            return Err(ConfigError::CmdlineNul);
        }
        let kernel_path = args.kernel.as_deref().ok_or(ConfigError::NoKernel)?;
        check_readable("--kernel", kernel_path)?;
        let kernel = KernelImage::open(kernel_path)?;
        let initrd = match &args.initrd {
            Some(path) => Some(read_initrd(path)?),
            None => None,
        };
        // Slots stay free for the entropy device and a virtio console.
        let other_devices = 1 + usize::from(args.console == ConsoleKind::Virtio);
        let max_disks = layout::VIRTIO_MMIO_SLOTS as usize - other_devices;
        if args.disks.len() > max_disks {
            return Err(ConfigError::TooManyDisks(max_disks));
        }
        let mut disks = Vec::new();
        for text in &args.disks {
            let spec: DiskSpec = text
                .parse()
                .map_err(|problem| ConfigError::DiskSpec { spec: text.clone(), problem })?;
            let image = DiskImage::open(&spec.path, spec.read_only, spec.sync)?;
            let image = Arc::new(image);
            disks.push(Disk { image, serial: spec.serial, path: spec.path, sync: spec.sync });
        }
        Ok(VmConfig {
            kernel,
            initrd,
            cmdline,
            mem_bytes,
            mem_text,
            vcpus: args.cpus,
            disks,
            reboot: !args.no_reboot,
            console: args.console,
            nested: args.nested,
            stats: args.stats,
            trace_exits: args.trace_exits,
            ioeventfd: ioeventfd_setting(std::env::var(IOEVENTFD_ENV).ok().as_deref()),
        })
    }

    /// Checks the parts that depend on what the host's hypervisor allows.
    pub fn check_host(&self, limits: &HostLimits) -> Result<(), ConfigError> {
        if self.vcpus > limits.max_vcpus {
            return Err(ConfigError::TooManyCpus { given: self.vcpus, max: limits.max_vcpus });
        }
        if limits.host_ram_bytes > 0 && self.mem_bytes > limits.host_ram_bytes {
            return Err(ConfigError::MemBeyondHostRam {
                given: self.mem_text.clone(),
                host_mib: limits.host_ram_bytes >> 20,
            });
        }
        if layout::required_ipa_bits(self.mem_bytes) > limits.max_ipa_bits {
            return Err(ConfigError::MemBeyondHost {
                given: self.mem_text.clone(),
                ipa_bits: limits.max_ipa_bits,
                max_mib: layout::max_ram_for_ipa_bits(limits.max_ipa_bits) >> 20,
            });
        }
        Ok(())
    }
}

/// Opens `path` to prove it exists and is readable (a directory is not).
fn check_readable(flag: &'static str, path: &Path) -> Result<(), ConfigError> {
    let unreadable = |source| ConfigError::Unreadable { flag, path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if meta.is_dir() {
        return Err(unreadable(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is a directory, expected a file",
        )));
    }
    Ok(())
}

fn read_initrd(path: &Path) -> Result<Vec<u8>, ConfigError> {
    check_readable("--initrd", path)?;
    let unreadable =
        |source| ConfigError::Unreadable { flag: "--initrd", path: path.to_owned(), source };
    if std::fs::metadata(path).map_err(unreadable)?.len() > MAX_INITRD {
        return Err(ConfigError::InitrdTooBig(path.to_owned()));
    }
    std::fs::read(path).map_err(unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_ioeventfd_knob_turns_it_off_and_anything_else_leaves_it_on() {
        assert!(!ioeventfd_setting(Some("off")));
        assert!(!ioeventfd_setting(Some("0")));
        assert!(!ioeventfd_setting(Some(" off\n")));
        assert!(ioeventfd_setting(None));
        assert!(ioeventfd_setting(Some("on")));
        assert!(ioeventfd_setting(Some("1")));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2048"), Ok(2048 << 20));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64MB"), Ok(64 << 20));
        assert_eq!(parse_size("65536K"), Ok(64 << 20));
        assert!(parse_size("").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    /// A directory with a fake kernel, for config tests.
    struct Fixture {
        dir: PathBuf,
    }

    impl Fixture {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("hvrun-config-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut image = vec![0u8; 4096];
            image[0x10..0x18].copy_from_slice(&(1u64 << 20).to_le_bytes());
            image[0x38..0x3c].copy_from_slice(b"ARMd");
            std::fs::File::create(dir.join("Image")).unwrap().write_all(&image).unwrap();
            std::fs::write(dir.join("not-a-kernel"), b"hello").unwrap();
            Fixture { dir }
        }
        fn args(&self) -> VmArgs {
            VmArgs { kernel: Some(self.dir.join("Image")), cpus: 1, ..Default::default() }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn err(args: &VmArgs) -> String {
        VmConfig::from_args(args).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let f = Fixture::new("defaults");
        let cfg = VmConfig::from_args(&f.args()).unwrap();
        assert_eq!(cfg.mem_bytes, DEFAULT_MEM);
        assert_eq!(cfg.cmdline, DEFAULT_CMDLINE);
        assert!(cfg.reboot);
        assert!(cfg.initrd.is_none());
        assert_eq!(cfg.console, ConsoleKind::Serial);
    }

    #[test]
    fn virtio_console_makes_hvc0_the_default_console() {
        let f = Fixture::new("virtio-console");
        let args = VmArgs { console: ConsoleKind::Virtio, ..f.args() };
        let cfg = VmConfig::from_args(&args).unwrap();
        assert_eq!(cfg.cmdline, "console=hvc0 earlycon");
        let own = VmArgs { cmdline: Some("console=ttyS0".into()), ..args };
        assert_eq!(VmConfig::from_args(&own).unwrap().cmdline, "console=ttyS0", "user's wins");
    }

    #[test]
    fn every_mistake_has_a_message() {
        let f = Fixture::new("mistakes");
        let missing = VmArgs { kernel: Some(f.dir.join("nope")), ..f.args() };
        assert!(err(&missing).starts_with("--kernel "), "{}", err(&missing));
        let not_kernel = VmArgs { kernel: Some(f.dir.join("not-a-kernel")), ..f.args() };
        assert!(err(&not_kernel).contains("is not an arm64 Linux kernel"));
        let dir_kernel = VmArgs { kernel: Some(f.dir.clone()), ..f.args() };
        assert!(err(&dir_kernel).contains("is a directory"));
        let small = VmArgs { mem: Some("32M".into()), ..f.args() };
        assert_eq!(err(&small), "--mem 32M: guest memory must be at least 64 MiB");
        let junk = VmArgs { mem: Some("lots".into()), ..f.args() };
        assert!(err(&junk).starts_with("--mem `lots` is not a size"), "{}", err(&junk));
        let odd = VmArgs { mem: Some("65M".into()), ..f.args() };
        assert!(err(&odd).contains("multiple of 2 MiB"));
        let zero = VmArgs { cpus: 0, ..f.args() };
        assert!(err(&zero).contains("at least one vCPU"));
        let many = VmArgs { cpus: 500, ..f.args() };
        assert!(err(&many).contains("at most 123 vCPUs"));
        let no_disk = f.dir.join("no-disk").display().to_string();
        let disk = VmArgs { disks: vec![no_disk.clone()], ..f.args() };
        assert!(err(&disk).starts_with(&format!("disk {no_disk}: No such file")), "{}", err(&disk));
        let bad_opt = VmArgs { disks: vec![format!("{no_disk},fast")], ..f.args() };
        assert!(err(&bad_opt).contains("unknown option `fast`"), "{}", err(&bad_opt));
        let initrd = VmArgs { initrd: Some(f.dir.join("no-initrd")), ..f.args() };
        assert!(err(&initrd).starts_with("--initrd "));
        let nul = VmArgs { cmdline: Some("a\0b".into()), ..f.args() };
        assert!(err(&nul).contains("NUL"));
    }

    #[test]
    fn disk_specs() {
        let d: DiskSpec = "/img/root.img".parse().unwrap();
        assert_eq!((d.read_only, d.sync, d.serial.as_str()), (false, SyncMode::Full, "root.img"));
        let d: DiskSpec = "a.img,ro,sync=none,serial=BOOT1".parse().unwrap();
        assert_eq!((d.read_only, d.sync, d.serial.as_str()), (true, SyncMode::None, "BOOT1"));
        assert!("a.img,sync=sometimes".parse::<DiskSpec>().is_err());
        assert!("a.img,serial=123456789012345678901".parse::<DiskSpec>().is_err());
        assert!(",ro".parse::<DiskSpec>().is_err());
    }

    #[test]
    fn disks_are_opened_and_locked() {
        let f = Fixture::new("disks");
        let img = f.dir.join("disk.img");
        std::fs::File::create(&img).unwrap().set_len(1 << 20).unwrap();
        let spec = img.display().to_string();
        let cfg = VmConfig::from_args(&VmArgs { disks: vec![spec.clone()], ..f.args() }).unwrap();
        assert_eq!(cfg.disks[0].image.size(), 1 << 20);
        let e = VmConfig::from_args(&VmArgs { disks: vec![spec], ..f.args() }).unwrap_err();
        assert!(e.to_string().contains("in use by another process"), "{e}");
    }

    #[test]
    fn host_limits_are_enforced() {
        let f = Fixture::new("host");
        let cfg =
            VmConfig::from_args(&VmArgs { mem: Some("64G".into()), cpus: 4, ..f.args() }).unwrap();
        let roomy = HostLimits { max_vcpus: 8, max_ipa_bits: 40, host_ram_bytes: 128 << 30 };
        assert!(cfg.check_host(&roomy).is_ok());
        let small_ipa = HostLimits { max_ipa_bits: 36, ..roomy };
        let e = cfg.check_host(&small_ipa).unwrap_err().to_string();
        assert!(e.contains("(36 bits) holds at most 64512 MiB"), "{e}");
        let few_cpus = HostLimits { max_vcpus: 2, ..roomy };
        assert!(cfg.check_host(&few_cpus).unwrap_err().to_string().contains("at most 2 vCPUs"));
        let small_host = HostLimits { host_ram_bytes: 16 << 30, ..roomy };
        let e = cfg.check_host(&small_host).unwrap_err().to_string();
        assert_eq!(e, "--mem 64G: more than this host's 16384 MiB of RAM; ask for less");
    }
}
