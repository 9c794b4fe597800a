//! The 16550A UART the guest uses as `ttyS0` and for `earlycon`: vm-superio's register model on
//! the MMIO bus, its output going to a writer (hvrun's stdout), its interrupt to an [`IrqLine`].

use std::io::Write;
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};

use crate::bus::BusDevice;
use crate::irq::IrqLine;

/// The 16550 has eight byte-wide registers (with DLAB banking); no register shift.
const REGISTER_COUNT: u64 = 8;

/// vm-superio asks for an interrupt whenever the UART's interrupt condition changes; we deliver it
/// as a rising edge, which is why the FDT marks the UART's SPI edge-triggered.
pub struct EdgeTrigger(Arc<dyn IrqLine>);

impl Trigger for EdgeTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.pulse();
        Ok(())
    }
}

/// A 16550A UART on the MMIO bus.
pub struct Uart16550 {
    serial: Serial<EdgeTrigger, NoEvents, Box<dyn Write + Send>>,
    output_failed: bool,
}

impl Uart16550 {
    /// A UART whose transmitted bytes go to `out` and whose interrupt is `irq`.
    pub fn new(irq: Arc<dyn IrqLine>, out: Box<dyn Write + Send>) -> Self {
        Uart16550 { serial: Serial::new(EdgeTrigger(irq), out), output_failed: false }
    }

    /// Offers host input to the guest; returns how many bytes fitted in the receive FIFO
    /// (0 when it is full: retry once the guest has read some).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for Uart16550 {
    fn read(&mut self, offset: u64, _size: u8) -> u64 {
        if offset < REGISTER_COUNT {
            u64::from(self.serial.read(offset as u8))
        } else {
            0
        }
    }

    fn write(&mut self, offset: u64, _size: u8, value: u64) {
        if offset >= REGISTER_COUNT {
            return;
        }
        // A failed host write (stdout closed) loses the byte; say so once, keep the guest running.
        if let Err(e) = self.serial.write(offset as u8, value as u8) {
            if !self.output_failed {
                log::warn!("serial console output failed, guest output is being dropped: {e}");
                self.output_failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::test_support::RecordingLine;
    use std::sync::Mutex;

    /// A writer tests can read back.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;
    const LSR_DATA_READY: u64 = 1;

    #[test]
    fn transmitted_bytes_reach_the_writer() {
        let out = SharedBuf::default();
        let irq = Arc::new(RecordingLine::default());
        let mut uart = Uart16550::new(irq.clone(), Box::new(out.clone()));
        for b in b"hello\n" {
            uart.write(THR, 1, u64::from(*b));
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hello\n");
    }

    #[test]
    fn input_raises_the_interrupt_when_enabled_and_is_read_back() {
        let irq = Arc::new(RecordingLine::default());
        let mut uart = Uart16550::new(irq.clone(), Box::new(std::io::sink()));
        uart.write(IER, 1, 1); // enable the received-data interrupt
        let before = irq.rising_edges();
        assert_eq!(uart.enqueue_input(b"ab"), 2);
        assert!(irq.rising_edges() > before, "input must interrupt the guest");
        assert_eq!(uart.read(LSR, 1) & LSR_DATA_READY, 1);
        assert_eq!(uart.read(THR, 1), u64::from(b'a'));
        assert_eq!(uart.read(THR, 1), u64::from(b'b'));
        assert_eq!(uart.read(LSR, 1) & LSR_DATA_READY, 0);
    }

    #[test]
    fn a_full_fifo_accepts_nothing_more() {
        let irq = Arc::new(RecordingLine::default());
        let mut uart = Uart16550::new(irq, Box::new(std::io::sink()));
        let accepted = uart.enqueue_input(&[b'x'; 100]);
        assert!(accepted > 0 && accepted < 100);
        assert_eq!(uart.enqueue_input(b"y"), 0);
        // Registers beyond the 16550's eight read as zero and ignore writes.
        assert_eq!(uart.read(0x10, 1), 0);
        uart.write(0x10, 1, 0xff);
    }
}
