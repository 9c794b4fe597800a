//! What the guest finds in RAM when vCPU 0 starts: the kernel, the initrd, and the device tree
//! that describes the machine and points at both (Documentation/arch/arm64/booting.rst).

use boot::{fdt, BootPlacement, FdtConfig, VirtioMmioNode};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::VmmError;
use crate::arch::aarch64::mpidr_for_vcpu;
use crate::config::VmConfig;
use crate::hv::Hypervisor;

/// Where the boot vCPU starts.
#[derive(Clone, Copy, Debug)]
pub struct BootEntry {
    /// The kernel's entry point (guest physical).
    pub kernel: u64,
    /// The device tree's address, for X0.
    pub fdt: u64,
}

/// Loads the kernel and initrd, then writes the device tree that points at them.
pub fn load_boot_images<H: Hypervisor>(
    hv: &H,
    config: &VmConfig,
    memory: &GuestMemoryMmap,
    virtio: &[VirtioMmioNode],
) -> Result<BootEntry, VmmError> {
    let initrd_len = config.initrd.as_ref().map_or(0, |i| i.len() as u64);
    let place = BootPlacement::plan(config.mem_bytes, config.kernel.footprint(), initrd_len)?;
    let kernel = config.kernel.load(memory, GuestAddress(place.kernel_base))?;
    if let Some(initrd) = &config.initrd {
        place.write_initrd(memory, initrd)?;
    }

    let mpidrs: Vec<u64> = (0..config.vcpus).map(mpidr_for_vcpu).collect();
    let mut rng_seed = [0u8; 64];
    fill_random(&mut rng_seed);
    let mut kaslr = [0u8; 8];
    fill_random(&mut kaslr);
    let blob = fdt::build(&FdtConfig {
        ram_size: config.mem_bytes,
        cpu_mpidrs: &mpidrs,
        cmdline: &config.cmdline,
        initrd: place.initrd,
        psci: hv.psci_conduit(),
        virtio,
        rng_seed: &rng_seed,
        kaslr_seed: u64::from_le_bytes(kaslr),
    })
    .map_err(|e| VmmError::Fdt(e.to_string()))?;
    place.write_fdt(memory, &blob)?;
    Ok(BootEntry { kernel: kernel.entry.0, fdt: place.fdt })
}

/// Fills `buf` from the host's entropy source (/dev/urandom, on Linux and macOS alike); zeros if
/// that fails, which only costs the guest an early entropy seed.
fn fill_random(buf: &mut [u8]) {
    use std::io::Read;
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf));
    if let Err(e) = read {
        log::warn!("cannot read /dev/urandom ({e}); the guest gets no early entropy seed");
        buf.fill(0);
    }
}
