//! What a failed Hypervisor.framework call means for the user, and what to do about it.
//! Portable (no framework calls), so every message is unit-tested on any host.

use std::fmt;
use std::path::Path;

use hv_sys::*;

use crate::hv::HvError;

/// The entitlements file shipped at the top of the repository.
pub const ENTITLEMENTS_FILE: &str = "hvrun.entitlements";

/// A status other than `HV_SUCCESS`, with the framework's name for it and advice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HvfStatus(pub hv_return_t);

impl HvfStatus {
    /// The framework's name for the status.
    pub fn name(self) -> &'static str {
        match self.0 {
            HV_ERROR => "HV_ERROR",
            HV_BUSY => "HV_BUSY",
            HV_BAD_ARGUMENT => "HV_BAD_ARGUMENT",
            HV_ILLEGAL_GUEST_STATE => "HV_ILLEGAL_GUEST_STATE",
            HV_NO_RESOURCES => "HV_NO_RESOURCES",
            HV_NO_DEVICE => "HV_NO_DEVICE",
            HV_DENIED => "HV_DENIED",
            HV_EXISTS => "HV_EXISTS",
            HV_UNSUPPORTED => "HV_UNSUPPORTED",
            _ => "unknown status",
        }
    }

    /// A status that says this host or this binary cannot run VMs at all (as opposed to a
    /// failure of one VM): hvrun exits with the "unsupported host" code for these.
    pub fn is_host_problem(self) -> bool {
        matches!(self.0, HV_DENIED | HV_UNSUPPORTED)
    }
}

impl fmt::Display for HvfStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let advice = match self.0 {
            HV_DENIED => {
                "the system refused: the hvrun binary lacks the com.apple.security.hypervisor \
                 entitlement (see the signing command below)"
            }
            HV_UNSUPPORTED => {
                "the hypervisor does not support this here: hvrun needs macOS 13 or later running \
                 directly on Apple Silicon, not inside a macOS virtual machine (hosted CI runners \
                 are virtual machines)"
            }
            HV_BUSY => "the resource is busy (one VM per process: is another VM still alive?)",
            HV_NO_RESOURCES => "the host is out of resources (memory, or vCPUs/VMs)",
            HV_NO_DEVICE => "no VM or vCPU is available",
            HV_BAD_ARGUMENT => "an argument was refused (an hvrun bug: please report it)",
            HV_ILLEGAL_GUEST_STATE => "the guest's register state is illegal",
            HV_EXISTS => "it already exists",
            _ => "the operation failed",
        };
        write!(f, "{} ({:#010x}): {advice}", self.name(), self.0 as u32)
    }
}

impl std::error::Error for HvfStatus {}

/// The command that gives `binary` the hypervisor entitlement (ad-hoc signature, no Apple
/// developer account needed).
pub fn codesign_command(binary: &Path) -> String {
    format!("codesign --sign - --entitlements {ENTITLEMENTS_FILE} --force {}", binary.display())
}

/// Turns `ret` into `Ok` or an error that says what hvrun was doing and what the status means.
/// HV_DENIED also names the signing command for `binary` (the running executable).
pub fn check_with(ret: hv_return_t, context: &str, binary: &Path) -> Result<(), HvError> {
    if ret == HV_SUCCESS {
        return Ok(());
    }
    let status = HvfStatus(ret);
    let context = if ret == HV_DENIED {
        format!("{context}; sign hvrun with: {}", codesign_command(binary))
    } else {
        context.to_string()
    };
    Err(HvError::new(context, std::io::Error::other(status)))
}

/// [`check_with`] for the running executable.
pub fn check(ret: hv_return_t, context: &str) -> Result<(), HvError> {
    let exe = std::env::current_exe().unwrap_or_else(|_| "hvrun".into());
    check_with(ret, context, &exe)
}

/// The status inside an error made by [`check`], if any.
pub fn status_of(error: &HvError) -> Option<HvfStatus> {
    error.source.get_ref()?.downcast_ref::<HvfStatus>().copied()
}

/// What to tell the user when `sysctl kern.hv_support` is not 1 (`None`: the sysctl does not
/// exist, as on Intel Macs before 10.10 or non-Macs).
pub fn no_hv_support_message(hv_support: Option<i32>) -> Option<String> {
    match hv_support {
        Some(1) => None,
        Some(v) => Some(format!(
            "this Mac does not offer Hypervisor.framework (sysctl kern.hv_support = {v}): hvrun \
             needs Apple Silicon and macOS 13 or later, not inside a virtual machine without \
             nested virtualisation"
        )),
        None => Some(
            "this system has no Hypervisor.framework (sysctl kern.hv_support is missing)".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_names_the_signing_command() {
        let err = check_with(HV_DENIED, "hv_vm_create", Path::new("/tmp/hvrun")).unwrap_err();
        let text = format!("{err}");
        assert!(text.starts_with("hv_vm_create; sign hvrun with: "), "{text}");
        assert!(
            text.contains("codesign --sign - --entitlements hvrun.entitlements --force /tmp/hvrun")
        );
        assert!(text.contains("HV_DENIED (0xfae94007)"), "{text}");
        assert!(text.contains("com.apple.security.hypervisor"));
        assert_eq!(status_of(&err), Some(HvfStatus(HV_DENIED)));
        assert!(HvfStatus(HV_DENIED).is_host_problem());
    }

    #[test]
    fn unsupported_explains_virtual_machines() {
        let err = check_with(HV_UNSUPPORTED, "hv_vm_create", Path::new("hvrun")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("HV_UNSUPPORTED"), "{text}");
        assert!(text.contains("not inside a macOS virtual machine"), "{text}");
        assert!(!text.contains("codesign"));
        assert!(HvfStatus(HV_UNSUPPORTED).is_host_problem());
    }

    #[test]
    fn every_status_has_a_name_and_success_is_ok() {
        assert!(check_with(HV_SUCCESS, "x", Path::new("hvrun")).is_ok());
        for (code, name) in [
            (HV_ERROR, "HV_ERROR"),
            (HV_BUSY, "HV_BUSY"),
            (HV_BAD_ARGUMENT, "HV_BAD_ARGUMENT"),
            (HV_ILLEGAL_GUEST_STATE, "HV_ILLEGAL_GUEST_STATE"),
            (HV_NO_RESOURCES, "HV_NO_RESOURCES"),
            (HV_NO_DEVICE, "HV_NO_DEVICE"),
            (HV_EXISTS, "HV_EXISTS"),
        ] {
            assert_eq!(HvfStatus(code).name(), name);
            assert!(!HvfStatus(code).is_host_problem());
            let err = check_with(code, "ctx", Path::new("hvrun")).unwrap_err();
            assert!(err.to_string().starts_with(&format!("ctx: {name} (0xfae9400")), "{err}");
        }
        assert!(HvfStatus(0x1234).to_string().starts_with("unknown status (0x00001234)"));
    }

    #[test]
    fn missing_hv_support_is_explained() {
        assert_eq!(no_hv_support_message(Some(1)), None);
        let text = no_hv_support_message(Some(0)).unwrap();
        assert!(text.contains("kern.hv_support = 0") && text.contains("Apple Silicon"), "{text}");
        assert!(no_hv_support_message(None).unwrap().contains("kern.hv_support is missing"));
    }
}
