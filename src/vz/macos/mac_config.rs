//! A macOS guest's configuration: the Mac platform (hardware model, machine identifier,
//! auxiliary storage) from the bundle, the Mac graphics device, keyboard and pointer, the
//! bundle's disk, NAT, shares and, headless, a console. Built on the main thread.

use std::os::fd::OwnedFd;

use objc2::rc::Retained;
use objc2::AnyThread;
use objc2_foundation::{NSArray, NSData};
use objc2_virtualization::*;

use super::devices;
use super::ns::{exe, file_url, framework_error};
use crate::vz::bundle::{Bundle, AUX_STORAGE, DISK, HARDWARE_MODEL, MACHINE_ID};
use crate::vz::errors::VzError;
use crate::vz::macos_plan::MacDisplay;
use crate::vz::net::VzNet;
use crate::vz::plan::VzDisk;
use crate::vz::share::ShareDevice;
use crate::vz::version::MacosVersion;
use ::devices::virtio::block::SyncMode;

/// The guest's identity, read back from its bundle.
pub struct MacIdentity {
    pub hardware_model: Retained<VZMacHardwareModel>,
    pub machine_id: Retained<VZMacMachineIdentifier>,
    pub aux: Retained<VZMacAuxiliaryStorage>,
}

impl MacIdentity {
    /// Reads the identity the install stored; a hardware model this Mac cannot run means the
    /// bundle came from a Mac with a newer macOS.
    pub fn load(bundle: &Bundle, host: MacosVersion) -> Result<MacIdentity, VzError> {
        let damaged = |what: &str| VzError::BundleIncomplete {
            path: bundle.root().to_owned(),
            reason: format!("its {what} is damaged"),
        };
        let model = NSData::with_bytes(&bundle.read_blob(HARDWARE_MODEL)?);
        // SAFETY: a fresh allocation; nil for bytes that are not a hardware model.
        let hardware_model = unsafe {
            VZMacHardwareModel::initWithDataRepresentation(VZMacHardwareModel::alloc(), &model)
        }
        .ok_or_else(|| damaged(HARDWARE_MODEL))?;
        // SAFETY: a property of a valid hardware model.
        if !unsafe { hardware_model.isSupported() } {
            return Err(VzError::BundleFromAnotherMac {
                path: bundle.root().to_owned(),
                created_on: bundle.manifest().host_macos.clone(),
            });
        }
        let id = NSData::with_bytes(&bundle.read_blob(MACHINE_ID)?);
        // SAFETY: as for the hardware model.
        let machine_id = unsafe {
            VZMacMachineIdentifier::initWithDataRepresentation(VZMacMachineIdentifier::alloc(), &id)
        }
        .ok_or_else(|| damaged(MACHINE_ID))?;
        if !bundle.path(AUX_STORAGE).is_file() {
            return Err(damaged(AUX_STORAGE));
        }
        let url = file_url(&bundle.path(AUX_STORAGE));
        // `initWithURL:` is macOS 13's name for macOS 12's `initWithContentsOfURL:`, which 13
        // deprecated; a selector the host lacks would abort, so the release decides.
        let aux = if host >= MacosVersion::new(13, 0) {
            // SAFETY: a fresh allocation with the URL of an existing auxiliary storage file.
            unsafe { VZMacAuxiliaryStorage::initWithURL(VZMacAuxiliaryStorage::alloc(), &url) }
        } else {
            #[allow(deprecated)] // the only initialiser macOS 12 has
            // SAFETY: as above.
            unsafe {
                VZMacAuxiliaryStorage::initWithContentsOfURL(VZMacAuxiliaryStorage::alloc(), &url)
            }
        };
        Ok(MacIdentity { hardware_model, machine_id, aux })
    }
}

/// What a macOS guest gets besides its identity.
pub struct MacMachine<'a> {
    pub cpus: u32,
    pub mem_bytes: u64,
    pub display: MacDisplay,
    pub shares: &'a [ShareDevice],
    /// Headless runs put a virtio console on hvrun's terminal.
    pub console: Option<OwnedFd>,
}

/// The configuration for the bundle's guest, validated.
pub fn configuration(
    bundle: &Bundle,
    id: &MacIdentity,
    machine: MacMachine,
    host: MacosVersion,
) -> Result<Retained<VZVirtualMachineConfiguration>, VzError> {
    // SAFETY: plain constructors and property setters of configuration objects, on this thread
    // only, with valid values.
    let config = unsafe {
        let platform = VZMacPlatformConfiguration::new();
        platform.setHardwareModel(&id.hardware_model);
        platform.setMachineIdentifier(&id.machine_id);
        platform.setAuxiliaryStorage(Some(&id.aux));
        let config = VZVirtualMachineConfiguration::new();
        config.setPlatform(&platform);
        config.setBootLoader(Some(&VZMacOSBootLoader::new()));
        config.setCPUCount(machine.cpus as usize);
        config.setMemorySize(machine.mem_bytes);
        let display =
            VZMacGraphicsDisplayConfiguration::initWithWidthInPixels_heightInPixels_pixelsPerInch(
                VZMacGraphicsDisplayConfiguration::alloc(),
                machine.display.width as isize,
                machine.display.height as isize,
                machine.display.pixels_per_inch as isize,
            );
        let graphics = VZMacGraphicsDeviceConfiguration::new();
        graphics.setDisplays(&NSArray::from_retained_slice(&[display]));
        config.setGraphicsDevices(&NSArray::from_retained_slice(&[graphics.into_super()]));
        config.setKeyboards(&NSArray::from_retained_slice(&[devices::keyboard(true, host)]));
        config.setPointingDevices(&NSArray::from_retained_slice(&[devices::pointer(true, host)]));
        config
    };
    let disk = VzDisk {
        path: bundle.path(DISK),
        read_only: false,
        sync: SyncMode::Full,
        serial: "hvrun-macos".into(),
    };
    let disk = devices::disk(&disk, host)?;
    let nat = devices::network(&VzNet::Nat { mac: None })?;
    log::info!("the guest's network: macOS's NAT, MAC {}", devices::mac_of(&nat));
    let shares =
        machine.shares.iter().map(|s| devices::share(s, true)).collect::<Result<Vec<_>, _>>()?;
    // SAFETY: setters of the configuration with valid device arrays.
    unsafe {
        config.setStorageDevices(&NSArray::from_retained_slice(&[disk]));
        config.setNetworkDevices(&NSArray::from_retained_slice(&[nat]));
        config.setDirectorySharingDevices(&NSArray::from_retained_slice(&shares));
        if let Some(input) = machine.console {
            config.setSerialPorts(&NSArray::from_retained_slice(&[devices::console(input)]));
        }
    }
    validate(&config)?;
    Ok(config)
}

/// Asks the framework whether `config` can run; its answer (the missing entitlement among
/// others) becomes a [`VzError`].
pub fn validate(config: &VZVirtualMachineConfiguration) -> Result<(), VzError> {
    // SAFETY: validating a fully built configuration.
    unsafe { config.validateWithError() }
        .map_err(|e| VzError::from_framework("the VM configuration", framework_error(&e), exe()))
}
