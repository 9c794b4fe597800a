//! A macOS guest on disk: one directory ("bundle") holding the disk image, the auxiliary storage
//! (the guest's NVRAM), the hardware model and machine identifier VZ needs to boot it again, and
//! `hvrun-macos.json`, a small manifest (what was installed, whether the install finished, the
//! default CPUs and memory). A lock file keeps a second hvrun from running or reinstalling a
//! bundle that is in use (VZ itself blocks, rather than fails, on a disk image another VM holds).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The manifest's file name.
pub const MANIFEST: &str = "hvrun-macos.json";
/// The guest's disk: a sparse raw image.
pub const DISK: &str = "Disk.img";
/// `VZMacAuxiliaryStorage`: the guest's boot NVRAM.
pub const AUX_STORAGE: &str = "AuxiliaryStorage";
/// `VZMacHardwareModel.dataRepresentation`: the Mac model the guest was installed for.
pub const HARDWARE_MODEL: &str = "HardwareModel";
/// `VZMacMachineIdentifier.dataRepresentation`: the guest's identity (its serial number).
pub const MACHINE_ID: &str = "MachineIdentifier";
/// Held (flock) by the hvrun that runs or installs the bundle.
const LOCK: &str = ".hvrun.lock";
/// The manifest format this hvrun writes; a newer one is refused rather than misread.
pub const FORMAT: u32 = 1;
/// Largest manifest or blob hvrun reads (they are a few hundred bytes).
const MAX_SMALL_FILE: u64 = 1 << 20;

/// Whether the guest in a bundle can boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BundleState {
    /// `hvrun macos install` is writing it (or died while doing so).
    Installing,
    /// The install finished; `hvrun macos run` boots it.
    Ready,
    /// The install stopped; the reason says how (cancelled, failed, at what progress).
    Incomplete { reason: String },
}

/// The restore image a bundle was installed from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreImageInfo {
    /// The IPSW's path or URL.
    pub source: String,
    /// macOS version inside it, e.g. "14.4.1".
    pub macos: String,
    /// Its build, e.g. "23E224".
    pub build: String,
}

/// `hvrun-macos.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub state: BundleState,
    /// "hvrun 0.1.0".
    pub created_by: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// The host's macOS at install time (a bundle needs that release or later to run).
    pub host_macos: String,
    pub restore_image: RestoreImageInfo,
    pub disk_bytes: u64,
    /// `hvrun macos run` defaults (the install's `--cpus` / `--mem`).
    pub cpus: u32,
    pub mem_bytes: u64,
    /// The guest's minimums, from the restore image's configuration requirements.
    pub min_cpus: u32,
    pub min_mem_bytes: u64,
}

/// A bundle problem the user can act on.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "bundle {}: no {MANIFEST}, so it is not a bundle made by `hvrun macos install`",
        .0.display()
    )]
    NotABundle(PathBuf),
    #[error(
        "bundle {}: a macOS is already installed there; run it with `hvrun macos run {}`, or \
         remove the directory to install anew", .0.display(), .0.display()
    )]
    AlreadyInstalled(PathBuf),
    #[error(
        "bundle {}: the directory exists and is not empty; choose a new path (the install \
         creates it)", .0.display()
    )]
    NotEmpty(PathBuf),
    #[error("bundle {}: {MANIFEST} is damaged ({detail}); install the bundle again", .path.display())]
    BadManifest { path: PathBuf, detail: String },
    #[error(
        "bundle {}: written by a newer hvrun (manifest format {found}, this hvrun reads {FORMAT}); \
         update hvrun", .path.display()
    )]
    NewerFormat { path: PathBuf, found: u32 },
    #[error(
        "bundle {}: in use by another hvrun (running or installing it); stop that one first",
        .0.display()
    )]
    Locked(PathBuf),
}

/// An open, locked bundle.
#[derive(Debug)]
pub struct Bundle {
    root: PathBuf,
    manifest: Manifest,
    /// Holds the flock for as long as the bundle is open.
    _lock: File,
}

impl Bundle {
    /// Creates a bundle at `root` for a new install: the directory, the manifest (state
    /// `Installing`) and a sparse disk image of `manifest.disk_bytes`. An existing bundle whose
    /// install did not finish is reused (its old files are removed); anything else that exists
    /// is refused.
    pub fn create(root: &Path, manifest: Manifest) -> Result<Bundle, BundleError> {
        let io = |source| BundleError::Io { path: root.to_owned(), source };
        if root.join(MANIFEST).exists() {
            let old = read_manifest(root)?;
            if old.state == BundleState::Ready {
                return Err(BundleError::AlreadyInstalled(root.to_owned()));
            }
        } else if root.exists() {
            let mut entries = std::fs::read_dir(root).map_err(io)?;
            if entries.next().is_some() {
                return Err(BundleError::NotEmpty(root.to_owned()));
            }
        }
        std::fs::create_dir_all(root).map_err(io)?;
        let lock = lock(root)?;
        for stale in [DISK, AUX_STORAGE, HARDWARE_MODEL, MACHINE_ID] {
            match std::fs::remove_file(root.join(stale)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
                _ => {}
            }
        }
        let disk = root.join(DISK);
        let disk_io = |source| BundleError::Io { path: disk.clone(), source };
        // A sparse file: APFS allocates blocks only as the guest writes them.
        File::create_new(&disk).map_err(disk_io)?.set_len(manifest.disk_bytes).map_err(disk_io)?;
        let bundle = Bundle { root: root.to_owned(), manifest, _lock: lock };
        bundle.write_manifest()?;
        Ok(bundle)
    }

    /// Opens and locks the bundle at `root`.
    pub fn open(root: &Path) -> Result<Bundle, BundleError> {
        if !root.join(MANIFEST).is_file() {
            return Err(BundleError::NotABundle(root.to_owned()));
        }
        let lock = lock(root)?;
        let manifest = read_manifest(root)?;
        Ok(Bundle { root: root.to_owned(), manifest, _lock: lock })
    }

    /// The bundle's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A file of the bundle (one of the constants of this module).
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The manifest as last read or written.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Why the bundle cannot boot, if it cannot: its install never finished.
    pub fn incomplete_reason(&self) -> Option<String> {
        match &self.manifest.state {
            BundleState::Ready => None,
            BundleState::Installing => {
                Some("hvrun stopped during the install, before it finished".into())
            }
            BundleState::Incomplete { reason } => Some(reason.clone()),
        }
    }

    /// Records the new state in the manifest (atomically: a crash leaves the old or the new).
    pub fn set_state(&mut self, state: BundleState) -> Result<(), BundleError> {
        self.manifest.state = state;
        self.write_manifest()
    }

    /// Writes a small binary file of the bundle (hardware model, machine identifier).
    pub fn write_blob(&self, name: &str, bytes: &[u8]) -> Result<(), BundleError> {
        write_atomically(&self.path(name), bytes)
    }

    /// Reads a small binary file of the bundle.
    pub fn read_blob(&self, name: &str) -> Result<Vec<u8>, BundleError> {
        read_small(&self.path(name))
    }

    fn write_manifest(&self) -> Result<(), BundleError> {
        let mut text = serde_json::to_string_pretty(&self.manifest).map_err(|e| {
            BundleError::BadManifest { path: self.path(MANIFEST), detail: e.to_string() }
        })?;
        text.push('\n');
        write_atomically(&self.path(MANIFEST), text.as_bytes())
    }
}

/// Takes the bundle's lock without waiting.
fn lock(root: &Path) -> Result<File, BundleError> {
    let path = root.join(LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| BundleError::Io { path: path.clone(), source })?;
    // SAFETY: flock only operates on the descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        return Err(if err.kind() == std::io::ErrorKind::WouldBlock {
            BundleError::Locked(root.to_owned())
        } else {
            BundleError::Io { path, source: err }
        });
    }
    Ok(file)
}

fn read_manifest(root: &Path) -> Result<Manifest, BundleError> {
    let path = root.join(MANIFEST);
    let bytes = read_small(&path)?;
    // The format first, so a newer manifest is reported as such and not as damaged.
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let bad = |e: serde_json::Error| BundleError::BadManifest {
        path: path.clone(),
        detail: e.to_string(),
    };
    let Format { format } = serde_json::from_slice(&bytes).map_err(bad)?;
    if format > FORMAT {
        return Err(BundleError::NewerFormat { path, found: format });
    }
    serde_json::from_slice(&bytes).map_err(bad)
}

fn read_small(path: &Path) -> Result<Vec<u8>, BundleError> {
    let io = |source| BundleError::Io { path: path.to_owned(), source };
    let file = File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_SMALL_FILE + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > MAX_SMALL_FILE {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than 1 MiB; this is not a file hvrun wrote",
        )));
    }
    Ok(bytes)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let io = |source| BundleError::Io { path: path.to_owned(), source };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = File::create(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            state: BundleState::Installing,
            created_by: "hvrun 0.1.0".into(),
            created_at: 1_700_000_000,
            host_macos: "14.4.1".into(),
            restore_image: RestoreImageInfo {
                source: "/Users/me/UniversalMac_14.4.1_23E224_Restore.ipsw".into(),
                macos: "14.4.1".into(),
                build: "23E224".into(),
            },
            disk_bytes: 64 << 30,
            cpus: 4,
            mem_bytes: 8 << 30,
            min_cpus: 2,
            min_mem_bytes: 4 << 30,
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hvrun-bundle-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn create_writes_a_sparse_disk_and_the_manifest() {
        let root = temp("create").join("vm.bundle");
        let bundle = Bundle::create(&root, manifest()).unwrap();
        let disk = std::fs::metadata(root.join(DISK)).unwrap();
        assert_eq!(disk.len(), 64 << 30);
        // Sparse: nowhere near 64 GiB of blocks.
        assert!(std::os::unix::fs::MetadataExt::blocks(&disk) < 1024);
        let text = std::fs::read_to_string(root.join(MANIFEST)).unwrap();
        assert!(text.contains("\"state\": \"installing\""), "{text}");
        assert_eq!(
            bundle.incomplete_reason().unwrap(),
            "hvrun stopped during the install, before it finished"
        );
        drop(bundle);
        std::fs::remove_dir_all(root.parent().unwrap()).unwrap();
    }

    #[test]
    fn state_round_trips_and_gates_running() {
        let root = temp("state");
        let mut bundle = Bundle::create(&root, manifest()).unwrap();
        bundle.write_blob(HARDWARE_MODEL, &[1, 2, 3]).unwrap();
        let reason = "cancelled with Ctrl-C at 42%".to_string();
        bundle.set_state(BundleState::Incomplete { reason: reason.clone() }).unwrap();
        drop(bundle);
        let text = std::fs::read_to_string(root.join(MANIFEST)).unwrap();
        assert!(text.contains("\"incomplete\""), "{text}");
        let mut bundle = Bundle::open(&root).unwrap();
        assert_eq!(bundle.incomplete_reason(), Some(reason));
        assert_eq!(bundle.read_blob(HARDWARE_MODEL).unwrap(), [1, 2, 3]);
        bundle.set_state(BundleState::Ready).unwrap();
        drop(bundle);
        let bundle = Bundle::open(&root).unwrap();
        assert_eq!(bundle.incomplete_reason(), None);
        assert_eq!(bundle.manifest(), &Manifest { state: BundleState::Ready, ..manifest() });
        drop(bundle);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_bundle_is_used_by_one_hvrun_at_a_time() {
        let root = temp("lock");
        let bundle = Bundle::create(&root, manifest()).unwrap();
        let e = Bundle::open(&root).unwrap_err();
        assert!(matches!(e, BundleError::Locked(_)), "{e}");
        assert!(e.to_string().contains("in use by another hvrun"));
        assert!(matches!(Bundle::create(&root, manifest()), Err(BundleError::Locked(_))));
        drop(bundle);
        assert!(Bundle::open(&root).is_ok());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn install_refuses_what_it_must_not_overwrite() {
        let root = temp("refuse");
        let mut bundle = Bundle::create(&root, manifest()).unwrap();
        bundle.set_state(BundleState::Ready).unwrap();
        drop(bundle);
        let e = Bundle::create(&root, manifest()).unwrap_err();
        assert!(matches!(e, BundleError::AlreadyInstalled(_)), "{e}");
        // An incomplete bundle is reused, its old disk replaced.
        let mut bundle = Bundle::open(&root).unwrap();
        bundle.set_state(BundleState::Incomplete { reason: "failed".into() }).unwrap();
        drop(bundle);
        std::fs::write(root.join(AUX_STORAGE), b"old nvram").unwrap();
        let small = Manifest { disk_bytes: 1 << 30, ..manifest() };
        let bundle = Bundle::create(&root, small).unwrap();
        assert!(!root.join(AUX_STORAGE).exists());
        assert_eq!(std::fs::metadata(root.join(DISK)).unwrap().len(), 1 << 30);
        drop(bundle);
        // Someone else's directory.
        let other = temp("refuse-other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("notes.txt"), b"mine").unwrap();
        assert!(matches!(Bundle::create(&other, manifest()), Err(BundleError::NotEmpty(_))));
        assert!(matches!(Bundle::open(&other), Err(BundleError::NotABundle(_))));
        std::fs::remove_dir_all(root).unwrap();
        std::fs::remove_dir_all(other).unwrap();
    }

    #[test]
    fn damaged_and_newer_manifests_are_named() {
        let root = temp("damaged");
        drop(Bundle::create(&root, manifest()).unwrap());
        std::fs::write(root.join(MANIFEST), b"{\"format\": 1, \"state\": ").unwrap();
        let e = Bundle::open(&root).unwrap_err();
        assert!(e.to_string().contains("is damaged"), "{e}");
        std::fs::write(root.join(MANIFEST), b"{\"format\": 7, \"future\": true}").unwrap();
        let e = Bundle::open(&root).unwrap_err();
        assert!(e.to_string().contains("newer hvrun (manifest format 7"), "{e}");
        std::fs::remove_dir_all(root).unwrap();
    }
}
