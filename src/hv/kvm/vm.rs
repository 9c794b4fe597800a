//! A KVM VM: guest memory slots, the in-kernel vGICv3, vCPU creation and interrupt lines.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
    kvm_userspace_memory_region, kvm_vcpu_init, KVM_ARM_IRQ_TYPE_SHIFT, KVM_ARM_IRQ_TYPE_SPI,
    KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2, KVM_DEV_ARM_VGIC_CTRL_INIT,
    KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
    KVM_MEM_READONLY, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, IoEventAddress, Kvm, VmFd};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd};
use vmm_sys_util::eventfd::EventFd;

use super::vcpu::KvmVcpu;
use crate::hv::{HvError, MemoryPerms, Result, Vm, VmSpec};
use boot::layout;
use devices::{IrqLine, Notifier};

/// A KVM VM with its vGICv3.
pub struct KvmVm {
    fd: Arc<VmFd>,
    vgic: DeviceFd,
    /// The vCPU features KVM prefers on this host, plus PSCI 0.2.
    vcpu_init: kvm_vcpu_init,
    next_slot: AtomicU32,
}

impl KvmVm {
    /// Creates the VM and its vGIC (`sized_ipa`: the host supports KVM_CAP_ARM_VM_IPA_SIZE).
    pub(super) fn create(kvm: &Kvm, spec: &VmSpec, sized_ipa: bool) -> Result<Self> {
        let fd = if sized_ipa {
            // KVM's smallest stage-2 IPA size is 32 bits.
            kvm.create_vm_with_ipa_size(spec.ipa_bits.max(32))
        } else {
            kvm.create_vm()
        }
        .map_err(|e| HvError::new("KVM_CREATE_VM", e))?;

        let mut vcpu_init = kvm_vcpu_init::default();
        fd.get_preferred_target(&mut vcpu_init)
            .map_err(|e| HvError::new("KVM_ARM_PREFERRED_TARGET", e))?;
        vcpu_init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;

        let vgic = create_vgic_v3(&fd, spec.vcpus)?;
        Ok(KvmVm { fd: Arc::new(fd), vgic, vcpu_init, next_slot: AtomicU32::new(0) })
    }
}

/// Creates the vGICv3 and places its distributor and redistributors where the FDT says
/// (Documentation/virt/kvm/devices/arm-vgic-v3.rst). Initialised later, in `vcpus_created`.
fn create_vgic_v3(vm: &VmFd, vcpus: u32) -> Result<DeviceFd> {
    let mut dev =
        kvm_create_device { type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, fd: 0, flags: 0 };
    let vgic = vm.create_device(&mut dev).map_err(|e| {
        HvError::new("cannot create the in-kernel GICv3 (is this host's GIC a GICv3?)", e)
    })?;
    let dist = layout::GICD_BASE;
    let redist = layout::GICR_BASE;
    debug_assert!(layout::gicr_size(vcpus) <= layout::UART_BASE - layout::GICR_BASE);
    set_vgic_attr(&vgic, KVM_DEV_ARM_VGIC_GRP_ADDR, u64::from(KVM_VGIC_V3_ADDR_TYPE_DIST), &dist)?;
    set_vgic_attr(
        &vgic,
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        u64::from(KVM_VGIC_V3_ADDR_TYPE_REDIST),
        &redist,
    )?;
    set_vgic_attr(&vgic, KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, &layout::GIC_NR_IRQS)?;
    Ok(vgic)
}

/// Sets one vGIC attribute whose value is read from `value`.
fn set_vgic_attr<T>(vgic: &DeviceFd, group: u32, attr: u64, value: &T) -> Result<()> {
    let attr = kvm_device_attr { group, attr, addr: value as *const T as u64, flags: 0 };
    vgic.set_device_attr(&attr)
        .map_err(|e| HvError::new(format!("vGIC attribute group {group} attr {attr:?}"), e))
}

impl Vm for KvmVm {
    type Vcpu = KvmVcpu;

    unsafe fn map_memory(
        &self,
        host_addr: *mut u8,
        guest_addr: u64,
        size: u64,
        perms: MemoryPerms,
    ) -> Result<()> {
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let region = kvm_userspace_memory_region {
            slot,
            flags: if perms.write { 0 } else { KVM_MEM_READONLY },
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the caller guarantees the host range stays mapped for the VM's lifetime.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(|e| HvError::new(format!("mapping guest memory at {guest_addr:#x}"), e))
    }

    fn create_vcpu(&self, index: u32) -> Result<KvmVcpu> {
        let fd = self
            .fd
            .create_vcpu(u64::from(index))
            .map_err(|e| HvError::new(format!("KVM_CREATE_VCPU {index}"), e))?;
        let mut init = self.vcpu_init;
        if index > 0 {
            // Secondary vCPUs wait for the guest's PSCI CPU_ON, which KVM serves.
            init.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
        }
        fd.vcpu_init(&init).map_err(|e| HvError::new(format!("KVM_ARM_VCPU_INIT {index}"), e))?;
        Ok(KvmVcpu::new(fd))
    }

    fn vcpus_created(&self) -> Result<()> {
        let attr = kvm_device_attr {
            group: KVM_DEV_ARM_VGIC_GRP_CTRL,
            attr: u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
            addr: 0,
            flags: 0,
        };
        self.vgic.set_device_attr(&attr).map_err(|e| HvError::new("initialising the vGIC", e))
    }

    fn irq_line(&self, spi: u32) -> Arc<dyn IrqLine> {
        // KVM_IRQ_LINE on arm64: irq_type in bits 24-27, the interrupt ID in bits 0-15
        // (api.rst §4.25); SPIs are IDs 32 and up.
        let irq = (KVM_ARM_IRQ_TYPE_SPI << KVM_ARM_IRQ_TYPE_SHIFT) | (32 + spi);
        Arc::new(KvmIrqLine { vm: self.fd.clone(), irq })
    }

    fn ring_on_write(&self, addr: u64, value: u32, notifier: &Notifier) -> Result<bool> {
        // On Linux a Notifier is an eventfd. KVM takes its own reference to it (eventfd_ctx),
        // so the borrowed descriptor only has to be valid for the call; ManuallyDrop keeps the
        // temporary EventFd from closing it.
        // SAFETY: the descriptor is an open eventfd owned by `notifier`, which outlives the call.
        let event = ManuallyDrop::new(unsafe { EventFd::from_raw_fd(notifier.as_raw_fd()) });
        // A u32 datamatch makes KVM match 4-byte writes of exactly `value` (api.rst §4.59,
        // KVM_IOEVENTFD); other writes to the address still exit as MMIO.
        self.fd
            .register_ioevent(&event, &IoEventAddress::Mmio(addr), value)
            .map_err(|e| HvError::new(format!("KVM_IOEVENTFD at {addr:#x}"), e))?;
        Ok(true)
    }
}

/// One SPI of the in-kernel vGIC.
struct KvmIrqLine {
    vm: Arc<VmFd>,
    irq: u32,
}

impl IrqLine for KvmIrqLine {
    fn set_level(&self, high: bool) {
        if let Err(e) = self.vm.set_irq_line(self.irq, high) {
            log::error!("KVM_IRQ_LINE {:#x} level {high}: {e}", self.irq);
        }
    }
}
