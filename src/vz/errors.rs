//! What can go wrong on the vz engine, said so the user knows what to do, and the exit code each
//! failure gets. Framework errors arrive as [`FrameworkError`] (an `NSError` as plain data), so
//! recognising them — the missing entitlement, the two-macOS-guests limit, an IPSW for another
//! Mac — is portable code with unit tests.

use std::fmt;
use std::path::PathBuf;

use crate::exit_code;
use crate::vz::bundle::BundleError;
use crate::vz::plan::VzConfigError;
use crate::vz::version::TooOld;

/// The entitlement Virtualization.framework requires of every process that creates a VM.
pub const ENTITLEMENT: &str = "com.apple.security.virtualization";
/// `VZErrorDomain`.
pub const VZ_ERROR_DOMAIN: &str = "VZErrorDomain";

/// `VZErrorCode` values hvrun tells apart (`VZError.h`).
pub mod vz_code {
    pub const INVALID_CONFIGURATION: i64 = 2;
    pub const LIMIT_EXCEEDED: i64 = 6;
    pub const OPERATION_CANCELLED: i64 = 9;
    pub const NOT_SUPPORTED: i64 = 10;
    pub const RESTORE_IMAGE_CATALOG_LOAD_FAILED: i64 = 10001;
    pub const NO_SUPPORTED_RESTORE_IMAGES: i64 = 10003;
    pub const RESTORE_IMAGE_LOAD_FAILED: i64 = 10004;
    pub const INVALID_RESTORE_IMAGE: i64 = 10005;
    pub const INSTALLATION_REQUIRES_UPDATE: i64 = 10006;
}

/// An `NSError` as plain data: enough to classify it and to print it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameworkError {
    pub domain: String,
    pub code: i64,
    /// `localizedDescription`.
    pub description: String,
    /// `localizedFailureReason`, when the framework gives one.
    pub reason: Option<String>,
}

impl FrameworkError {
    fn is_vz(&self, code: i64) -> bool {
        self.domain == VZ_ERROR_DOMAIN && self.code == code
    }

    fn mentions(&self, needle: &str) -> bool {
        self.description.contains(needle)
            || self.reason.as_deref().is_some_and(|r| r.contains(needle))
    }
}

impl fmt::Display for FrameworkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.description)?;
        if let Some(reason) = self.reason.as_deref().filter(|r| !self.description.contains(r)) {
            write!(f, " {reason}")?;
        }
        write!(f, " ({} {})", self.domain, self.code)
    }
}

/// Everything the vz engine reports to the user.
#[derive(Debug, thiserror::Error)]
pub enum VzError {
    #[error(transparent)]
    Config(#[from] VzConfigError),
    #[error(
        "Virtualization.framework refused to create a VM: this hvrun is not signed with the \
         {ENTITLEMENT} entitlement. Sign it with hvrun.entitlements (from hvrun's repository): \
         codesign --sign - --entitlements hvrun.entitlements --force {}", .exe.display()
    )]
    MissingEntitlement { exe: PathBuf },
    #[error(
        "this Mac cannot run Virtualization.framework VMs (VZVirtualMachine.isSupported is \
         false): it needs an Apple Silicon Mac whose macOS runs on the hardware, not in a VM"
    )]
    HostUnsupported,
    #[error(transparent)]
    TooOld(#[from] TooOld),
    #[error(
        "restore image {image}: none of its configurations is supported on this Mac; use an \
         IPSW made for Apple Silicon Macs, of a macOS this Mac can virtualize (or --ipsw latest)"
    )]
    IpswNotForThisMac { image: String },
    #[error(
        "restore image {image} (macOS {guest}): its hardware model is newer than this Mac's \
         macOS {host} supports; update this Mac's macOS, or install an older macOS (--ipsw PATH)"
    )]
    IpswNeedsNewerHost { image: String, guest: String, host: String },
    #[error(
        "restore image {image}: it needs newer system software than this Mac has; install \
         the pending macOS updates on this Mac (Software Update), then run the install again"
    )]
    InstallRequiresUpdate { image: String },
    #[error(
        "restore image {image}: not a usable macOS restore image ({detail}); download it again"
    )]
    BadRestoreImage { image: String, detail: FrameworkError },
    #[error(
        "bundle {}: the macOS install in it did not finish ({reason}); install again with \
         `hvrun macos install {} --ipsw PATH|latest`", .path.display(), .path.display()
    )]
    BundleIncomplete { path: PathBuf, reason: String },
    #[error(
        "bundle {}: its hardware model is not supported by this Mac (the bundle was made on \
         macOS {created_on}); run it on a Mac with that macOS or later, or install a new \
         bundle here", .path.display()
    )]
    BundleFromAnotherMac { path: PathBuf, created_on: String },
    #[error(
        "a Mac runs at most two macOS virtual machines at once (a limit of Virtualization.framework \
         and of the macOS license); stop one of the others first"
    )]
    TooManyMacosGuests,
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{what} cancelled")]
    Cancelled { what: String },
    #[error("{context}: {error}")]
    Framework { context: String, error: FrameworkError },
    #[error("{0}")]
    Host(String),
    #[error(
        "{0}: macOS guests run on Virtualization.framework, which needs an Apple Silicon Mac; \
         this host is not one"
    )]
    NotAMac(&'static str),
}

impl VzError {
    /// hvrun's exit code for this failure: 2 for anything the user or the host must change,
    /// 130 for Ctrl-C, 1 for a failure while running.
    pub fn exit_code(&self) -> i32 {
        match self {
            VzError::Framework { .. } | VzError::Host(_) => exit_code::FAILED,
            VzError::Cancelled { .. } => exit_code::QUIT,
            _ => exit_code::USAGE,
        }
    }

    /// Turns a framework error met while doing `context` into the most helpful [`VzError`].
    /// `exe` is this program's path, for the codesign command.
    pub fn from_framework(context: &str, error: FrameworkError, exe: PathBuf) -> VzError {
        if error.mentions(ENTITLEMENT) {
            return VzError::MissingEntitlement { exe };
        }
        if error.is_vz(vz_code::LIMIT_EXCEEDED) {
            return VzError::TooManyMacosGuests;
        }
        if error.is_vz(vz_code::OPERATION_CANCELLED) {
            return VzError::Cancelled { what: context.to_string() };
        }
        VzError::Framework { context: context.to_string(), error }
    }

    /// Like [`VzError::from_framework`], for errors of loading, fetching or installing the
    /// restore image `image`.
    pub fn from_restore_image(image: &str, error: FrameworkError, exe: PathBuf) -> VzError {
        let image = image.to_string();
        if error.domain == VZ_ERROR_DOMAIN {
            match error.code {
                vz_code::INSTALLATION_REQUIRES_UPDATE => {
                    return VzError::InstallRequiresUpdate { image }
                }
                vz_code::NO_SUPPORTED_RESTORE_IMAGES => {
                    return VzError::IpswNotForThisMac { image }
                }
                vz_code::RESTORE_IMAGE_LOAD_FAILED | vz_code::INVALID_RESTORE_IMAGE => {
                    return VzError::BadRestoreImage { image, detail: error }
                }
                _ => {}
            }
        }
        VzError::from_framework(&format!("restore image {image}"), error, exe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vz(code: i64, description: &str, reason: Option<&str>) -> FrameworkError {
        FrameworkError {
            domain: VZ_ERROR_DOMAIN.into(),
            code,
            description: description.into(),
            reason: reason.map(Into::into),
        }
    }

    fn exe() -> PathBuf {
        PathBuf::from("/opt/hvrun/bin/hvrun")
    }

    #[test]
    fn missing_entitlement_names_the_fix() {
        // The wording VZ uses (quoted in public bug reports); only the entitlement name matters.
        let e = vz(
            vz_code::INVALID_CONFIGURATION,
            "Invalid virtual machine configuration.",
            Some("The process doesn’t have the “com.apple.security.virtualization” entitlement."),
        );
        let err = VzError::from_framework("starting the VM", e, exe());
        assert!(matches!(err, VzError::MissingEntitlement { .. }));
        let text = err.to_string();
        assert!(text.contains(
            "codesign --sign - --entitlements hvrun.entitlements --force /opt/hvrun/bin/hvrun"
        ));
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn framework_codes_become_user_errors() {
        let limit = VzError::from_framework("start", vz(6, "limit", None), exe());
        assert!(matches!(limit, VzError::TooManyMacosGuests));
        assert_eq!(limit.exit_code(), 2);
        let cancel = VzError::from_framework("macOS install", vz(9, "cancelled", None), exe());
        assert_eq!(cancel.to_string(), "macOS install cancelled");
        assert_eq!(cancel.exit_code(), 130);
        let other =
            VzError::from_framework("start", vz(1, "Internal Virtualization error.", None), exe());
        assert_eq!(other.exit_code(), 1);
        assert_eq!(other.to_string(), "start: Internal Virtualization error. (VZErrorDomain 1)");
        // Another domain with the same code is not VZ's limit.
        let posix = FrameworkError { domain: "NSPOSIXErrorDomain".into(), ..vz(6, "ENXIO", None) };
        assert!(matches!(VzError::from_framework("x", posix, exe()), VzError::Framework { .. }));
    }

    #[test]
    fn restore_image_errors() {
        let img = "UniversalMac_14.4_Restore.ipsw";
        let e = VzError::from_restore_image(img, vz(10006, "update", None), exe());
        assert!(e.to_string().contains("install the pending macOS updates"), "{e}");
        let e = VzError::from_restore_image(img, vz(10003, "none", None), exe());
        assert!(matches!(e, VzError::IpswNotForThisMac { .. }));
        let e = VzError::from_restore_image(img, vz(10005, "Invalid restore image.", None), exe());
        assert_eq!(
            e.to_string(),
            "restore image UniversalMac_14.4_Restore.ipsw: not a usable macOS restore image \
             (Invalid restore image. (VZErrorDomain 10005)); download it again"
        );
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn reasons_are_printed_once() {
        let e =
            vz(2, "Invalid virtual machine configuration.", Some("The memory size is too small."));
        assert_eq!(
            e.to_string(),
            "Invalid virtual machine configuration. The memory size is too small. (VZErrorDomain 2)"
        );
        let same = vz(2, "A. B.", Some("B."));
        assert_eq!(same.to_string(), "A. B. (VZErrorDomain 2)");
    }
}
