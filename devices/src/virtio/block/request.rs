//! One virtio-blk request: parse a descriptor chain (VIRTIO 1.2 §5.2.6), perform it on the disk
//! image, write the status byte, and say how many bytes the device wrote.
//!
//! A request is a device-readable header `{ le32 type; le32 reserved; le64 sector; }`, then data
//! (device-writable for reads, device-readable for writes), then one device-writable status byte
//! at the very end. virtio-queue's `Reader` and `Writer` give the readable and writable bytes of
//! the chain whatever the descriptor framing (§2.6.4: the device must not rely on framing) and
//! refuse descriptors outside guest RAM. Anything malformed gets `VIRTIO_BLK_S_IOERR`; a chain
//! with no room for the status byte is returned with nothing written.

use std::io::{Read, Write};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::disk::{DiskImage, SECTOR_SIZE};

/// The request header (§5.2.6).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct RequestHeader {
    request_type: u32,
    reserved: u32,
    sector: u64,
}
// SAFETY: plain little-endian integers with no padding; any bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

/// One range of a DISCARD or WRITE_ZEROES request (§5.2.6, `virtio_blk_discard_write_zeroes`).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct DiscardSegment {
    sector: u64,
    num_sectors: u32,
    flags: u32,
}
// SAFETY: plain little-endian integers with no padding; any bit pattern is valid.
unsafe impl ByteValued for DiscardSegment {}

/// Limits the device advertises in its config space and enforces here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockLimits {
    /// Most descriptors in one request (data segments plus header and status).
    pub max_descriptors: usize,
    /// Most bytes of data in one read or write.
    pub max_data_bytes: usize,
    /// Most ranges in one DISCARD or WRITE_ZEROES request.
    pub max_discard_segments: usize,
    /// Most sectors in one discard/write-zeroes range.
    pub max_discard_sectors: u32,
}

/// Bounce buffer size for moving data between the image and guest memory.
const CHUNK: usize = 128 << 10;

/// Performs the request in `chain`; returns the number of bytes written into the chain's
/// device-writable buffers (data and status), for the used ring.
pub fn handle<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    disk: &DiskImage,
    serial: &[u8],
    limits: &BlockLimits,
) -> u32
where
    M: std::ops::Deref<Target = GuestMemoryMmap> + Clone,
{
    let descriptors = chain.clone().count();
    let Ok(mut writer) = Writer::new(mem, chain.clone()) else {
        log::debug!("virtio-blk: writable buffers outside guest memory; request dropped");
        return 0;
    };
    let Some(status_at) = writer.available_bytes().checked_sub(1) else {
        log::debug!("virtio-blk: no room for the status byte; request dropped");
        return 0;
    };
    let Ok(mut status) = writer.split_at(status_at) else { return 0 };

    let result = match Reader::new(mem, chain) {
        Ok(mut reader) if descriptors <= limits.max_descriptors => {
            perform(&mut reader, &mut writer, disk, serial, limits)
        }
        Ok(_) => Err(Status::IoErr("too many descriptors")),
        Err(_) => Err(Status::IoErr("readable buffers outside guest memory")),
    };
    let code = match result {
        Ok(()) => VIRTIO_BLK_S_OK,
        Err(Status::Unsupported(t)) => {
            log::debug!("virtio-blk: unsupported request type {t}");
            VIRTIO_BLK_S_UNSUPP
        }
        Err(Status::IoErr(why)) => {
            log::debug!("virtio-blk: I/O error: {why}");
            VIRTIO_BLK_S_IOERR
        }
    };
    // The status buffer was validated by Writer::new, so this write cannot fail.
    let _ = status.write_all(&[code as u8]);
    (writer.bytes_written() + 1) as u32
}

/// Why a request did not succeed.
enum Status {
    IoErr(&'static str),
    Unsupported(u32),
}

fn perform(
    reader: &mut Reader<'_>,
    writer: &mut Writer<'_>,
    disk: &DiskImage,
    serial: &[u8],
    limits: &BlockLimits,
) -> Result<(), Status> {
    let header: RequestHeader = reader.read_obj().map_err(|_| Status::IoErr("short header"))?;
    let data_in = reader.available_bytes();
    let data_out = writer.available_bytes();
    match header.request_type {
        VIRTIO_BLK_T_IN => {
            let len = transfer_len(data_out, data_in, limits)?;
            let offset = sector_range(header.sector, len as u64, disk)?;
            copy_disk_to_guest(disk, offset, len, writer)
        }
        VIRTIO_BLK_T_OUT => {
            let len = transfer_len(data_in, data_out, limits)?;
            let offset = sector_range(header.sector, len as u64, disk)?;
            if disk.read_only() {
                return Err(Status::IoErr("write to a read-only disk"));
            }
            copy_guest_to_disk(reader, disk, offset, len)
        }
        VIRTIO_BLK_T_FLUSH => disk.flush().map_err(|_| Status::IoErr("flush failed")),
        VIRTIO_BLK_T_GET_ID => {
            let n = (VIRTIO_BLK_ID_BYTES as usize).min(data_out);
            let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
            let len = serial.len().min(id.len());
            id[..len].copy_from_slice(&serial[..len]);
            writer.write_all(&id[..n]).map_err(|_| Status::IoErr("GET_ID buffer"))
        }
        t @ (VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES) => {
            if disk.read_only() {
                return Err(Status::IoErr("discard on a read-only disk"));
            }
            let segment_size = std::mem::size_of::<DiscardSegment>();
            if data_out != 0 || data_in == 0 || data_in % segment_size != 0 {
                return Err(Status::IoErr("malformed discard/write-zeroes payload"));
            }
            if data_in / segment_size > limits.max_discard_segments {
                return Err(Status::IoErr("too many discard segments"));
            }
            while reader.available_bytes() > 0 {
                let seg: DiscardSegment =
                    reader.read_obj().map_err(|_| Status::IoErr("discard segment"))?;
                if seg.num_sectors > limits.max_discard_sectors {
                    return Err(Status::IoErr("discard range too long"));
                }
                let len = u64::from(seg.num_sectors) * SECTOR_SIZE;
                let offset = sector_range(seg.sector, len, disk)?;
                let done = if t == VIRTIO_BLK_T_DISCARD {
                    disk.discard(offset, len)
                } else {
                    let unmap = seg.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
                    disk.write_zeroes(offset, len, unmap)
                };
                done.map_err(|_| Status::IoErr("discard/write-zeroes failed"))?;
            }
            Ok(())
        }
        other => Err(Status::Unsupported(other)),
    }
}

/// Checks a read or write's data length: whole sectors, within limits, and no data in the
/// wrong direction (the spec's "wrong descriptor direction" case).
fn transfer_len(len: usize, wrong_way: usize, limits: &BlockLimits) -> Result<usize, Status> {
    if wrong_way != 0 {
        return Err(Status::IoErr("data buffer in the wrong direction"));
    }
    if len % SECTOR_SIZE as usize != 0 {
        return Err(Status::IoErr("data length not a multiple of 512"));
    }
    if len > limits.max_data_bytes {
        return Err(Status::IoErr("request larger than size_max x seg_max"));
    }
    Ok(len)
}

/// The byte offset of `sector` if `len` bytes from there fit on the disk.
fn sector_range(sector: u64, len: u64, disk: &DiskImage) -> Result<u64, Status> {
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or(Status::IoErr("sector overflow"))?;
    match offset.checked_add(len) {
        Some(end) if end <= disk.size() => Ok(offset),
        _ => Err(Status::IoErr("request past the end of the disk")),
    }
}

fn copy_disk_to_guest(
    disk: &DiskImage,
    offset: u64,
    len: usize,
    writer: &mut Writer<'_>,
) -> Result<(), Status> {
    let mut buf = vec![0u8; CHUNK.min(len)];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        disk.read_at(&mut buf[..n], offset + done as u64)
            .map_err(|_| Status::IoErr("read failed"))?;
        writer.write_all(&buf[..n]).map_err(|_| Status::IoErr("guest buffer"))?;
        done += n;
    }
    Ok(())
}

fn copy_guest_to_disk(
    reader: &mut Reader<'_>,
    disk: &DiskImage,
    offset: u64,
    len: usize,
) -> Result<(), Status> {
    let mut buf = vec![0u8; CHUNK.min(len)];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        reader.read_exact(&mut buf[..n]).map_err(|_| Status::IoErr("guest buffer"))?;
        disk.write_at(&buf[..n], offset + done as u64)
            .map_err(|_| Status::IoErr("write failed"))?;
        done += n;
    }
    Ok(())
}
