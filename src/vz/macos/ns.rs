//! Bridges between Rust values and Foundation objects (paths → file URLs, `NSError` → plain
//! data), facts about the host (macOS version, cores), and the main thread's wait: hvrun's main
//! thread never blocks outright while the framework works, it runs its run loop, so work the
//! framework or AppKit queues on the main queue is served. Everything here runs on the main
//! thread unless it says otherwise.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use objc2::rc::Retained;
use objc2_core_foundation::{kCFRunLoopDefaultMode, CFRunLoop};
use objc2_foundation::{NSData, NSError, NSProcessInfo, NSString, NSURL};

use crate::vz::errors::FrameworkError;
use crate::vz::version::MacosVersion;

/// A file URL for `path` (VZ takes files by URL).
pub fn file_url(path: &Path) -> Retained<NSURL> {
    NSURL::fileURLWithPath(&NSString::from_str(&path.to_string_lossy()))
}

/// An `NSError` as plain data.
pub fn framework_error(error: &NSError) -> FrameworkError {
    FrameworkError {
        domain: error.domain().to_string(),
        code: error.code() as i64,
        description: error.localizedDescription().to_string(),
        reason: error.localizedFailureReason().map(|r| r.to_string()),
    }
}

/// The error a completion handler received, if any.
///
/// # Safety
/// `error` is null or points to an `NSError` that is alive for this call (what the framework
/// passes to completion handlers).
pub unsafe fn error_from_ptr(error: *mut NSError) -> Option<FrameworkError> {
    // SAFETY: the caller's contract: null or a live NSError.
    unsafe { error.as_ref() }.map(framework_error)
}

/// The bytes of an `NSData`.
pub fn data_bytes(data: &NSData) -> Vec<u8> {
    data.to_vec()
}

/// The host's macOS release.
pub fn host_macos() -> MacosVersion {
    let v = NSProcessInfo::processInfo().operatingSystemVersion();
    MacosVersion {
        major: u32::try_from(v.majorVersion).unwrap_or(0),
        minor: u32::try_from(v.minorVersion).unwrap_or(0),
        patch: u32::try_from(v.patchVersion).unwrap_or(0),
    }
}

/// The host's active cores.
pub fn host_cpus() -> u32 {
    u32::try_from(NSProcessInfo::processInfo().activeProcessorCount()).unwrap_or(u32::MAX)
}

/// This program's path, for the codesign command in error messages.
pub fn exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("hvrun"))
}

/// Runs the main thread's run loop for up to `timeout` (returning early once a source, such as
/// a block on the main queue, was handled).
pub fn pump_run_loop(timeout: Duration) {
    // SAFETY: reading an immutable framework constant.
    let mode = unsafe { kCFRunLoopDefaultMode };
    CFRunLoop::run_in_mode(mode, timeout.as_secs_f64(), true);
}

/// Waits for a message on `rx` while running the main run loop, for at most `limit`. `None`
/// when the time is up or the sender is gone.
pub fn wait_pumping<T>(rx: &Receiver<T>, limit: Duration) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        match rx.try_recv() {
            Ok(value) => return Some(value),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        pump_run_loop(left.min(Duration::from_millis(50)));
    }
}
