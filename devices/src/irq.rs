//! How a device raises its interrupt without knowing which hypervisor or interrupt controller
//! is behind it.

/// One interrupt line into the guest's interrupt controller.
///
/// Backends implement it (KVM: `KVM_IRQ_LINE` on the in-kernel vGIC; Hypervisor.framework:
/// `hv_gic_set_spi`), so the line is set from any thread.
pub trait IrqLine: Send + Sync {
    /// Drives the line high (`true`) or low (`false`).
    fn set_level(&self, high: bool);

    /// A rising edge: high then low, for edge-triggered interrupts.
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::IrqLine;
    use std::sync::Mutex;

    /// Records every level change, for asserting on interrupt behaviour.
    #[derive(Default)]
    pub struct RecordingLine(pub Mutex<Vec<bool>>);

    impl RecordingLine {
        pub fn rising_edges(&self) -> usize {
            let levels = self.0.lock().unwrap();
            let mut last = false;
            levels
                .iter()
                .filter(|&&l| {
                    let rising = l && !last;
                    last = l;
                    rising
                })
                .count()
        }
    }

    impl IrqLine for RecordingLine {
        fn set_level(&self, high: bool) {
            self.0.lock().unwrap().push(high);
        }
    }
}
