//! A Linux guest's configuration from a [`VzPlan`]: VZ's Linux boot loader on the staged
//! kernel and initramfs, the generic platform, and the plan's devices; with `--gui` a virtio-gpu
//! scanout, a USB keyboard and pointer. Built on the main thread.

use std::os::fd::OwnedFd;

use objc2::rc::Retained;
use objc2::AnyThread;
use objc2_foundation::{NSArray, NSString};
use objc2_virtualization::*;

use super::devices;
use super::mac_config::validate;
use super::ns::file_url;
use crate::vz::errors::VzError;
use crate::vz::plan::{VzConfigError, VzPlan};
use crate::vz::staging::StagedBoot;
use crate::vz::version::MacosVersion;

/// The configuration, and the MAC address of each network device (eth0, eth1, ...).
pub fn configuration(
    plan: &VzPlan,
    staged: &StagedBoot,
    console_input: OwnedFd,
    host: MacosVersion,
) -> Result<(Retained<VZVirtualMachineConfiguration>, Vec<String>), VzError> {
    // SAFETY: constructors and setters of configuration objects with valid values; the nested
    // virtualization calls exist on macOS 15 (Feature::Nested, checked by the caller).
    let config = unsafe {
        let loader = VZLinuxBootLoader::initWithKernelURL(
            VZLinuxBootLoader::alloc(),
            &file_url(&staged.kernel),
        );
        loader.setCommandLine(&NSString::from_str(&plan.cmdline));
        if let Some(initrd) = &staged.initrd {
            loader.setInitialRamdiskURL(Some(&file_url(initrd)));
        }
        let platform = VZGenericPlatformConfiguration::new();
        if plan.nested {
            if !VZGenericPlatformConfiguration::isNestedVirtualizationSupported() {
                return Err(VzConfigError::NestedUnsupported.into());
            }
            platform.setNestedVirtualizationEnabled(true);
        }
        let config = VZVirtualMachineConfiguration::new();
        config.setBootLoader(Some(&loader));
        config.setPlatform(&platform);
        config.setCPUCount(plan.cpus as usize);
        config.setMemorySize(plan.mem_bytes);
        config.setEntropyDevices(&NSArray::from_retained_slice(&[devices::entropy()]));
        config.setMemoryBalloonDevices(&NSArray::from_retained_slice(&[devices::balloon()]));
        config.setSerialPorts(&NSArray::from_retained_slice(&[devices::console(console_input)]));
        if let Some(scanout) = plan.gui {
            let scanout =
                VZVirtioGraphicsScanoutConfiguration::initWithWidthInPixels_heightInPixels(
                    VZVirtioGraphicsScanoutConfiguration::alloc(),
                    scanout.width as isize,
                    scanout.height as isize,
                );
            let gpu = VZVirtioGraphicsDeviceConfiguration::new();
            gpu.setScanouts(&NSArray::from_retained_slice(&[scanout]));
            config.setGraphicsDevices(&NSArray::from_retained_slice(&[gpu.into_super()]));
            config.setKeyboards(&NSArray::from_retained_slice(&[devices::keyboard(false, host)]));
            config.setPointingDevices(&NSArray::from_retained_slice(&[devices::pointer(
                false, host,
            )]));
        }
        config
    };
    let disks = plan.disks.iter().map(|d| devices::disk(d, host)).collect::<Result<Vec<_>, _>>()?;
    let nets = plan.nets.iter().map(devices::network).collect::<Result<Vec<_>, _>>()?;
    let macs = nets.iter().map(|n| devices::mac_of(n)).collect();
    let shares =
        plan.shares.iter().map(|s| devices::share(s, false)).collect::<Result<Vec<_>, _>>()?;
    // SAFETY: setters of the configuration with valid device arrays.
    unsafe {
        config.setStorageDevices(&NSArray::from_retained_slice(&disks));
        config.setNetworkDevices(&NSArray::from_retained_slice(&nets));
        config.setDirectorySharingDevices(&NSArray::from_retained_slice(&shares));
    }
    validate(&config)?;
    Ok((config, macs))
}
