//! Guest RAM: one host mapping, seen by the devices and the loader through vm-memory and by the
//! hypervisor through [`Vm::map_memory`]. Also what `hvrun bench` gives its micro-guests.

use boot::layout::RAM_BASE;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

use super::VmmError;
use crate::hv::{MemoryPerms, Vm};

/// The guest's RAM, at [`RAM_BASE`].
pub struct GuestRam {
    memory: GuestMemoryMmap,
    bytes: u64,
}

impl GuestRam {
    /// Allocates `bytes` of zeroed guest RAM (an anonymous mapping: pages cost host memory only
    /// once the guest touches them).
    pub fn allocate(bytes: u64) -> Result<Self, VmmError> {
        let size = usize::try_from(bytes)
            .map_err(|_| VmmError::Memory(bytes >> 20, "too large for this host".into()))?;
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(RAM_BASE), size)])
            .map_err(|e| VmmError::Memory(bytes >> 20, e.to_string()))?;
        Ok(GuestRam { memory, bytes })
    }

    /// The memory as devices and the loader see it (a cheap, shared handle when cloned).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Makes this RAM the guest's memory in `vm`.
    ///
    /// # Safety
    /// `self` must outlive `vm` — dropped after it, and after every thread that runs one of its
    /// vCPUs has been joined: the guest reads and writes the mapping at any time until then.
    pub unsafe fn map_into<V: Vm>(&self, vm: &V) -> Result<(), VmmError> {
        for region in self.memory.iter() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| VmmError::Memory(self.bytes >> 20, e.to_string()))?;
            // SAFETY: the mapping is owned by `self`, which the caller keeps alive longer than
            // the VM.
            unsafe { vm.map_memory(host, region.start_addr().0, region.len(), MemoryPerms::RWX)? };
        }
        Ok(())
    }
}
