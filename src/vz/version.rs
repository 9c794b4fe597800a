//! Which macOS release each Virtualization.framework feature hvrun uses first appeared in, and
//! the check that turns "this Mac is too old" into one line instead of an Objective-C exception
//! (calling a selector the host's framework lacks aborts the process).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A macOS release: `13.2.1` is `{ major: 13, minor: 2, patch: 1 }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MacosVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl MacosVersion {
    /// `major.minor` (patch 0).
    pub const fn new(major: u32, minor: u32) -> Self {
        MacosVersion { major, minor, patch: 0 }
    }
}

impl fmt::Display for MacosVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.patch != 0 {
            write!(f, ".{}", self.patch)?;
        }
        Ok(())
    }
}

impl FromStr for MacosVersion {
    type Err = String;

    /// Parses `14`, `14.4` or `14.4.1` (the forms `sw_vers` and restore images use).
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a macOS version (expected e.g. 14.4 or 14.4.1)");
        let mut parts = text.trim().split('.');
        let mut next = |required: bool| -> Result<u32, String> {
            match parts.next() {
                Some(p) => p.parse().map_err(|_| bad()),
                None if required => Err(bad()),
                None => Ok(0),
            }
        };
        let version = MacosVersion { major: next(true)?, minor: next(false)?, patch: next(false)? };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(version)
    }
}

/// A Virtualization.framework capability hvrun may need, with the release that introduced it
/// (from the `API_AVAILABLE` annotations of the framework's headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Feature {
    /// The engine itself: VZ's force stop (`stopWithCompletionHandler:`), disk synchronisation
    /// modes, generic platform, virtio-fs and the macOS guest classes all arrived in 12.0.
    Engine,
    /// `blockDeviceIdentifier` on virtio-blk (the disk's serial, `serial=`).
    DiskSerial,
    /// `VZVirtioGraphicsDeviceConfiguration` (`--gui` for Linux guests).
    VirtioGpu,
    /// `VZMacTrackpadConfiguration` (macOS guests get a USB pointer before it).
    MacTrackpad,
    /// `VZMacKeyboardConfiguration` (macOS guests get a USB keyboard before it).
    MacKeyboard,
    /// `VZMacOSVirtualMachineStartOptions.startUpFromMacOSRecovery` (`--recovery`).
    Recovery,
    /// `VZVirtioFileSystemDeviceConfiguration.macOSGuestAutomountTag` (`--share DIR:automount`).
    Automount,
    /// `VZVirtualMachineView.automaticallyReconfiguresDisplay` (the guest display follows the
    /// window's size).
    DisplayFollowsWindow,
    /// `VZGenericPlatformConfiguration.nestedVirtualizationEnabled` (`--nested`).
    Nested,
}

impl Feature {
    /// The first macOS release with this feature.
    pub fn since(self) -> MacosVersion {
        match self {
            Feature::Engine => MacosVersion::new(12, 0),
            Feature::DiskSerial => MacosVersion::new(12, 3),
            Feature::VirtioGpu | Feature::MacTrackpad | Feature::Recovery | Feature::Automount => {
                MacosVersion::new(13, 0)
            }
            Feature::MacKeyboard | Feature::DisplayFollowsWindow => MacosVersion::new(14, 0),
            Feature::Nested => MacosVersion::new(15, 0),
        }
    }

    /// What the user asked for, in their words.
    pub fn describe(self) -> &'static str {
        match self {
            Feature::Engine => "the vz engine (Virtualization.framework)",
            Feature::DiskSerial => "a disk serial (serial=) on the vz engine",
            Feature::VirtioGpu => "--gui (a virtio-gpu display for Linux guests)",
            Feature::MacTrackpad => "a trackpad for macOS guests",
            Feature::MacKeyboard => "a Mac keyboard for macOS guests",
            Feature::Recovery => "--recovery (booting macOS Recovery)",
            Feature::Automount => "--share DIR:automount (the guest mounts it by itself)",
            Feature::DisplayFollowsWindow => "a guest display that follows the window size",
            Feature::Nested => "--nested on the vz engine",
        }
    }

    /// Whether `host` has this feature.
    pub fn available_on(self, host: MacosVersion) -> bool {
        host >= self.since()
    }
}

/// A feature the user asked for that this Mac's macOS does not have.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} needs macOS {} or later; this Mac runs macOS {host}: update macOS, or leave it out", .feature.describe(), .feature.since())]
pub struct TooOld {
    pub feature: Feature,
    pub host: MacosVersion,
}

/// Checks every feature in `needed` against `host`; the first missing one is the error.
pub fn require(host: MacosVersion, needed: &[Feature]) -> Result<(), TooOld> {
    match needed.iter().find(|f| !f.available_on(host)) {
        Some(&feature) => Err(TooOld { feature, host }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_print_and_order() {
        let v: MacosVersion = "14.4.1".parse().unwrap();
        assert_eq!(v, MacosVersion { major: 14, minor: 4, patch: 1 });
        assert_eq!(v.to_string(), "14.4.1");
        assert_eq!("13".parse::<MacosVersion>().unwrap().to_string(), "13.0");
        assert!("13.x".parse::<MacosVersion>().is_err());
        assert!("".parse::<MacosVersion>().is_err());
        assert!("1.2.3.4".parse::<MacosVersion>().is_err());
        assert!(MacosVersion::new(12, 3) > MacosVersion::new(12, 2));
        assert!(MacosVersion::new(13, 0) > "12.7.6".parse().unwrap());
    }

    #[test]
    fn features_need_their_release() {
        let ventura = MacosVersion::new(13, 6);
        assert!(Feature::VirtioGpu.available_on(ventura));
        assert!(Feature::Recovery.available_on(MacosVersion::new(13, 0)));
        assert!(!Feature::MacKeyboard.available_on(ventura));
        assert!(!Feature::DiskSerial.available_on(MacosVersion::new(12, 2)));
        assert!(require(ventura, &[Feature::Engine, Feature::VirtioGpu]).is_ok());
        let e = require(ventura, &[Feature::Engine, Feature::Nested]).unwrap_err();
        assert_eq!(e.feature, Feature::Nested);
        assert_eq!(
            e.to_string(),
            "--nested on the vz engine needs macOS 15.0 or later; this Mac runs macOS 13.6: \
             update macOS, or leave it out"
        );
    }
}
