//! hvrun's plain-data devices turned into Virtualization.framework configurations: virtio-blk
//! disks, NAT network devices, virtio-fs shares, the console on hvrun's terminal, entropy, the
//! balloon, keyboards and pointers. Configurations are plain objects: built on the main thread,
//! before the VM (and its queue) exist.

use std::os::fd::{IntoRawFd, OwnedFd};

use objc2::rc::Retained;
use objc2::AnyThread;
use objc2_foundation::{NSDictionary, NSFileHandle, NSString};
use objc2_virtualization::*;

use super::ns::{exe, file_url, framework_error};
use crate::vz::errors::VzError;
use crate::vz::net::VzNet;
use crate::vz::plan::VzDisk;
use crate::vz::share::{ShareDevice, SharedDir, AUTOMOUNT};
use crate::vz::version::{Feature, MacosVersion};
use devices::virtio::block::SyncMode;

/// A virtio-blk disk on the image at `disk.path` (VZ opens and locks it itself).
pub fn disk(
    disk: &VzDisk,
    host: MacosVersion,
) -> Result<Retained<VZStorageDeviceConfiguration>, VzError> {
    let sync = match disk.sync {
        SyncMode::Full => VZDiskImageSynchronizationMode::Full,
        SyncMode::Fsync => VZDiskImageSynchronizationMode::Fsync,
        SyncMode::None => VZDiskImageSynchronizationMode::None,
    };
    // SAFETY: a fresh allocation and a file URL; the framework reports a bad image as an error.
    let attachment = unsafe {
        VZDiskImageStorageDeviceAttachment::initWithURL_readOnly_cachingMode_synchronizationMode_error(
            VZDiskImageStorageDeviceAttachment::alloc(),
            &file_url(&disk.path),
            disk.read_only,
            VZDiskImageCachingMode::Automatic,
            sync,
        )
    }
    .map_err(|e| VzError::from_framework(&format!("--disk {}", disk.path.display()), framework_error(&e), exe()))?;
    // SAFETY: a fresh allocation with a valid attachment.
    let block = unsafe {
        VZVirtioBlockDeviceConfiguration::initWithAttachment(
            VZVirtioBlockDeviceConfiguration::alloc(),
            &attachment,
        )
    };
    if Feature::DiskSerial.available_on(host) {
        let serial = NSString::from_str(&disk.serial);
        // SAFETY: a class method checking a string.
        match unsafe {
            VZVirtioBlockDeviceConfiguration::validateBlockDeviceIdentifier_error(&serial)
        } {
            // SAFETY: the identifier was just validated.
            Ok(()) => unsafe { block.setBlockDeviceIdentifier(&serial) },
            Err(e) => log::warn!(
                "--disk {}: serial not used: {}",
                disk.path.display(),
                framework_error(&e)
            ),
        }
    } else {
        log::warn!(
            "--disk {}: the guest sees no serial ({})",
            disk.path.display(),
            crate::vz::version::TooOld { feature: Feature::DiskSerial, host }
        );
    }
    Ok(block.into_super())
}

/// A virtio-net device on VZ's NAT.
pub fn network(net: &VzNet) -> Result<Retained<VZNetworkDeviceConfiguration>, VzError> {
    let VzNet::Nat { mac } = net;
    // SAFETY: plain constructors of configuration objects.
    let (device, nat) =
        unsafe { (VZVirtioNetworkDeviceConfiguration::new(), VZNATNetworkDeviceAttachment::new()) };
    // SAFETY: a valid attachment for this device.
    unsafe { device.setAttachment(Some(&nat)) };
    if let Some(mac) = mac {
        let text = NSString::from_str(&mac.to_string());
        // SAFETY: a fresh allocation; nil for a malformed string (hvrun's parser already checked it).
        let address = unsafe { VZMACAddress::initWithString(VZMACAddress::alloc(), &text) }
            .ok_or_else(|| VzError::Host(format!("--net nat,mac={mac}: VZ refused the address")))?;
        // SAFETY: a valid address.
        unsafe { device.setMACAddress(&address) };
    }
    Ok(device.into_super())
}

/// The MAC address VZ gave `device` (its own random one when none was set).
pub fn mac_of(device: &VZNetworkDeviceConfiguration) -> String {
    // SAFETY: reading a configuration property.
    unsafe { device.MACAddress().string() }.to_string()
}

/// A virtio-fs device; `macos_guest` makes the tag `automount` VZ's automount tag.
pub fn share(
    device: &ShareDevice,
    macos_guest: bool,
) -> Result<Retained<VZDirectorySharingDeviceConfiguration>, VzError> {
    let tag = if macos_guest && device.tag == AUTOMOUNT {
        // SAFETY: a class property (macOS 13, checked by the run plan's features).
        unsafe { VZVirtioFileSystemDeviceConfiguration::macOSGuestAutomountTag() }
    } else {
        NSString::from_str(&device.tag)
    };
    // SAFETY: a class method checking a string.
    unsafe { VZVirtioFileSystemDeviceConfiguration::validateTag_error(&tag) }.map_err(|e| {
        VzError::Host(format!("--share tag `{}`: {}", device.tag, framework_error(&e)))
    })?;
    // SAFETY: a fresh allocation with a validated tag.
    let fs = unsafe {
        VZVirtioFileSystemDeviceConfiguration::initWithTag(
            VZVirtioFileSystemDeviceConfiguration::alloc(),
            &tag,
        )
    };
    let share: Retained<VZDirectoryShare> = match device.dirs.as_slice() {
        [one] => {
            // SAFETY: a fresh allocation with a valid shared directory.
            unsafe {
                VZSingleDirectoryShare::initWithDirectory(
                    VZSingleDirectoryShare::alloc(),
                    &shared_dir(one),
                )
            }
            .into_super()
        }
        many => {
            let names: Vec<Retained<NSString>> =
                many.iter().map(|d| NSString::from_str(&d.name)).collect();
            let dirs: Vec<Retained<VZSharedDirectory>> = many.iter().map(shared_dir).collect();
            let name_refs: Vec<&NSString> = names.iter().map(|n| &**n).collect();
            let dir_refs: Vec<&VZSharedDirectory> = dirs.iter().map(|d| &**d).collect();
            let map = NSDictionary::from_slices(&name_refs, &dir_refs);
            // SAFETY: a fresh allocation with a dictionary of names to directories.
            unsafe {
                VZMultipleDirectoryShare::initWithDirectories(
                    VZMultipleDirectoryShare::alloc(),
                    &map,
                )
            }
            .into_super()
        }
    };
    // SAFETY: a valid share for this device.
    unsafe { fs.setShare(Some(&share)) };
    Ok(fs.into_super())
}

fn shared_dir(dir: &SharedDir) -> Retained<VZSharedDirectory> {
    // SAFETY: a fresh allocation with a file URL of an existing directory.
    unsafe {
        VZSharedDirectory::initWithURL_readOnly(
            VZSharedDirectory::alloc(),
            &file_url(&dir.path),
            dir.read_only,
        )
    }
}

/// A virtio console port (`hvc0`) reading `input` and writing hvrun's stdout.
pub fn console(input: OwnedFd) -> Retained<VZSerialPortConfiguration> {
    // The handle owns the descriptor from here on (closeOnDealloc).
    let read = NSFileHandle::initWithFileDescriptor_closeOnDealloc(
        NSFileHandle::alloc(),
        input.into_raw_fd(),
        true,
    );
    let write = NSFileHandle::fileHandleWithStandardOutput();
    // SAFETY: a fresh allocation with two valid file handles.
    let attachment = unsafe {
        VZFileHandleSerialPortAttachment::initWithFileHandleForReading_fileHandleForWriting(
            VZFileHandleSerialPortAttachment::alloc(),
            Some(&read),
            Some(&write),
        )
    };
    // SAFETY: a plain constructor, then a valid attachment.
    let port = unsafe { VZVirtioConsoleDeviceSerialPortConfiguration::new() };
    // SAFETY: as above.
    unsafe { port.setAttachment(Some(&attachment)) };
    port.into_super()
}

/// A virtio entropy device (the guest's hwrng).
pub fn entropy() -> Retained<VZEntropyDeviceConfiguration> {
    // SAFETY: a plain constructor.
    unsafe { VZVirtioEntropyDeviceConfiguration::new() }.into_super()
}

/// A traditional virtio memory balloon (VIRTIO 1.2 §5.5), driven by `VzHandle::set_balloon_target`.
pub fn balloon() -> Retained<VZMemoryBalloonDeviceConfiguration> {
    // SAFETY: a plain constructor.
    unsafe { VZVirtioTraditionalMemoryBalloonDeviceConfiguration::new() }.into_super()
}

/// A keyboard: the Mac keyboard for macOS guests on macOS 14, USB otherwise.
pub fn keyboard(mac_guest: bool, host: MacosVersion) -> Retained<VZKeyboardConfiguration> {
    if mac_guest && Feature::MacKeyboard.available_on(host) {
        // SAFETY: a plain constructor (macOS 14, checked above).
        return unsafe { VZMacKeyboardConfiguration::new() }.into_super();
    }
    // SAFETY: a plain constructor.
    unsafe { VZUSBKeyboardConfiguration::new() }.into_super()
}

/// A pointer: the trackpad for macOS guests on macOS 13 (gestures), a USB absolute pointer
/// otherwise.
pub fn pointer(mac_guest: bool, host: MacosVersion) -> Retained<VZPointingDeviceConfiguration> {
    if mac_guest && Feature::MacTrackpad.available_on(host) {
        // SAFETY: a plain constructor (macOS 13, checked above).
        return unsafe { VZMacTrackpadConfiguration::new() }.into_super();
    }
    // SAFETY: a plain constructor.
    unsafe { VZUSBScreenCoordinatePointingDeviceConfiguration::new() }.into_super()
}
