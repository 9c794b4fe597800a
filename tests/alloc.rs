//! The hot path does not allocate: a counting global allocator watches hvrun's run loop serve
//! tens of thousands of MMIO exits of a micro-guest (through the library API, on KVM) and the
//! allocation count must not grow with the number of exits.
//!
//! Two runs differ only in how many exits they make (the same number of batches, 256 times more
//! iterations per batch); everything else — VM setup, threads, reading the results — is the
//! same, so any allocation per exit shows up as a difference (of thousands; the test allows a
//! few that depend on thread scheduling).

#![cfg(all(target_os = "linux", target_arch = "aarch64"))]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hvrun::bench::{run_case, BenchConfig, Case};
use hvrun::hv::kvm::KvmHypervisor;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: defers every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from System.alloc/realloc with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made while running `case` with `batch` iterations per batch, and its exits.
fn allocations(hv: &KvmHypervisor, case: Case, batch: u64, vmm_time: bool) -> (u64, u64) {
    let config = BenchConfig {
        cases: vec![case],
        iterations: 8 * batch,
        batch,
        cpus: 1,
        vmm_time,
        timeout: Duration::from_secs(600),
    };
    let exits = (config.batches() + config.warmup_batches()) * batch;
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let report = run_case(hv, case, &config).expect("the micro-guest runs");
    let after = ALLOCATIONS.load(Ordering::SeqCst);
    assert!(report.per_iteration.is_some());
    (after - before, exits)
}

/// Allocations that may come or go with thread scheduling, independent of the exit count.
const SLACK: u64 = 4;

#[test]
fn the_run_loop_does_not_allocate_per_exit() {
    common::require_kvm();
    let hv = KvmHypervisor::open().unwrap();
    for (case, vmm_time) in [(Case::MmioRead, true), (Case::MmioWrite, false)] {
        allocations(&hv, case, 4, vmm_time); // warm up one-time initialisation
        let (few, few_exits) = allocations(&hv, case, 4, vmm_time);
        let (many, many_exits) = allocations(&hv, case, 1024, vmm_time);
        eprintln!(
            "{} (exit timing {}): {few} allocations for {few_exits} exits, {many} for {many_exits}",
            case.name(),
            if vmm_time { "on" } else { "off" }
        );
        assert!(many_exits - few_exits > 9000);
        // A handful of allocations outside the loop depend on thread timing (observed: 0 or 2
        // more, in either run — e.g. a channel receiver that blocks or does not); one allocation
        // per exit would add over 9000.
        assert!(
            many <= few + SLACK,
            "{} more exits made {} more allocations",
            many_exits - few_exits,
            many as i64 - few as i64
        );
    }
}
