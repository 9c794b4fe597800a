//! A raw disk image on the host: positioned reads and writes, flushes that reach stable storage
//! according to the sync mode, discard and write-zeroes, and an exclusive lock so that two VMs
//! never write one image at once.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Sector size of the virtio-blk protocol (VIRTIO 1.2 §5.2.6: "sector" is always 512 bytes).
pub const SECTOR_SIZE: u64 = 512;

/// What a guest FLUSH does on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Data reaches the storage medium: `fdatasync` on Linux, `fcntl(F_FULLFSYNC)` on macOS
    /// (where plain fsync only reaches the drive's volatile cache). The default: a guest that
    /// flushed has its data even if the host loses power.
    #[default]
    Full,
    /// `fsync`/`fdatasync`: on macOS the drive may still hold the data in its cache.
    Fsync,
    /// FLUSH does nothing: fastest, and a host crash can lose what the guest thought was safe.
    None,
}

impl std::str::FromStr for SyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(SyncMode::Full),
            "fsync" => Ok(SyncMode::Fsync),
            "none" => Ok(SyncMode::None),
            other => Err(format!("sync={other}: expected full, fsync or none")),
        }
    }
}

/// Errors opening a disk image; each tells the user what to do.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "disk {0}: in use by another process (it holds the image's lock); stop the other VM, \
         or attach the image read-only (,ro) to every VM"
    )]
    Locked(PathBuf),
    #[error(
        "disk {path}: its size ({size} bytes) is not a multiple of 512; round it up with \
         `truncate -s %512 {path}`"
    )]
    Unaligned { path: PathBuf, size: u64 },
    #[error("disk {0}: empty image; give it a size, e.g. `truncate -s 1G {0}`")]
    Empty(PathBuf),
}

/// An open, locked disk image.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    size: u64,
    read_only: bool,
    sync: SyncMode,
}

impl DiskImage {
    /// Opens and locks `path`: exclusively for a writable disk, shared for a read-only one (so
    /// several VMs may read one image, but never while one writes it).
    pub fn open(path: &Path, read_only: bool, sync: SyncMode) -> Result<Self, DiskError> {
        let open_err = |source| DiskError::Open { path: path.to_owned(), source };
        let file = OpenOptions::new().read(true).write(!read_only).open(path).map_err(open_err)?;
        let lock = if read_only { libc::LOCK_SH } else { libc::LOCK_EX };
        // SAFETY: flock only operates on the descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), lock | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            return Err(if err.kind() == std::io::ErrorKind::WouldBlock {
                DiskError::Locked(path.to_owned())
            } else {
                open_err(err)
            });
        }
        let size = file.metadata().map_err(open_err)?.len();
        if size == 0 {
            return Err(DiskError::Empty(path.to_owned()));
        }
        if size % SECTOR_SIZE != 0 {
            return Err(DiskError::Unaligned { path: path.to_owned(), size });
        }
        Ok(DiskImage { file, size, read_only, sync })
    }

    /// Size in bytes (a multiple of [`SECTOR_SIZE`]).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Makes completed writes durable according to the sync mode.
    pub fn flush(&self) -> std::io::Result<()> {
        match self.sync {
            SyncMode::None => Ok(()),
            SyncMode::Fsync => self.file.sync_data(),
            SyncMode::Full => full_sync(&self.file),
        }
    }

    /// Deallocates `len` bytes at `offset` (the host file gets a hole; reads return zeros).
    pub fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        punch_hole(&self.file, offset, len)
    }

    /// Makes `len` bytes at `offset` read as zero; with `unmap`, by deallocating them.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> std::io::Result<()> {
        if unmap && punch_hole(&self.file, offset, len).is_ok() {
            return Ok(());
        }
        const CHUNK: u64 = 64 << 10;
        let zeros = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done);
            self.file.write_all_at(&zeros[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }
}

#[cfg(target_os = "macos")]
fn full_sync(file: &File) -> std::io::Result<()> {
    // SAFETY: F_FULLFSYNC takes no argument besides the descriptor we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_FULLFSYNC) } == -1 {
        return file.sync_all(); // not supported by this file system: the best it offers
    }
    Ok(())
}

#[cfg(not(target_os = "macos"))]
fn full_sync(file: &File) -> std::io::Result<()> {
    // On Linux fdatasync already flushes the drive's write cache (it issues a cache flush).
    file.sync_data()
}

#[cfg(target_os = "linux")]
fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate only operates on the descriptor we own; offsets are checked by the kernel.
    let ret = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(target_os = "macos")]
fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let arg = libc::fpunchhole_t {
        fp_flags: 0,
        reserved: 0,
        fp_offset: offset as i64,
        fp_length: len as i64,
    };
    // SAFETY: F_PUNCHHOLE reads the fpunchhole_t we pass, which lives across the call.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_PUNCHHOLE, &arg) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn punch_hole(_file: &File, _offset: u64, _len: u64) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn image(name: &str, size: u64) -> PathBuf {
        let path = std::env::temp_dir().join(format!("hvrun-disk-{name}-{}", std::process::id()));
        let f = File::create(&path).unwrap();
        f.set_len(size).unwrap();
        path
    }

    #[test]
    fn reads_back_what_was_written_and_flushes() {
        let path = image("rw", 1 << 20);
        for sync in [SyncMode::Full, SyncMode::Fsync, SyncMode::None] {
            let disk = DiskImage::open(&path, false, sync).unwrap();
            disk.write_at(b"hello", 4096).unwrap();
            disk.flush().unwrap();
            let mut buf = [0u8; 5];
            disk.read_at(&mut buf, 4096).unwrap();
            assert_eq!(&buf, b"hello");
            assert!(disk.read_at(&mut buf, (1 << 20) - 2).is_err(), "reads past the end fail");
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_second_writer_is_refused_readers_share() {
        let path = image("lock", 1 << 20);
        let first = DiskImage::open(&path, false, SyncMode::Full).unwrap();
        let err = DiskImage::open(&path, false, SyncMode::Full).unwrap_err();
        assert!(matches!(err, DiskError::Locked(_)), "{err}");
        assert!(err.to_string().contains("in use by another process"));
        assert!(DiskImage::open(&path, true, SyncMode::Full).is_err(), "no reader while writing");
        drop(first);
        let r1 = DiskImage::open(&path, true, SyncMode::Full).unwrap();
        let _r2 = DiskImage::open(&path, true, SyncMode::Full).unwrap();
        assert!(r1.read_only());
        assert!(DiskImage::open(&path, false, SyncMode::Full).is_err(), "no writer while read");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn bad_images_have_clear_errors() {
        let odd = image("odd", 1000);
        let err = DiskImage::open(&odd, false, SyncMode::Full).unwrap_err();
        assert!(err.to_string().contains("not a multiple of 512"), "{err}");
        let empty = image("empty", 0);
        assert!(matches!(DiskImage::open(&empty, false, SyncMode::Full), Err(DiskError::Empty(_))));
        let missing = std::env::temp_dir().join("hvrun-disk-does-not-exist");
        assert!(matches!(
            DiskImage::open(&missing, true, SyncMode::Full),
            Err(DiskError::Open { .. })
        ));
        assert_eq!("fsync".parse(), Ok(SyncMode::Fsync));
        assert!("always".parse::<SyncMode>().is_err());
        std::fs::remove_file(odd).unwrap();
        std::fs::remove_file(empty).unwrap();
    }

    #[test]
    fn discard_and_write_zeroes() {
        let path = image("trim", 4 << 20);
        let disk = DiskImage::open(&path, false, SyncMode::None).unwrap();
        disk.write_at(&vec![0xaa; 2 << 20], 0).unwrap();
        disk.flush().unwrap();
        let allocated = std::fs::metadata(&path).unwrap().blocks();
        disk.discard(0, 1 << 20).unwrap();
        assert!(std::fs::metadata(&path).unwrap().blocks() < allocated, "discard frees blocks");
        disk.write_zeroes(1 << 20, 4096, false).unwrap();
        let mut buf = vec![0xffu8; 8192];
        disk.read_at(&mut buf, (1 << 20) - 4096).unwrap();
        assert!(buf.iter().all(|&b| b == 0), "discarded and zeroed ranges read as zero");
        disk.read_at(&mut buf[..1], (1 << 20) + 4096).unwrap();
        assert_eq!(buf[0], 0xaa, "bytes after the range are untouched");
        std::fs::remove_file(path).unwrap();
    }
}
