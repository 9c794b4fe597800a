//! PSCI with two vCPUs: CPU_ON starts the secondary at an entry point with its context id in x0,
//! AFFINITY_INFO follows its state, a second CPU_ON is refused, SYSTEM_OFF ends the VM while the
//! secondary still spins.
//!
//! KVM serves these calls in the kernel (arch/arm64/kvm/psci.c); the Hypervisor.framework
//! backend decides them with `src/arch/aarch64/psci.rs`, whose `psci_tests.rs::
//! the_kvm_conformance_sequence` replays this sequence. Where the two differ, the comments on
//! [`EXPECTED`] say so.

use super::*;

const UART_BASE: u64 = 0x0900_0000;
/// A word of guest RAM the secondary sets once it has printed, so the boot vCPU's output never
/// interleaves with it: RAM_BASE + 32 MiB, inside the 64 MiB guest, far from the Image (at
/// RAM_BASE) and the device tree (in the last 2 MiB). With the MMU off both vCPUs access it
/// as Device memory, uncached, so the spin sees the store.
const FLAG: u64 = 0x4200_0000;
/// The secondary's context id: all 64 bits must arrive (CPU_ON_64).
const CONTEXT_ID: u64 = 0x0123_4567_89ab_cdef;
/// vCPU 1's MPIDR affinity as Linux names it (the hwid without bit 31).
const TARGET: u64 = 1;

const PSCI_VERSION: u32 = 0x8400_0000;
const CPU_ON_64: u32 = 0xc400_0003;
const AFFINITY_INFO_64: u32 = 0xc400_0004;

/// x0 of each call the boot vCPU makes is kept in x21.. until the secondary has printed.
const FIRST_RESULT: u32 = 21;

/// What the guest prints, in order. KVM is the kernel of the machine the test runs on: CI's is
/// Debian 6.1.
fn expected() -> Vec<(String, &'static str)> {
    vec![
        (hex(CONTEXT_ID), "secondary: x0 at its entry point = the context id"),
        (hex(0x8000_0001), "secondary: MPIDR_EL1 (hvrun's mpidr_for_vcpu(1))"),
        // PSCI_VERSION is checked separately (it depends on the host kernel).
        ("".into(), "PSCI_VERSION"),
        (hex(1), "AFFINITY_INFO(1, level 0) before CPU_ON: OFF"),
        // KVM checks target_affinity against MPIDR_HWID_BITMASK (0xff00ffffff), so bit 31
        // (RES1 in MPIDR_EL1) makes the call invalid. hvrun's HVF policy masks it off and
        // answers OFF here (psci.rs, MPIDR_AFFINITY_MASK).
        (hex(-2i64 as u64), "AFFINITY_INFO(0x80000001, level 0): KVM INVALID_PARAMETERS"),
        (hex(0), "CPU_ON(1, entry, context id): SUCCESS"),
        // KVM marks the target runnable inside CPU_ON, so it is ON at once; hvrun's HVF policy
        // says ON_PENDING (2) until the target's thread has loaded its registers.
        (hex(0), "AFFINITY_INFO(1, level 0) right after CPU_ON: KVM ON"),
        (hex(0), "AFFINITY_INFO(1, level 0) once the secondary ran: ON"),
        // KVM implements levels 0-3 (ON if any vCPU of the cluster is on); hvrun's HVF policy
        // implements level 0 only and answers INVALID_PARAMETERS (-2), as PSCI 1.0+ allows.
        (hex(0), "AFFINITY_INFO(0, level 1): KVM ON"),
        (hex(-4i64 as u64), "CPU_ON(1) again: ALREADY_ON"),
    ]
}

/// The guest: the secondary's code first (so the boot vCPU's ADR can point back at it), then
/// the boot vCPU's.
fn program() -> Vec<u32> {
    let mut p = Program::new();

    // Secondary, entered by CPU_ON with x0 = context id and nothing else set up.
    let secondary = p.here();
    p.mov_imm(X_UART, UART_BASE);
    p.print_x0();
    p.push([MRS_X0_MPIDR]);
    p.print_x0();
    p.push([DSB_SY]); // its UART stores complete before the flag is seen
    p.mov_imm(20, FLAG);
    p.mov_imm(1, 1);
    p.push([ldst(STR_W, 1, 20, 0), B_SELF]); // str w1, [x20]; then spin, ON, until SYSTEM_OFF

    // Boot vCPU. Each call's x0 goes to the next of x21..x28.
    p.entry_here();
    p.mov_imm(X_UART, UART_BASE);
    p.mov_imm(20, FLAG);
    let mut results = FIRST_RESULT..29;
    let mut save = |p: &mut Program| p.push([mov_x(results.next().unwrap(), 0)]);
    let cpu_on = |p: &mut Program| {
        p.mov_imm(1, TARGET);
        let at = p.here();
        p.push([adr(2, at, secondary)]);
        p.mov_imm(3, CONTEXT_ID);
        p.mov_imm(0, CPU_ON_64.into());
        p.push([HVC_0]);
    };
    p.hvc(PSCI_VERSION, &[]);
    save(&mut p);
    p.hvc(AFFINITY_INFO_64, &[TARGET, 0]);
    save(&mut p);
    p.hvc(AFFINITY_INFO_64, &[0x8000_0000 | TARGET, 0]);
    save(&mut p);
    cpu_on(&mut p);
    save(&mut p);
    p.hvc(AFFINITY_INFO_64, &[TARGET, 0]);
    save(&mut p);
    // Wait for the secondary's flag: ldr w1, [x20]; cbz w1, <the ldr>.
    let wait = p.here();
    p.push([ldst(LDR_W, 1, 20, 0), cbz_w(1, wait + 1, wait)]);
    p.hvc(AFFINITY_INFO_64, &[TARGET, 0]);
    save(&mut p);
    p.hvc(AFFINITY_INFO_64, &[0, 1]);
    save(&mut p);
    cpu_on(&mut p);
    save(&mut p);
    for reg in FIRST_RESULT..results.start {
        p.push([mov_x(0, reg)]);
        p.print_x0();
    }
    p.system_off()
}

#[test]
fn cpu_on_affinity_info_and_system_off_with_two_vcpus() {
    let r = run_guest("psci-cpu-on", &program(), &["--cpus", "2"]);
    assert_eq!(r.code, Some(0), "{}", r.describe());

    // PSCI_VERSION: KVM reports its newest PSCI for a vCPU with KVM_ARM_VCPU_PSCI_0_2: 1.1
    // (0x10001) on Linux 6.1, which is what hvrun's HVF policy reports too; Linux 6.12 moved
    // to 1.3. Accept any 1.x from 1.1 on, so native hosts with newer kernels pass.
    let mut expected = expected();
    let version = r.stdout.lines().nth(2).and_then(|l| u64::from_str_radix(l, 16).ok());
    assert!(
        matches!(version, Some(v) if v >> 16 == 1 && v & 0xffff >= 1),
        "PSCI_VERSION is not 1.1 or later\n{}",
        r.describe()
    );
    expected[2].0 = hex(version.unwrap());
    assert_lines(&r, &expected);
}
