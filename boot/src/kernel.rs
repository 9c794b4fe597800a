//! The arm64 Linux kernel image: recognise it from its bytes (a raw `Image`, a gzip'd `Image` as
//! many distributions ship `vmlinuz`, or an EFI zboot image with a gzip payload), check its header,
//! and load it into guest RAM.
//!
//! The header format and placement rules are in the kernel's
//! Documentation/arch/arm64/booting.rst §4 ("Call the kernel image").

use std::io::Read;
use std::path::{Path, PathBuf};

use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::layout::KERNEL_ALIGN;

/// `"ARM\x64"`, little-endian, at offset 0x38 of every arm64 Image.
const ARM64_MAGIC: u32 = 0x644d_5241;
/// Size of the arm64 Image header.
const HEADER_SIZE: usize = 64;
/// A decompressed kernel larger than this is not a kernel; the cap keeps a hostile gzip file
/// from filling host memory.
const MAX_KERNEL_SIZE: u64 = 512 << 20;

/// Errors from reading and loading a kernel image; each says what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read kernel {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} is not an arm64 Linux kernel: expected an uncompressed `Image`, a gzip'd Image, or an \
         EFI zboot image (the `ARM\\x64` magic is missing)"
    )]
    NotArm64Image(String),
    #[error(
        "{what}: cannot decompress the kernel ({source}); pass the uncompressed `Image` instead"
    )]
    Decompress {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: the kernel is bigger than 512 MiB once decompressed; is it really a kernel?")]
    TooBig(String),
    #[error("{0}: EFI zboot image compressed with `{1}`; only gzip payloads are supported, pass the uncompressed `Image` instead")]
    UnsupportedZboot(String, String),
    #[error("{0}: big-endian arm64 kernels are not supported; use a little-endian kernel")]
    BigEndian(String),
    #[error(
        "the kernel needs {needed} bytes of RAM for itself; give the guest more memory with --mem"
    )]
    DoesNotFit { needed: u64 },
    #[error("loading the kernel into guest memory failed: {0}")]
    Load(String),
}

/// How the kernel file was packaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// A raw arm64 `Image`.
    Image,
    /// A gzip'd `Image` (Debian/Ubuntu `vmlinuz` on some releases).
    Gzip,
    /// An EFI zboot PE file wrapping a gzip'd `Image`.
    EfiZbootGzip,
}

/// The fields of the arm64 Image header that decide where and how the kernel is placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Offset from the 2 MiB aligned base at which the Image must sit.
    pub text_offset: u64,
    /// Bytes the kernel occupies once running, BSS included (larger than the file).
    pub image_size: u64,
    /// Bit 0: big-endian; bits 1–2: page size; bit 3: may be placed anywhere in RAM.
    pub flags: u64,
}

impl ImageHeader {
    /// Parses the header at the start of `bytes`, or `None` if it is not an arm64 Image.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < HEADER_SIZE {
            return None;
        }
        let u64_at = |off: usize| u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap());
        let magic = u32::from_le_bytes(bytes[0x38..0x3c].try_into().unwrap());
        if magic != ARM64_MAGIC {
            return None;
        }
        let image_size = u64_at(0x10);
        Some(if image_size == 0 {
            // Kernels before 3.17 leave image_size zero and expect text_offset 0x80000
            // (booting.rst: "if image_size is zero, text_offset can be assumed to be 0x80000").
            ImageHeader { text_offset: 0x8_0000, image_size: 0, flags: 0 }
        } else {
            ImageHeader { text_offset: u64_at(0x08), image_size, flags: u64_at(0x18) }
        })
    }

    /// Whether the kernel was built big-endian.
    pub fn is_big_endian(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// A kernel image read from disk, decompressed if needed, with its header checked.
#[derive(Clone, Debug)]
pub struct KernelImage {
    bytes: Vec<u8>,
    header: ImageHeader,
    format: KernelFormat,
}

/// Where the kernel ended up in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedKernel {
    /// The first instruction: the Image's first byte.
    pub entry: GuestAddress,
    /// First byte after everything the kernel occupies, BSS included.
    pub end: GuestAddress,
}

impl KernelImage {
    /// Reads and checks the kernel at `path`.
    pub fn open(path: &Path) -> Result<Self, KernelError> {
        let bytes = std::fs::read(path)
            .map_err(|source| KernelError::Read { path: path.to_owned(), source })?;
        Self::from_bytes(bytes, &path.display().to_string())
    }

    /// Recognises the kernel format from its first bytes; `what` names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, what: &str) -> Result<Self, KernelError> {
        let (bytes, format) = if bytes.starts_with(&[0x1f, 0x8b]) {
            (gunzip(&bytes, what, MAX_KERNEL_SIZE)?, KernelFormat::Gzip)
        } else if let Some(payload) = zboot_payload(&bytes, what)? {
            (gunzip(payload, what, MAX_KERNEL_SIZE)?, KernelFormat::EfiZbootGzip)
        } else {
            (bytes, KernelFormat::Image)
        };
        let header =
            ImageHeader::parse(&bytes).ok_or_else(|| KernelError::NotArm64Image(what.into()))?;
        if header.is_big_endian() {
            return Err(KernelError::BigEndian(what.into()));
        }
        Ok(KernelImage { bytes, header, format })
    }

    /// The checked header.
    pub fn header(&self) -> ImageHeader {
        self.header
    }

    /// How the file was packaged.
    pub fn format(&self) -> KernelFormat {
        self.format
    }

    /// The (decompressed) Image bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes of RAM from the 2 MiB aligned load base to the end of the running kernel.
    pub fn footprint(&self) -> u64 {
        self.header.text_offset + self.header.image_size.max(self.bytes.len() as u64)
    }

    /// Where the kernel will sit when loaded at the 2 MiB aligned `base`.
    pub fn placement(&self, base: GuestAddress) -> LoadedKernel {
        debug_assert_eq!(base.0 % KERNEL_ALIGN, 0);
        LoadedKernel {
            entry: GuestAddress(base.0 + self.header.text_offset),
            end: GuestAddress(base.0 + self.footprint()),
        }
    }

    /// Copies the Image into guest memory at the 2 MiB aligned `base` (plus text_offset).
    ///
    /// The copy itself is linux-loader's arm64 `PE` loader, which exists only when hvrun is built
    /// for an arm64 host — the only hosts that can run an arm64 guest.
    #[cfg(target_arch = "aarch64")]
    pub fn load<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        base: GuestAddress,
    ) -> Result<LoadedKernel, KernelError> {
        use linux_loader::loader::{pe::PE, KernelLoader};

        let placement = self.placement(base);
        if !mem.address_in_range(GuestAddress(placement.end.0 - 1)) {
            return Err(KernelError::DoesNotFit { needed: self.footprint() });
        }
        let mut image = std::io::Cursor::new(self.bytes.as_slice());
        let loaded = PE::load(mem, Some(base), &mut image, None)
            .map_err(|e| KernelError::Load(e.to_string()))?;
        debug_assert_eq!(loaded.kernel_load, placement.entry);
        Ok(placement)
    }

    /// On hosts that are not arm64 no backend can run the guest, so loading is refused.
    #[cfg(not(target_arch = "aarch64"))]
    pub fn load<M: GuestMemoryBackend>(
        &self,
        _mem: &M,
        _base: GuestAddress,
    ) -> Result<LoadedKernel, KernelError> {
        Err(KernelError::Load("arm64 kernels can only be loaded by an arm64 build of hvrun".into()))
    }
}

/// Decompresses a gzip stream, refusing output beyond `limit` bytes.
fn gunzip(compressed: &[u8], what: &str, limit: u64) -> Result<Vec<u8>, KernelError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(compressed)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|source| KernelError::Decompress { what: what.into(), source })?;
    if out.len() as u64 > limit {
        return Err(KernelError::TooBig(what.into()));
    }
    Ok(out)
}

/// If `bytes` is an EFI zboot image, returns its gzip payload.
///
/// Layout (linux drivers/firmware/efi/libstub/zboot-header.S): "MZ" at 0, "zimg" at 4,
/// payload offset (u32) at 8, payload size (u32) at 12, compression name (NUL-padded) at 24.
fn zboot_payload<'a>(bytes: &'a [u8], what: &str) -> Result<Option<&'a [u8]>, KernelError> {
    if bytes.len() < 56 || &bytes[0..2] != b"MZ" || &bytes[4..8] != b"zimg" {
        return Ok(None);
    }
    let u32_at = |off: usize| u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
    let name = &bytes[24..56];
    let name = String::from_utf8_lossy(&name[..name.iter().position(|&b| b == 0).unwrap_or(32)]);
    if name != "gzip" {
        return Err(KernelError::UnsupportedZboot(what.into(), name.into_owned()));
    }
    let (offset, size) = (u32_at(8), u32_at(12));
    bytes
        .get(offset..offset.saturating_add(size))
        .map(Some)
        .ok_or_else(|| KernelError::NotArm64Image(what.into()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal arm64 Image: a valid header followed by `body_len` bytes.
    pub(crate) fn fake_image(
        text_offset: u64,
        image_size: u64,
        flags: u64,
        body_len: usize,
    ) -> Vec<u8> {
        let mut image = vec![0u8; HEADER_SIZE + body_len];
        image[0x08..0x10].copy_from_slice(&text_offset.to_le_bytes());
        image[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
        image[0x18..0x20].copy_from_slice(&flags.to_le_bytes());
        image[0x38..0x3c].copy_from_slice(&ARM64_MAGIC.to_le_bytes());
        for (i, b) in image[HEADER_SIZE..].iter_mut().enumerate() {
            *b = i as u8;
        }
        image
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn raw_image_is_recognised() {
        let k = KernelImage::from_bytes(fake_image(0, 0x10_0000, 0b1010, 100), "k").unwrap();
        assert_eq!(k.format(), KernelFormat::Image);
        assert_eq!(k.header().image_size, 0x10_0000);
        assert_eq!(k.footprint(), 0x10_0000);
        let p = k.placement(GuestAddress(0x4000_0000));
        assert_eq!(p.entry, GuestAddress(0x4000_0000));
        assert_eq!(p.end, GuestAddress(0x4010_0000));
    }

    #[test]
    fn gzip_image_is_decompressed() {
        let raw = fake_image(0, 4096, 0, 4000);
        let k = KernelImage::from_bytes(gzip(&raw), "k").unwrap();
        assert_eq!(k.format(), KernelFormat::Gzip);
        assert_eq!(k.bytes(), raw.as_slice());
    }

    #[test]
    fn zboot_gzip_payload_is_extracted() {
        let raw = fake_image(0, 4096, 0, 1000);
        let payload = gzip(&raw);
        let mut pe = vec![0u8; 128];
        pe[0..2].copy_from_slice(b"MZ");
        pe[4..8].copy_from_slice(b"zimg");
        pe[8..12].copy_from_slice(&128u32.to_le_bytes());
        pe[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        pe[24..28].copy_from_slice(b"gzip");
        pe.extend_from_slice(&payload);
        let k = KernelImage::from_bytes(pe.clone(), "k").unwrap();
        assert_eq!(k.format(), KernelFormat::EfiZbootGzip);
        assert_eq!(k.bytes(), raw.as_slice());

        pe[24..28].copy_from_slice(b"zstd");
        let err = KernelImage::from_bytes(pe, "k").unwrap_err();
        assert!(matches!(err, KernelError::UnsupportedZboot(_, ref c) if c == "zstd"), "{err}");
    }

    #[test]
    fn old_kernels_without_image_size_use_text_offset_0x80000() {
        let k = KernelImage::from_bytes(fake_image(0x1234, 0, 0, 10), "k").unwrap();
        assert_eq!(k.header().text_offset, 0x8_0000);
        assert_eq!(k.placement(GuestAddress(0)).entry, GuestAddress(0x8_0000));
    }

    #[test]
    fn non_kernels_are_refused_with_a_clear_error() {
        for junk in [vec![], b"#!/bin/sh\necho hi\n".to_vec(), vec![0u8; 4096]] {
            let err = KernelImage::from_bytes(junk, "initrd.img").unwrap_err();
            assert!(err.to_string().contains("initrd.img is not an arm64 Linux kernel"), "{err}");
        }
        // A truncated gzip stream.
        let mut gz = gzip(&fake_image(0, 4096, 0, 4000));
        gz.truncate(gz.len() / 2);
        assert!(matches!(KernelImage::from_bytes(gz, "k"), Err(KernelError::Decompress { .. })));
        // Big-endian kernels.
        let err = KernelImage::from_bytes(fake_image(0, 4096, 1, 10), "k").unwrap_err();
        assert!(matches!(err, KernelError::BigEndian(_)));
    }

    #[test]
    fn gzip_bombs_are_capped() {
        // 4 MiB of zeros compress to a few KiB; with a 1 MiB limit they must be refused.
        let bomb = gzip(&vec![0u8; 4 << 20]);
        let err = gunzip(&bomb, "k", 1 << 20).unwrap_err();
        assert!(matches!(err, KernelError::TooBig(_)), "{err}");
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn load_copies_the_image_at_base_plus_text_offset() {
        use vm_memory::{Bytes, GuestMemoryMmap};
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0x4000_0000), 8 << 20)]).unwrap();
        let image = fake_image(0x8_0000, 0x20_0000, 0, 256);
        let k = KernelImage::from_bytes(image.clone(), "k").unwrap();
        let loaded = k.load(&mem, GuestAddress(0x4000_0000)).unwrap();
        assert_eq!(loaded.entry, GuestAddress(0x4008_0000));
        let mut back = vec![0u8; image.len()];
        mem.read_slice(&mut back, loaded.entry).unwrap();
        assert_eq!(back, image);

        let huge = KernelImage::from_bytes(fake_image(0, 64 << 20, 0, 16), "k").unwrap();
        assert!(matches!(
            huge.load(&mem, GuestAddress(0x4000_0000)),
            Err(KernelError::DoesNotFit { .. })
        ));
    }
}
