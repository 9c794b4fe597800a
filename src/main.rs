//! The `hvrun` command: parse the command line, check it, run the VM, turn the way it ended into
//! an exit code (see `hvrun::exit_code`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use hvrun::bench::{BenchConfig, Case};
use hvrun::config::{VmArgs, VmConfig};
use hvrun::exit_code;

/// Boot an arm64 Linux guest on Hypervisor.framework (macOS) or KVM (arm64 Linux).
#[derive(Parser, Debug)]
#[command(version, about, after_help = EXIT_CODES, subcommand_negates_reqs = true,
          args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    vm: VmArgs,
    #[command(flatten)]
    engine: hvrun::vz::cli::EngineArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure what VM exits cost with built-in micro-guests (no kernel needed).
    Bench(BenchCli),
    /// macOS guests on Apple's Virtualization.framework: install from an IPSW, run.
    Macos(hvrun::vz::cli::MacosCli),
    /// What this machine can do for hvrun's VMs: backend, limits, GIC, EL2, counter, features.
    Host {
        /// Print one JSON object instead of a line per fact.
        #[arg(long)]
        json: bool,
    },
}

/// `hvrun bench`: built-in micro-guests time a batch of exits with the guest's virtual counter.
#[derive(clap::Args, Debug)]
struct BenchCli {
    /// Cases to run [default: all]: nop, hvc, mmio-read, mmio-write, mmio-read-kernel, sysreg.
    #[arg(value_name = "CASE")]
    cases: Vec<Case>,
    /// Measured iterations per vCPU and case (rounded up to whole batches).
    #[arg(long, value_name = "N", default_value_t = 65536)]
    iterations: u64,
    /// Iterations per batch (one pair of counter reads per batch).
    #[arg(long, value_name = "N", default_value_t = 64)]
    batch: u64,
    /// vCPUs running the micro-guest at the same time (one VM with N vCPUs).
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u32,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also draw the latency distributions into an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Do not time hvrun's handling of each exit (to measure what that timing costs).
    #[arg(long)]
    no_vmm_time: bool,
    /// Give up on a case after this many seconds.
    #[arg(long, value_name = "S", default_value_t = 600)]
    timeout: u64,
}

const EXIT_CODES: &str = "Exit codes: 0 guest powered off · 1 hvrun failed · 2 bad usage or \
unsupported host · 3 guest reset with --no-reboot · 4 guest kernel panicked · 130 quit (Ctrl-A x) \
· 128+N stopped by signal N (SIGTERM: 143)\n\
Console: Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A.";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Bench(bench)) => return ExitCode::from(run_bench(bench) as u8),
        Some(Command::Macos(macos)) => return ExitCode::from(hvrun::vz::run_macos(macos) as u8),
        Some(Command::Host { json }) => return ExitCode::from(hvrun::host::run(json) as u8),
        None => {}
    }
    let config = match VmConfig::from_args(&cli.vm) {
        Ok(config) => config,
        Err(e) => return fail(exit_code::USAGE, &e.to_string()),
    };
    if cli.engine.engine == hvrun::vz::cli::Engine::Vz {
        return ExitCode::from(hvrun::vz::run_linux(config, &cli.engine) as u8);
    }
    if let Err(e) = cli.engine.check_vmm() {
        return fail(exit_code::USAGE, &e.to_string());
    }
    ExitCode::from(run(&config) as u8)
}

/// Prints `message` as hvrun's one-line error and returns `code`.
fn fail(code: i32, message: &str) -> ExitCode {
    ExitCode::from(fail_code(code, message) as u8)
}

#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
fn run(config: &VmConfig) -> i32 {
    use hvrun::hv::kvm::KvmHypervisor;

    if config.nested {
        return fail_code(
            exit_code::USAGE,
            "--nested: nested virtualisation is only wired for Hypervisor.framework (macOS 15 on \
             an M3 or later), not for KVM yet",
        );
    }
    let hv = match KvmHypervisor::open() {
        Ok(hv) => hv,
        Err(e) => {
            eprintln!("hvrun: {e}: hvrun needs arm64 Linux with a working /dev/kvm (or an Apple Silicon Mac)");
            return exit_code::USAGE;
        }
    };
    run_on(&hv, config)
}

#[cfg(target_os = "macos")]
fn run(config: &VmConfig) -> i32 {
    use hvrun::hv::hvf::{HvfHypervisor, HvfOptions};

    let options = match HvfOptions::from_env(config.nested) {
        Ok(options) => options,
        Err(e) => return fail_code(exit_code::USAGE, &e),
    };
    // Every failure here means this Mac or this binary cannot run VMs (no Apple Silicon, a
    // macOS VM, no entitlement, no EL2): the "unsupported host" exit code, like a missing KVM.
    let hv = match HvfHypervisor::open(options) {
        Ok(hv) => hv,
        Err(e) => return fail_code(exit_code::USAGE, &e.to_string()),
    };
    run_on(&hv, config)
}

/// Runs the VM on `hv` and turns the way it ended into an exit code.
#[cfg(any(all(target_os = "linux", target_arch = "aarch64"), target_os = "macos"))]
fn run_on<H: hvrun::hv::Hypervisor>(hv: &H, config: &VmConfig) -> i32 {
    use std::sync::Arc;

    use hvrun::control::{VmControl, VmOutcome};
    use hvrun::terminal::Terminal;

    if let Err(e) = config.check_host(&hv.limits()) {
        return fail_code(exit_code::USAGE, &e.to_string());
    }
    let control = Arc::new(VmControl::new());
    let terminal = Terminal::start(control.clone());
    let result = hvrun::vmm::run(hv, config, &terminal, &control);
    drop(terminal); // writes out the guest's last output and restores the terminal first
    let result = result.map(|report| {
        print_observations(&report, config.stats);
        report.outcome
    });
    match result {
        Ok(VmOutcome::Failed(why)) => fail_code(exit_code::FAILED, &why),
        Ok(outcome) => {
            match outcome {
                VmOutcome::GuestPanic => eprintln!("hvrun: the guest kernel panicked"),
                VmOutcome::Signal(signal) => eprintln!("hvrun: stopped by signal {signal}"),
                _ => {}
            }
            exit_code::for_outcome(&outcome)
        }
        Err(e) => fail_code(exit_code::FAILED, &e.to_string()),
    }
}

#[cfg(not(any(all(target_os = "linux", target_arch = "aarch64"), target_os = "macos")))]
fn run(_config: &VmConfig) -> i32 {
    fail_code(exit_code::USAGE, NO_BACKEND)
}

/// Prints `message` as hvrun's one-line error and returns `code` as an `i32`.
fn fail_code(code: i32, message: &str) -> i32 {
    eprintln!("hvrun: {message}");
    code
}

/// Prints `--stats` and the `--trace-exits` summary to stderr.
#[cfg(any(all(target_os = "linux", target_arch = "aarch64"), target_os = "macos"))]
fn print_observations(report: &hvrun::vmm::RunReport, format: Option<hvrun::stats::StatsFormat>) {
    if let Some(summary) = &report.trace_summary {
        eprintln!("{summary}");
    }
    match (&report.stats, format) {
        (Some(stats), Some(hvrun::stats::StatsFormat::Json)) => eprintln!("{}", stats.to_json()),
        (Some(stats), _) => eprint!("{}", stats.to_table()),
        (None, _) => {}
    }
}

/// The message for hosts that cannot run arm64 guests at all (and for a KVM that fails to open).
#[cfg(not(target_os = "macos"))]
const NO_BACKEND: &str = "this host cannot run arm64 guests: hvrun needs an Apple Silicon Mac \
                          (Hypervisor.framework) or arm64 Linux with /dev/kvm";

/// Checks the bench options and runs the cases on this host's backend.
fn run_bench(cli: BenchCli) -> i32 {
    if cli.iterations == 0 || cli.batch == 0 {
        eprintln!("hvrun bench: --iterations and --batch must be at least 1");
        return exit_code::USAGE;
    }
    if cli.cpus == 0 || cli.cpus > boot::layout::MAX_VCPUS {
        eprintln!("hvrun bench: --cpus must be 1..={}", boot::layout::MAX_VCPUS);
        return exit_code::USAGE;
    }
    if cli.iterations.div_ceil(cli.batch) > 1 << 20 {
        eprintln!("hvrun bench: at most 1048576 batches (raise --batch)");
        return exit_code::USAGE;
    }
    let config = BenchConfig {
        cases: if cli.cases.is_empty() { Case::ALL.to_vec() } else { cli.cases },
        iterations: cli.iterations,
        batch: cli.batch,
        cpus: cli.cpus,
        vmm_time: !cli.no_vmm_time,
        timeout: Duration::from_secs(cli.timeout),
    };
    let report = match bench_on_host(&config) {
        Ok(report) => report,
        Err(code) => return code,
    };
    if cli.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    if let Some(path) = &cli.plot {
        if let Err(e) = report.plot(path) {
            eprintln!("hvrun bench: --plot {e}");
            return exit_code::FAILED;
        }
    }
    0
}

#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
fn bench_on_host(config: &BenchConfig) -> Result<hvrun::bench::BenchReport, i32> {
    let hv = hvrun::hv::kvm::KvmHypervisor::open().map_err(|e| {
        eprintln!("hvrun bench: {e}: {NO_BACKEND}");
        exit_code::USAGE
    })?;
    bench_on(&hv, config)
}

#[cfg(target_os = "macos")]
fn bench_on_host(config: &BenchConfig) -> Result<hvrun::bench::BenchReport, i32> {
    use hvrun::hv::hvf::{HvfHypervisor, HvfOptions};
    let hv = HvfHypervisor::open(HvfOptions::default()).map_err(|e| {
        eprintln!("hvrun bench: {e}");
        exit_code::USAGE
    })?;
    bench_on(&hv, config)
}

/// Runs the bench cases on `hv`.
#[cfg(any(all(target_os = "linux", target_arch = "aarch64"), target_os = "macos"))]
fn bench_on<H: hvrun::hv::Hypervisor>(
    hv: &H,
    config: &BenchConfig,
) -> Result<hvrun::bench::BenchReport, i32> {
    if config.cpus > hv.limits().max_vcpus {
        eprintln!(
            "hvrun bench: --cpus {}: this host allows at most {}",
            config.cpus,
            hv.limits().max_vcpus
        );
        return Err(exit_code::USAGE);
    }
    hvrun::bench::run(hv, config).map_err(|e| {
        eprintln!("hvrun bench: {e}");
        exit_code::FAILED
    })
}

#[cfg(not(any(all(target_os = "linux", target_arch = "aarch64"), target_os = "macos")))]
fn bench_on_host(_config: &BenchConfig) -> Result<hvrun::bench::BenchReport, i32> {
    eprintln!("hvrun bench: {NO_BACKEND}");
    Err(exit_code::USAGE)
}
