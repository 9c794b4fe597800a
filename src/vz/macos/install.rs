//! `hvrun macos install`: get the restore image (a file, or Apple's latest for this Mac,
//! downloaded into ~/Library/Caches/hvrun), pick its most featureful configuration this Mac
//! supports, create the bundle (disk, auxiliary storage, hardware model, machine identifier,
//! manifest), and run `VZMacOSInstaller` with a progress bar. Ctrl-C cancels cleanly: the
//! install stops, the bundle is marked incomplete, hvrun exits with 130.
//! All of it runs on the main thread, except the VM's work on its queue and the completion
//! handlers (on the framework's queues), which only send their result back over a channel.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use block2::RcBlock;
use objc2::rc::Retained;
use objc2::runtime::AnyObject;
use objc2::{AnyThread, Message};
use objc2_foundation::{NSError, NSHTTPURLResponse, NSURLResponse, NSURLSession, NSURL};
use objc2_virtualization::{
    VZMacAuxiliaryStorage, VZMacAuxiliaryStorageInitializationOptions, VZMacMachineIdentifier,
    VZMacOSRestoreImage,
};

use super::mac_config::{self, MacIdentity, MacMachine};
use super::machine::VzHandle;
use super::ns::{self, data_bytes, error_from_ptr, exe, file_url, framework_error, wait_pumping};
use super::{limits, preflight};
use crate::control::VmControl;
use crate::vz::bundle::{
    Bundle, BundleState, Manifest, RestoreImageInfo, AUX_STORAGE, FORMAT, HARDWARE_MODEL,
    MACHINE_ID,
};
use crate::vz::errors::{FrameworkError, VzError};
use crate::vz::interrupt::SigintCounter;
use crate::vz::macos_plan::{
    choose_resources, ipsw_cache_path, InstallPlan, IpswSource, Requirements, MAC_DISPLAY,
};
use crate::vz::progress::{Progress, Unit};
use crate::vz::version::Feature;

/// How often the progress bar is refreshed.
const TICK: Duration = Duration::from_millis(200);
/// How long loading a restore image's metadata (or Apple's catalog) may take.
const LOAD_TIME: Duration = Duration::from_secs(300);

/// A loaded restore image, handed from the framework's completion queue to the main thread.
struct Loaded(Retained<VZMacOSRestoreImage>);
// SAFETY: a VZMacOSRestoreImage is immutable once loaded; the main thread only reads it.
unsafe impl Send for Loaded {}

/// Installs macOS into a new bundle, as planned.
pub fn install(plan: &InstallPlan) -> Result<(), VzError> {
    let host = preflight(&[Feature::Engine])?;
    let sigint =
        SigintCounter::install().map_err(|e| VzError::Host(format!("cannot catch Ctrl-C: {e}")))?;
    let (image_path, source) = match &plan.ipsw {
        IpswSource::File(path) => (path.clone(), path.display().to_string()),
        IpswSource::Latest => {
            let latest = fetch(RestoreImageSource::Latest, &sigint)?;
            // SAFETY: a property of a loaded restore image.
            let url = unsafe { latest.0.URL() };
            let text = url.absoluteString().map(|s| s.to_string()).unwrap_or_default();
            (download(&url, &text, &sigint)?, text)
        }
    };
    let image = fetch(RestoreImageSource::File(&image_path), &sigint)?;
    let name = image_path.file_name().map_or(source.clone(), |n| n.to_string_lossy().into_owned());
    // SAFETY: properties of a loaded restore image.
    let (build, guest_macos) = unsafe {
        let v = image.0.operatingSystemVersion();
        (
            image.0.buildVersion().to_string(),
            format!("{}.{}.{}", v.majorVersion, v.minorVersion, v.patchVersion),
        )
    };
    // SAFETY: as above; nil when no configuration of the image is supported here.
    let requirements = unsafe { image.0.mostFeaturefulSupportedConfiguration() }
        .ok_or_else(|| VzError::IpswNotForThisMac { image: name.clone() })?;
    // SAFETY: properties of the requirements object.
    let (hardware_model, needs) = unsafe {
        let needs = Requirements {
            min_cpus: u32::try_from(requirements.minimumSupportedCPUCount()).unwrap_or(u32::MAX),
            min_mem: requirements.minimumSupportedMemorySize(),
        };
        (requirements.hardwareModel(), needs)
    };
    // SAFETY: a property of a valid hardware model.
    if !unsafe { hardware_model.isSupported() } {
        return Err(VzError::IpswNeedsNewerHost {
            image: name,
            guest: guest_macos,
            host: host.to_string(),
        });
    }
    let mem = plan.mem.as_ref().map(|(bytes, text)| (*bytes, text.as_str()));
    let (cpus, mem_bytes) = choose_resources(plan.cpus, mem, needs, &limits(), ns::host_cpus())?;
    let manifest = Manifest {
        format: FORMAT,
        state: BundleState::Installing,
        created_by: format!("hvrun {}", env!("CARGO_PKG_VERSION")),
        created_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        host_macos: host.to_string(),
        restore_image: RestoreImageInfo {
            source,
            macos: guest_macos.clone(),
            build: build.clone(),
        },
        disk_bytes: plan.disk_bytes,
        cpus,
        mem_bytes,
        min_cpus: needs.min_cpus,
        min_mem_bytes: needs.min_mem,
    };
    let mut bundle = Bundle::create(&plan.bundle, manifest)?;
    eprintln!(
        "hvrun: installing macOS {guest_macos} ({build}) into {}: {cpus} vCPUs, {} MiB, a {} GiB disk",
        plan.bundle.display(),
        mem_bytes >> 20,
        plan.disk_bytes >> 30
    );
    let result =
        install_into(&bundle, &image_path, &hardware_model, cpus, mem_bytes, &sigint, host);
    match result {
        Ok(()) => {
            bundle.set_state(BundleState::Ready)?;
            eprintln!("hvrun: installed; boot it with `hvrun macos run {}`", plan.bundle.display());
            Ok(())
        }
        Err(failure) => {
            let (reason, error) = *failure;
            bundle.set_state(BundleState::Incomplete { reason })?;
            Err(error)
        }
    }
}

/// Writes the guest's identity into the bundle and runs the installer. On failure: the reason
/// for the manifest, and the error.
fn install_into(
    bundle: &Bundle,
    image: &Path,
    hardware_model: &objc2_virtualization::VZMacHardwareModel,
    cpus: u32,
    mem_bytes: u64,
    sigint: &SigintCounter,
    host: crate::vz::version::MacosVersion,
) -> Result<(), Box<(String, VzError)>> {
    let failed = |e: VzError| Box::new((format!("failed before the install started: {e}"), e));
    // SAFETY: a fresh, random machine identifier (the guest's serial number).
    let machine_id = unsafe { VZMacMachineIdentifier::new() };
    // SAFETY: properties of valid objects.
    let (model_bytes, id_bytes) = unsafe {
        (
            data_bytes(&hardware_model.dataRepresentation()),
            data_bytes(&machine_id.dataRepresentation()),
        )
    };
    bundle.write_blob(HARDWARE_MODEL, &model_bytes).map_err(|e| failed(e.into()))?;
    bundle.write_blob(MACHINE_ID, &id_bytes).map_err(|e| failed(e.into()))?;
    // SAFETY: a fresh allocation creating the NVRAM file for this hardware model.
    let aux = unsafe {
        VZMacAuxiliaryStorage::initCreatingStorageAtURL_hardwareModel_options_error(
            VZMacAuxiliaryStorage::alloc(),
            &file_url(&bundle.path(AUX_STORAGE)),
            hardware_model,
            VZMacAuxiliaryStorageInitializationOptions::AllowOverwrite,
        )
    }
    .map_err(|e| {
        failed(VzError::from_framework(
            "creating the auxiliary storage",
            framework_error(&e),
            exe(),
        ))
    })?;
    let id = MacIdentity { hardware_model: hardware_model.retain(), machine_id, aux };
    let machine = MacMachine { cpus, mem_bytes, display: MAC_DISPLAY, shares: &[], console: None };
    let config = mac_config::configuration(bundle, &id, machine, host).map_err(failed)?;
    let vm = VzHandle::create(&config, Arc::new(VmControl::new()), mem_bytes);
    let installation = vm.install(image);
    let mut bar = Progress::on_stderr("macOS install", Unit::Fraction);
    let mut cancelled = false;
    let outcome = loop {
        if let Some(result) = wait_pumping(&installation.done, TICK) {
            break result;
        }
        bar.set_fraction(installation.fraction());
        match sigint.count() {
            0 => {}
            1 if !cancelled => {
                cancelled = true;
                installation.cancel();
            }
            1 => {}
            // A second Ctrl-C: stop waiting for the installer to wind down; stop the VM.
            _ => {
                let stopped = vm.force_stop_async();
                if wait_pumping(&stopped, Duration::from_secs(30)).is_none() {
                    log::warn!("the installer's VM did not stop within 30 s");
                }
                break Some(FrameworkError {
                    domain: "hvrun".into(),
                    code: 0,
                    description: "stopped with a second Ctrl-C".into(),
                    reason: None,
                });
            }
        }
    };
    let percent = (installation.fraction().clamp(0.0, 1.0) * 100.0) as u32;
    match outcome {
        None => {
            bar.set_fraction(1.0);
            bar.finish("done");
            Ok(())
        }
        Some(error) => {
            let image_name = image.display().to_string();
            let error = if cancelled {
                VzError::Cancelled {
                    what: "macOS install (the bundle is marked incomplete; run the same install \
                           again to start over)"
                        .into(),
                }
            } else {
                VzError::from_restore_image(&image_name, error, exe())
            };
            let reason = if cancelled {
                format!("cancelled with Ctrl-C at {percent}%")
            } else {
                format!("failed at {percent}%: {error}")
            };
            bar.abandon(if cancelled { "cancelled" } else { "failed" });
            Err(Box::new((reason, error)))
        }
    }
}

/// Where a restore image's metadata comes from.
enum RestoreImageSource<'a> {
    Latest,
    File(&'a Path),
}

/// Loads a restore image's metadata (from the file, or Apple's catalog for the latest); Ctrl-C
/// gives up waiting.
fn fetch(source: RestoreImageSource, sigint: &SigintCounter) -> Result<Loaded, VzError> {
    let (tx, rx) = mpsc::channel::<Result<Loaded, FrameworkError>>();
    let done = RcBlock::new(move |image: *mut VZMacOSRestoreImage, error: *mut NSError| {
        // SAFETY: VZ passes a loaded image or nil, and an error or nil, alive for this call.
        let result = match (unsafe { image.as_ref() }, unsafe { error_from_ptr(error) }) {
            (_, Some(error)) => Err(error),
            (Some(image), None) => Ok(Loaded(image.retain())),
            (None, None) => Err(FrameworkError {
                domain: "hvrun".into(),
                code: 0,
                description: "the framework returned neither an image nor an error".into(),
                reason: None,
            }),
        };
        let _ = tx.send(result);
    });
    let what = match source {
        RestoreImageSource::Latest => {
            // SAFETY: a class method with a valid completion block.
            unsafe { VZMacOSRestoreImage::fetchLatestSupportedWithCompletionHandler(&done) };
            "the latest macOS for this Mac (Apple's catalog)".to_string()
        }
        RestoreImageSource::File(path) => {
            // SAFETY: a class method with a file URL and a valid completion block.
            unsafe { VZMacOSRestoreImage::loadFileURL_completionHandler(&file_url(path), &done) };
            path.display().to_string()
        }
    };
    let deadline = std::time::Instant::now() + LOAD_TIME;
    loop {
        match wait_pumping(&rx, TICK) {
            Some(Ok(image)) => return Ok(image),
            Some(Err(error)) => return Err(VzError::from_restore_image(&what, error, exe())),
            None if sigint.count() > 0 => {
                return Err(VzError::Cancelled { what: format!("loading {what}") })
            }
            None if std::time::Instant::now() >= deadline => {
                return Err(VzError::Host(format!(
                    "loading {what}: no answer within {} s",
                    LOAD_TIME.as_secs()
                )))
            }
            None => {}
        }
    }
}

/// Downloads `url` into hvrun's cache (once: a finished download is reused), with a progress
/// bar; Ctrl-C cancels it.
fn download(url: &NSURL, text: &str, sigint: &SigintCounter) -> Result<PathBuf, VzError> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .ok_or_else(|| VzError::Host("HOME is not set".into()))?;
    let dest = ipsw_cache_path(&home, text).map_err(VzError::Host)?;
    if dest.is_file() {
        eprintln!("hvrun: using the restore image downloaded before: {}", dest.display());
        return Ok(dest);
    }
    let dir = dest.parent().unwrap_or(&home).to_owned();
    std::fs::create_dir_all(&dir).map_err(|e| VzError::Host(format!("{}: {e}", dir.display())))?;
    let (tx, rx) = mpsc::channel::<Result<(), String>>();
    let target = dest.clone();
    // Runs on NSURLSession's delegate queue; the file at `location` is deleted when it returns,
    // so it is moved here.
    let done = RcBlock::new(
        move |location: *mut NSURL, response: *mut NSURLResponse, error: *mut NSError| {
            // SAFETY: NSURLSession passes nil or objects alive for this call.
            let (location, response, error) =
                unsafe { (location.as_ref(), response.as_ref(), error_from_ptr(error)) };
            let result = match (error, location) {
                (Some(error), _) => Err(error.to_string()),
                (None, None) => Err("no file was downloaded".into()),
                (None, Some(location)) => match http_status(response) {
                    Some(status) if status != 200 => {
                        Err(format!("the server answered HTTP {status}"))
                    }
                    _ => move_download(location, &target),
                },
            };
            let _ = tx.send(result);
        },
    );
    let session = NSURLSession::sharedSession();
    // SAFETY: a valid URL and a completion block that is sendable (it only moves a file and
    // sends on a channel).
    let task = unsafe { session.downloadTaskWithURL_completionHandler(url, &done) };
    task.resume();
    let mut bar: Option<Progress> = None;
    let mut cancelled = false;
    let result = loop {
        if let Some(result) = wait_pumping(&rx, TICK) {
            break result;
        }
        let (got, total) = (task.countOfBytesReceived(), task.countOfBytesExpectedToReceive());
        if total > 0 {
            let bar = bar
                .get_or_insert_with(|| Progress::on_stderr("download", Unit::Bytes(total as u64)));
            bar.set_units(got.max(0) as u64);
        }
        if sigint.count() > 0 && !cancelled {
            cancelled = true;
            task.cancel();
        }
    };
    match (result, cancelled) {
        (Ok(()), _) => {
            if let Some(bar) = bar {
                bar.finish("done");
            }
            Ok(dest)
        }
        (Err(_), true) => {
            if let Some(bar) = bar {
                bar.abandon("cancelled");
            }
            Err(VzError::Cancelled { what: "restore image download".into() })
        }
        (Err(why), false) => {
            if let Some(bar) = bar {
                bar.abandon("failed");
            }
            Err(VzError::Host(format!("downloading {text}: {why}")))
        }
    }
}

/// The HTTP status of `response`, if it is an HTTP response.
fn http_status(response: Option<&NSURLResponse>) -> Option<isize> {
    let any: &AnyObject = response?;
    any.downcast_ref::<NSHTTPURLResponse>().map(|http| http.statusCode())
}

/// Moves the finished download from NSURLSession's temporary file to `dest` (copying when it
/// is on another volume), through a `.part` name so a half-copied file is never taken as done.
fn move_download(location: &NSURL, dest: &Path) -> Result<(), String> {
    let from =
        location.path().map(|p| PathBuf::from(p.to_string())).ok_or("the download has no path")?;
    let mut part = dest.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    if std::fs::rename(&from, &part).is_err() {
        std::fs::copy(&from, &part)
            .map_err(|e| format!("{} → {}: {e}", from.display(), part.display()))?;
    }
    std::fs::rename(&part, dest).map_err(|e| format!("{}: {e}", dest.display()))
}
