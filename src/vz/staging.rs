//! The kernel and initramfs handed to Virtualization.framework, which boots files by URL: hvrun
//! writes the bytes it checked (a gzip'd or EFI zboot kernel already decompressed, since VZ boots
//! only an uncompressed arm64 `Image`) into a private directory that is removed when the VM ends.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Files written for one boot; removed on drop.
#[derive(Debug)]
pub struct StagedBoot {
    dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
}

impl StagedBoot {
    /// Writes `kernel` (and `initrd`) into a new owner-only directory under `parent`.
    pub fn write(
        parent: &Path,
        kernel: &[u8],
        initrd: Option<&[u8]>,
    ) -> std::io::Result<StagedBoot> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let dir = parent.join(format!("hvrun-vz-{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        // Owned from here on, so a failure below still removes the directory.
        let mut staged = StagedBoot { kernel: dir.join("Image"), initrd: None, dir };
        write_new(&staged.kernel, kernel)?;
        if let Some(bytes) = initrd {
            let path = staged.dir.join("initrd");
            write_new(&path, bytes)?;
            staged.initrd = Some(path);
        }
        Ok(staged)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)
}

impl Drop for StagedBoot {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            log::warn!("could not remove {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_private_exact_and_removed() {
        let staged =
            StagedBoot::write(&std::env::temp_dir(), b"ARMd kernel", Some(b"cpio")).unwrap();
        assert_eq!(std::fs::read(&staged.kernel).unwrap(), b"ARMd kernel");
        assert_eq!(std::fs::read(staged.initrd.as_ref().unwrap()).unwrap(), b"cpio");
        let mode = std::fs::metadata(staged.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let dir = staged.dir().to_owned();
        drop(staged);
        assert!(!dir.exists());
        let bare = StagedBoot::write(&std::env::temp_dir(), b"k", None).unwrap();
        assert!(bare.initrd.is_none());
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let parent =
            std::env::temp_dir().join(format!("hvrun-stage-missing-{}", std::process::id()));
        assert!(StagedBoot::write(&parent, b"k", None).is_err());
        assert!(!parent.exists());
    }
}
