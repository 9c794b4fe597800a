//! The Virtualization.framework ("vz") engine: Apple's VMM runs the guest — macOS, or Linux side
//! by side with hvrun's own engine — while hvrun supplies the command line and its checks, the
//! terminal and the exit codes. A sibling of `vmm/`, not an `hv` backend: VZ has no exits, no
//! vCPU loop, and its own devices.
//!
//! Everything that decides is portable and unit-tested on any host: the flags (`cli`), the Linux
//! guest's configuration as plain data (`plan`, `net`, `share`), macOS guests' bundles and plans
//! (`bundle`, `macos_plan`), progress display, errors and their exit codes, feature versions,
//! the VM state machine (`state`). Only `macos/` calls the framework, through objc2.

pub mod bundle;
pub mod cli;
pub mod console_pipe;
pub mod errors;
pub mod interrupt;
pub mod macos_plan;
pub mod net;
pub mod plan;
pub mod progress;
pub mod share;
pub mod staging;
pub mod state;
pub mod version;

#[cfg(target_os = "macos")]
mod macos;

use crate::config::VmConfig;
use crate::control::VmOutcome;
use crate::exit_code;
use cli::{EngineArgs, MacosCli, MacosCommand};
use errors::VzError;
use plan::VzPlan;

#[cfg(target_os = "macos")]
pub use macos::VzHandle;

/// `hvrun --engine vz ...`: boots the Linux guest of `config` on Virtualization.framework and
/// returns hvrun's exit code.
pub fn run_linux(config: VmConfig, engine: &EngineArgs) -> i32 {
    let plan = match VzPlan::from_config(&config, engine) {
        Ok(plan) => plan,
        Err(e) => return report(&e.into()),
    };
    run_linux_plan(config, plan)
}

#[cfg(target_os = "macos")]
fn run_linux_plan(config: VmConfig, plan: VzPlan) -> i32 {
    exit_for(macos::run_linux(config, &plan))
}

#[cfg(not(target_os = "macos"))]
fn run_linux_plan(_config: VmConfig, _plan: VzPlan) -> i32 {
    report(&plan::VzConfigError::NotAMac.into())
}

/// `hvrun macos install|run`.
pub fn run_macos(cli: MacosCli) -> i32 {
    let result = match cli.command {
        MacosCommand::Install(args) => {
            macos_plan::InstallPlan::from_args(&args).map_err(VzError::from).and_then(install)
        }
        MacosCommand::Run(args) => run_bundle(&args),
    };
    exit_for(result)
}

#[cfg(target_os = "macos")]
fn install(plan: macos_plan::InstallPlan) -> Result<VmOutcome, VzError> {
    macos::install(&plan).map(|()| VmOutcome::PowerOff)
}

#[cfg(not(target_os = "macos"))]
fn install(_plan: macos_plan::InstallPlan) -> Result<VmOutcome, VzError> {
    Err(VzError::NotAMac("hvrun macos install"))
}

/// Opens the bundle and checks it (on any host: the bundle and its manifest are portable), then
/// boots it on a Mac.
fn run_bundle(args: &cli::RunArgs) -> Result<VmOutcome, VzError> {
    let bundle = bundle::Bundle::open(&args.bundle)?;
    if let Some(reason) = bundle.incomplete_reason() {
        return Err(VzError::BundleIncomplete { path: args.bundle.clone(), reason });
    }
    let plan = macos_plan::MacRunPlan::new(bundle.manifest(), args)?;
    boot_bundle(bundle, plan)
}

#[cfg(target_os = "macos")]
fn boot_bundle(bundle: bundle::Bundle, plan: macos_plan::MacRunPlan) -> Result<VmOutcome, VzError> {
    macos::run_macos_guest(bundle, &plan)
}

#[cfg(not(target_os = "macos"))]
fn boot_bundle(
    _bundle: bundle::Bundle,
    _plan: macos_plan::MacRunPlan,
) -> Result<VmOutcome, VzError> {
    Err(VzError::NotAMac("hvrun macos run"))
}

/// Prints how the VM ended (if it failed) and returns the exit code.
fn exit_for(result: Result<VmOutcome, VzError>) -> i32 {
    match result {
        Ok(VmOutcome::Failed(why)) => {
            eprintln!("hvrun: {why}");
            exit_code::FAILED
        }
        Ok(outcome) => exit_code::for_outcome(&outcome),
        Err(e) => report(&e),
    }
}

fn report(e: &VzError) -> i32 {
    eprintln!("hvrun: {e}");
    e.exit_code()
}
