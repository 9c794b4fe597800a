//! The vz engine's framework half (macOS only): turns the portable plans into Virtualization.framework
//! objects through objc2 and runs them. Threads, everywhere in here:
//! - hvrun's **main thread** builds configurations, owns the terminal and any window (AppKit),
//!   and waits for the VM's end by pumping its run loop or AppKit's events — never blocking
//!   outright, so work queued on the main queue is served;
//! - the VM lives on its own **serial dispatch queue** ([`VzHandle`]); VZ calls back there;
//! - control threads (the API) call [`VzHandle`] methods, which hop onto that queue.

mod devices;
mod install;
mod linux_config;
mod mac_config;
mod machine;
mod ns;
mod window;

use std::sync::Arc;
use std::time::{Duration, Instant};

use objc2::MainThreadMarker;
use objc2_virtualization::{
    VZMacOSVirtualMachineStartOptions, VZVirtualMachine, VZVirtualMachineConfiguration,
};

pub use install::install;
pub use machine::VzHandle;

use crate::config::VmConfig;
use crate::control::{VmControl, VmOutcome};
use crate::terminal::Terminal;
use crate::vz::bundle::Bundle;
use crate::vz::console_pipe::ConsolePipe;
use crate::vz::errors::VzError;
use crate::vz::interrupt::SigintCounter;
use crate::vz::macos_plan::MacRunPlan;
use crate::vz::plan::{VzLimits, VzPlan};
use crate::vz::staging::StagedBoot;
use crate::vz::state::VzState;
use crate::vz::version::{self, Feature, MacosVersion};
use window::{Pump, VmWindow, WindowSpec};

/// How long starting a VM may take before hvrun gives up (a macOS guest's start includes
/// loading its firmware).
const START_TIME: Duration = Duration::from_secs(120);
/// How long a forced stop may take.
const STOP_TIME: Duration = Duration::from_secs(30);

/// Checks that this Mac can run VZ VMs at all and has every feature in `needed`; returns its
/// macOS release.
fn preflight(needed: &[Feature]) -> Result<MacosVersion, VzError> {
    // SAFETY: a class property with no preconditions.
    if !unsafe { VZVirtualMachine::isSupported() } {
        return Err(VzError::HostUnsupported);
    }
    let host = ns::host_macos();
    version::require(host, needed)?;
    Ok(host)
}

/// The framework's CPU and memory limits on this Mac.
fn limits() -> VzLimits {
    // SAFETY: class properties with no preconditions.
    unsafe {
        VzLimits {
            min_cpus: u32::try_from(VZVirtualMachineConfiguration::minimumAllowedCPUCount())
                .unwrap_or(1),
            max_cpus: u32::try_from(VZVirtualMachineConfiguration::maximumAllowedCPUCount())
                .unwrap_or(u32::MAX),
            min_mem: VZVirtualMachineConfiguration::minimumAllowedMemorySize(),
            max_mem: VZVirtualMachineConfiguration::maximumAllowedMemorySize(),
        }
    }
}

/// `hvrun --engine vz`: boots the Linux guest and waits for its end.
pub fn run_linux(config: VmConfig, plan: &VzPlan) -> Result<VmOutcome, VzError> {
    let host = preflight(&plan.required_features())?;
    limits().check(plan.cpus, plan.mem_bytes, &plan.mem_text)?;
    let staged =
        StagedBoot::write(&std::env::temp_dir(), config.kernel.bytes(), config.initrd.as_deref())
            .map_err(|e| {
            VzError::Host(format!("cannot stage the kernel for Virtualization.framework: {e}"))
        })?;
    // hvrun's checks opened and locked the disk images; VZ opens them itself and takes its own
    // lock (it waits, rather than fails, on an image someone holds), so hvrun lets go first.
    drop(config);
    let pipe = ConsolePipe::new()
        .map_err(|e| VzError::Host(format!("cannot create the console pipe: {e}")))?;
    let ConsolePipe { read, input } = pipe;
    let (vz_config, macs) = linux_config::configuration(plan, &staged, read, host)?;
    for (i, mac) in macs.iter().enumerate() {
        log::info!("eth{i}: macOS's NAT, MAC {mac}");
    }
    let stop = Arc::new(VmControl::new());
    let vm = VzHandle::create(&vz_config, stop.clone(), plan.mem_bytes);
    // Raw mode: keys go to the guest, Ctrl-A x quits (the window's close button too). Without
    // a terminal (a script, CI), SIGINT asks the guest to shut down, and a second one stops it.
    // VZ handles Ctrl-C and SIGTERM itself (the first asks the guest to shut down).
    let console = Terminal::start_keeping_signals(stop.clone());
    console.attach(Arc::new(input));
    let sigint = interrupt_unless_raw(&console)?;
    let window = match plan.gui {
        Some(scanout) => {
            let mtm = main_thread()?;
            let spec = WindowSpec {
                title: "hvrun: Linux on Virtualization.framework",
                width: scanout.width,
                height: scanout.height,
                follow_size: false,
            };
            Some((VmWindow::open(mtm, &vm, &spec, stop.clone(), host), Pump::for_window(Some(mtm))))
        }
        None => None,
    };
    let pump = window.as_ref().map_or(&Pump::RunLoop, |(_, pump)| pump);
    let outcome = run_until_stopped(&vm, None, &stop, pump, sigint.as_ref());
    drop(window);
    console.detach();
    drop(console);
    drop(staged);
    outcome
}

/// `hvrun macos run`: boots the bundle's macOS, in a window unless `--headless`.
pub fn run_macos_guest(bundle: Bundle, plan: &MacRunPlan) -> Result<VmOutcome, VzError> {
    let host = preflight(&plan.required_features())?;
    limits().check(plan.cpus, plan.mem_bytes, &plan.mem_text)?;
    let id = mac_config::MacIdentity::load(&bundle, host)?;
    let stop = Arc::new(VmControl::new());
    // Headless: the terminal is the guest's virtio console (raw mode, Ctrl-A x). With a window:
    // the terminal stays cooked, and Ctrl-C asks the guest to shut down (twice: stops it).
    let (console_fd, console) = if plan.headless {
        let ConsolePipe { read, input } = ConsolePipe::new()
            .map_err(|e| VzError::Host(format!("cannot create the console pipe: {e}")))?;
        let console = Terminal::start_keeping_signals(stop.clone());
        console.attach(Arc::new(input));
        (Some(read), Some(console))
    } else {
        (None, None)
    };
    let machine = mac_config::MacMachine {
        cpus: plan.cpus,
        mem_bytes: plan.mem_bytes,
        display: plan.display,
        shares: &plan.shares,
        console: console_fd,
    };
    let vz_config = mac_config::configuration(&bundle, &id, machine, host)?;
    let vm = VzHandle::create(&vz_config, stop.clone(), plan.mem_bytes);
    let sigint = match &console {
        Some(console) => interrupt_unless_raw(console)?,
        None => Some(sigint_counter()?),
    };
    let window = if plan.headless {
        None
    } else {
        let mtm = main_thread()?;
        let title = format!(
            "hvrun: {} (macOS {})",
            bundle.root().display(),
            bundle.manifest().restore_image.macos
        );
        // Half the display's pixels in points: on a Retina screen, one guest pixel per pixel.
        let (width, height) = (plan.display.width / 2, plan.display.height / 2);
        let spec = WindowSpec { title: &title, width, height, follow_size: true };
        Some((VmWindow::open(mtm, &vm, &spec, stop.clone(), host), Pump::for_window(Some(mtm))))
    };
    let options = if plan.recovery {
        // SAFETY: macOS 13 (Feature::Recovery, checked by preflight); a plain options object.
        let options = unsafe { VZMacOSVirtualMachineStartOptions::new() };
        // SAFETY: as above.
        unsafe { options.setStartUpFromMacOSRecovery(true) };
        Some(options.into_super())
    } else {
        None
    };
    let pump = window.as_ref().map_or(&Pump::RunLoop, |(_, pump)| pump);
    let outcome = run_until_stopped(&vm, options, &stop, pump, sigint.as_ref());
    drop(window);
    drop(console);
    drop(bundle);
    outcome
}

/// Counts Ctrl-C (SIGINT) when the terminal is not in raw mode (raw mode sends it to the guest).
fn interrupt_unless_raw(console: &Terminal) -> Result<Option<SigintCounter>, VzError> {
    if console.is_raw() {
        Ok(None)
    } else {
        sigint_counter().map(Some)
    }
}

fn sigint_counter() -> Result<SigintCounter, VzError> {
    SigintCounter::install().map_err(|e| VzError::Host(format!("cannot catch Ctrl-C: {e}")))
}

/// The main thread's marker: AppKit needs it, and hvrun's `main` runs there.
fn main_thread() -> Result<MainThreadMarker, VzError> {
    MainThreadMarker::new()
        .ok_or_else(|| VzError::Host("a window can only be opened from hvrun's main thread".into()))
}

/// Starts the VM and serves the main thread until the VM ends (the guest powers off, the VM
/// fails, the user quits, a control request stops it); then makes sure it is stopped.
fn run_until_stopped(
    vm: &VzHandle,
    options: Option<objc2::rc::Retained<objc2_virtualization::VZVirtualMachineStartOptions>>,
    stop: &VmControl,
    pump: &Pump,
    sigint: Option<&SigintCounter>,
) -> Result<VmOutcome, VzError> {
    let started = vm.start(options);
    match ns::wait_pumping(&started, START_TIME) {
        Some(None) => {}
        Some(Some(error)) => {
            return Err(VzError::from_framework("starting the VM", error, ns::exe()))
        }
        None => {
            return Err(VzError::Host(format!(
                "Virtualization.framework did not start the VM within {} s",
                START_TIME.as_secs()
            )))
        }
    }
    let mut asked_guest = false;
    while !stop.is_stopping() {
        pump.pump(Duration::from_millis(100));
        match sigint.map_or(0, SigintCounter::count) {
            0 => {}
            1 if !asked_guest => {
                asked_guest = true;
                match vm.request_stop() {
                    Ok(()) => {
                        eprintln!("hvrun: asked the guest to shut down (Ctrl-C again stops it now)")
                    }
                    Err(e) => {
                        eprintln!("hvrun: {e}; stopping it now");
                        stop.request_stop(VmOutcome::Quit);
                    }
                }
            }
            1 => {}
            _ => stop.request_stop(VmOutcome::Quit),
        }
    }
    // VZ keeps no exit statistics: a request for them gets nothing.
    let outcome = crate::vmm::serve_until_stopped(stop, |request| match request {
        crate::control::VmRequest::Stats(reply) => drop(reply.send(None)),
    });
    if !matches!(vm.state(), VzState::Stopped | VzState::Error) {
        let stopped = vm.force_stop_async();
        let deadline = Instant::now() + STOP_TIME;
        match ns::wait_pumping(&stopped, deadline.saturating_duration_since(Instant::now())) {
            Some(None) => {}
            Some(Some(error)) => log::warn!("stopping the VM: {error}"),
            None => log::warn!("the VM did not stop within {} s", STOP_TIME.as_secs()),
        }
    }
    Ok(outcome)
}
