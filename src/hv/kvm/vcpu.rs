//! A KVM vCPU: registers through `KVM_{GET,SET}_ONE_REG`, and `KVM_RUN` turned into plain
//! [`VmExit`]s.

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::kick::{self, KvmKicker};
use super::regs::one_reg_id;
use crate::hv::{HvError, Reg, Result, SystemEvent, Vcpu, VmEntry, VmExit};

/// A vCPU, owned by the thread that created it.
pub struct KvmVcpu {
    fd: VcpuFd,
}

impl KvmVcpu {
    pub(super) fn new(mut fd: VcpuFd) -> Self {
        kick::remember_kvm_run(fd.get_kvm_run());
        KvmVcpu { fd }
    }

    /// Puts the value of an MMIO load where KVM picks it up on the next `KVM_RUN`
    /// (`kvm_run.mmio.data`; KVM applies the width and sign extension, api.rst §5 KVM_EXIT_MMIO).
    fn complete_mmio_read(&mut self, value: u64) {
        let run = self.fd.get_kvm_run();
        // SAFETY: the previous exit was KVM_EXIT_MMIO, so `mmio` is the live union member.
        let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
        let len = (mmio.len as usize).min(8);
        mmio.data[..len].copy_from_slice(&value.to_le_bytes()[..len]);
    }
}

impl Drop for KvmVcpu {
    fn drop(&mut self) {
        kick::forget_kvm_run();
    }
}

/// Converts KVM's exit into hvrun's plain data.
fn to_vm_exit(exit: VcpuExit) -> Option<VmExit> {
    Some(match exit {
        VcpuExit::MmioRead(addr, data) => {
            VmExit::Mmio { addr, size: data.len() as u8, write: None }
        }
        VcpuExit::MmioWrite(addr, data) => {
            let mut bytes = [0u8; 8];
            let len = data.len().min(8);
            bytes[..len].copy_from_slice(&data[..len]);
            VmExit::Mmio { addr, size: len as u8, write: Some(u64::from_le_bytes(bytes)) }
        }
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::System(SystemEvent::PowerOff),
            KVM_SYSTEM_EVENT_RESET => VmExit::System(SystemEvent::Reset),
            KVM_SYSTEM_EVENT_CRASH => VmExit::System(SystemEvent::Crash),
            other => VmExit::Unhandled { reason: "KVM system event", detail: u64::from(other) },
        },
        _ => return None,
    })
}

impl Vcpu for KvmVcpu {
    type Kicker = KvmKicker;

    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<()> {
        let id = one_reg_id(reg).ok_or_else(|| invalid_reg(reg))?;
        self.fd
            .set_one_reg(id, &value.to_le_bytes())
            .map(drop)
            .map_err(|e| HvError::new(format!("setting {reg:?}"), e))
    }

    fn get_reg(&mut self, reg: Reg) -> Result<u64> {
        let id = one_reg_id(reg).ok_or_else(|| invalid_reg(reg))?;
        let mut bytes = [0u8; 8];
        self.fd
            .get_one_reg(id, &mut bytes)
            .map_err(|e| HvError::new(format!("reading {reg:?}"), e))?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn run(&mut self, entry: VmEntry) -> Result<VmExit> {
        if let VmEntry::MmioData(value) = entry {
            self.complete_mmio_read(value);
        }
        match self.fd.run() {
            Ok(exit) => match to_vm_exit(exit) {
                Some(exit) => Ok(exit),
                None => {
                    let reason = self.fd.get_kvm_run().exit_reason;
                    Ok(VmExit::Unhandled { reason: "KVM exit", detail: u64::from(reason) })
                }
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                Ok(VmExit::Kicked)
            }
            Err(e) => Err(HvError::new("KVM_RUN", e)),
        }
    }

    fn kicker(&self) -> KvmKicker {
        KvmKicker::for_this_thread()
    }
}

fn invalid_reg(reg: Reg) -> HvError {
    HvError::new(
        format!("no such register {reg:?}"),
        std::io::Error::from(std::io::ErrorKind::InvalidInput),
    )
}
