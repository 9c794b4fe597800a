//! virtio-console (VIRTIO 1.2 §5.3) with one port: the guest's `hvc0`. What the guest writes to
//! the port's transmit queue goes to a host writer (hvrun's stdout); host input waits in a bounded
//! [`ConsoleInput`] buffer until the guest has opened the port and posted receive buffers.
//!
//! VIRTIO_CONSOLE_F_MULTIPORT is offered, with one port, for its control queue: it is how the
//! guest says the port is open (see [`control`]). A driver that does not accept it still gets a
//! working console, minus that guarantee for input sent before its port is set up. No SIZE and
//! no EMERG_WRITE.

mod control;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{VirtioDevice, VirtioError, VirtioInterrupt};
use crate::notifier::Notifier;

/// Queue 0, `receiveq(port0)`: buffers the driver posts for input (§5.3.2).
pub const RECEIVEQ: u16 = 0;
/// Queue 1, `transmitq(port0)`: output from the guest.
pub const TRANSMITQ: u16 = 1;
/// Queue 2, `control receiveq`: buffers for the device's control messages (MULTIPORT only).
pub const CONTROL_RECEIVEQ: u16 = 2;
/// Queue 3, `control transmitq`: the driver's control messages (MULTIPORT only).
pub const CONTROL_TRANSMITQ: u16 = 3;
/// The port's queues have 256 entries, like the other devices (Linux posts one page-sized
/// buffer per entry); control messages are few and 8 bytes each.
const QUEUE_SIZES: [u16; 4] = [256, 256, 32, 32];

/// VIRTIO_CONSOLE_F_MULTIPORT (§5.3.3): max_nr_ports is valid and the control queues exist.
const VIRTIO_CONSOLE_F_MULTIPORT: u64 = 1 << 1;
/// Config space: `max_nr_ports` is the le32 at offset 4 (§5.3.4).
const MAX_NR_PORTS_OFFSET: usize = 4;

/// How much typed-ahead input is kept while the guest is not reading. Beyond it,
/// [`ConsoleInput::push`] takes nothing and the host side waits, as with a full UART FIFO.
pub const INPUT_CAPACITY: usize = 64 * 1024;

/// Host input on its way to the guest, shared between the device and the host's reader.
#[derive(Default)]
pub struct ConsoleInput {
    pending: Mutex<VecDeque<u8>>,
}

impl ConsoleInput {
    /// Queues as much of `bytes` as fits in [`INPUT_CAPACITY`]; returns how many were taken.
    pub fn push(&self, bytes: &[u8]) -> usize {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let taken = bytes.len().min(INPUT_CAPACITY - pending.len());
        pending.extend(&bytes[..taken]);
        taken
    }

    /// Bytes waiting for the guest.
    pub fn len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The host's end of a running console: queue input, then tell the device it has some.
pub struct ConsoleInputPort {
    input: Arc<ConsoleInput>,
    /// The receive queue's notifier: ringing it makes the device's worker move the input into
    /// the guest's receive buffers, as if the driver had notified the queue.
    receive: Arc<Notifier>,
}

impl ConsoleInputPort {
    /// `input` must be the buffer the console was created with, `receive` the notifier of its
    /// transport's [`RECEIVEQ`] (`MmioTransport::queue_notifiers`).
    pub fn new(input: Arc<ConsoleInput>, receive: Arc<Notifier>) -> Self {
        ConsoleInputPort { input, receive }
    }

    /// Queues what fits of `bytes` and hands it to the guest's receive buffers if it has posted
    /// any. Returns how many bytes were taken (0 when the guest has not read for a while).
    pub fn send(&self, bytes: &[u8]) -> usize {
        let taken = self.input.push(bytes);
        if taken > 0 {
            self.receive.notify();
        }
        taken
    }
}

/// What the device holds between DRIVER_OK and reset.
struct Running {
    mem: GuestMemoryMmap,
    receiveq: Queue,
    transmitq: Queue,
    /// The control queues (receive, transmit) when MULTIPORT was negotiated.
    control_queues: Option<(Queue, Queue)>,
    /// The port's state in the control protocol; without MULTIPORT the port counts as
    /// connected from the start.
    control: control::PortControl,
    interrupt: Arc<VirtioInterrupt>,
}

impl Running {
    fn connected(&self) -> bool {
        self.control_queues.is_none() || self.control.guest_connected()
    }
}

/// The console device.
pub struct VirtioConsole {
    output: Box<dyn Write + Send>,
    input: Arc<ConsoleInput>,
    running: Option<Running>,
    /// Set after the first failed write to the host, so the log says so once.
    output_failed: bool,
}

impl VirtioConsole {
    /// A console whose output goes to `output` and whose input comes from `input`.
    pub fn new(output: Box<dyn Write + Send>, input: Arc<ConsoleInput>) -> Self {
        VirtioConsole { output, input, running: None, output_failed: false }
    }

    /// Moves pending input into the receive buffers the driver posted, one chain at a time, and
    /// stops when either runs out: a buffer is only used when there is something to put in it.
    fn fill_receive_buffers(
        running: &mut Running,
        input: &ConsoleInput,
    ) -> Result<(), VirtioError> {
        if !running.connected() {
            return Ok(()); // kept until the guest opens the port
        }
        let Running { mem, receiveq, interrupt, .. } = running;
        let broken = |source| VirtioError::BrokenQueue { queue: RECEIVEQ, source };
        let mut pending = input.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut completed = 0;
        // At most one queue's worth, like `serve_available`: a guest cannot keep us here.
        for _ in 0..receiveq.size() {
            if pending.is_empty() {
                break;
            }
            let Some(chain) = receiveq.iter(&*mem).map_err(broken)?.next() else { break };
            let head = chain.head_index();
            let written = match chain.writer(&*mem) {
                Ok(mut writer) => {
                    // A short write means the chain is full; what is left stays pending.
                    let (first, second) = pending.as_slices();
                    let mut n = writer.write(first).unwrap_or(0);
                    if n == first.len() {
                        n += writer.write(second).unwrap_or(0);
                    }
                    pending.drain(..n);
                    n
                }
                Err(e) => {
                    log::debug!("virtio-console: dropping a receive buffer outside guest RAM: {e}");
                    0
                }
            };
            // `written` is at most INPUT_CAPACITY, so it fits.
            receiveq.add_used(&*mem, head, written as u32).map_err(broken)?;
            completed += 1;
        }
        if completed > 0 && receiveq.needs_notification(&*mem).map_err(broken)? {
            interrupt.signal_used_queue();
        }
        Ok(())
    }

    /// Acts on the driver's control messages, answers them, and starts input once the port is
    /// open.
    fn serve_control(&mut self) -> Result<(), VirtioError> {
        let Some(running) = self.running.as_mut() else { return Ok(()) };
        let Running { mem, control_queues: Some((_, control_tx)), control, interrupt, .. } =
            &mut *running
        else {
            return Ok(());
        };
        super::serve_available(control_tx, CONTROL_TRANSMITQ, mem, interrupt, |chain| {
            let mut bytes = [0u8; control::MESSAGE_SIZE];
            let message = chain
                .reader(mem)
                .ok()
                .and_then(|mut reader| reader.read_exact(&mut bytes).ok())
                .and_then(|()| control::ControlMessage::parse(&bytes));
            match message {
                Some(message) => control.on_guest_message(message),
                None => log::debug!("virtio-console: malformed control message dropped"),
            }
            0
        })?;
        Self::send_control_messages(running)?;
        Self::fill_receive_buffers(running, &self.input)
    }

    /// Moves queued control messages into the control buffers the driver posted.
    fn send_control_messages(running: &mut Running) -> Result<(), VirtioError> {
        let Running { mem, control_queues: Some((control_rx, _)), control, interrupt, .. } =
            running
        else {
            return Ok(());
        };
        let broken = |source| VirtioError::BrokenQueue { queue: CONTROL_RECEIVEQ, source };
        let mut completed = 0;
        for _ in 0..control_rx.size() {
            let Some(message) = control.next_outgoing() else { break };
            let Some(chain) = control_rx.iter(&*mem).map_err(broken)?.next() else {
                control.unsend(message); // sent when the driver posts a buffer
                break;
            };
            let head = chain.head_index();
            let written = match chain.writer(&*mem) {
                Ok(mut writer) if writer.available_bytes() >= control::MESSAGE_SIZE => {
                    writer.write_all(&message.to_bytes()).map_or(0, |()| control::MESSAGE_SIZE)
                }
                _ => {
                    log::debug!(
                        "virtio-console: unusable control buffer; message {message:?} kept"
                    );
                    control.unsend(message);
                    0
                }
            };
            control_rx.add_used(&*mem, head, written as u32).map_err(broken)?;
            completed += 1;
        }
        if completed > 0 && control_rx.needs_notification(&*mem).map_err(broken)? {
            interrupt.signal_used_queue();
        }
        Ok(())
    }

    /// Copies what the guest transmitted to the host writer.
    fn drain_transmit_queue(&mut self) -> Result<(), VirtioError> {
        let Some(Running { mem, transmitq, interrupt, .. }) = self.running.as_mut() else {
            return Ok(());
        };
        let output = &mut self.output;
        let output_failed = &mut self.output_failed;
        super::serve_available(transmitq, TRANSMITQ, mem, interrupt, |chain| {
            let copied = chain
                .reader(mem)
                .map_err(|e| io::Error::other(e.to_string()))
                .and_then(|mut reader| io::copy(&mut reader, output));
            if let Err(e) = copied.and_then(|_| output.flush()) {
                if !*output_failed {
                    log::warn!("virtio-console: host output failed, guest output is lost: {e}");
                    *output_failed = true;
                }
            }
            0 // the device writes nothing into transmit buffers
        })
    }
}

impl VirtioDevice for VirtioConsole {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_CONSOLE_F_MULTIPORT
    }

    /// `max_nr_ports` = 1; `cols`, `rows` (no SIZE) and `emerg_wr` (no EMERG_WRITE) read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 12];
        config[MAX_NR_PORTS_OFFSET..MAX_NR_PORTS_OFFSET + 4].copy_from_slice(&1u32.to_le_bytes());
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(config.len());
        let end = start.saturating_add(data.len()).min(config.len());
        data[..end - start].copy_from_slice(&config[start..end]);
    }

    fn activate(
        &mut self,
        features: u64,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), VirtioError> {
        let got = queues.len();
        let Ok::<[Queue; 4], _>([receiveq, transmitq, control_rx, control_tx]) = queues.try_into()
        else {
            return Err(VirtioError::QueueCount { expected: 4, got });
        };
        let multiport = features & VIRTIO_CONSOLE_F_MULTIPORT != 0;
        let mut required = vec![(RECEIVEQ, &receiveq), (TRANSMITQ, &transmitq)];
        if multiport {
            required.extend([(CONTROL_RECEIVEQ, &control_rx), (CONTROL_TRANSMITQ, &control_tx)]);
        }
        if let Some((index, _)) = required.iter().find(|(_, queue)| !queue.ready()) {
            return Err(VirtioError::QueueNotReady(*index));
        }
        let mut running = Running {
            mem,
            receiveq,
            transmitq,
            control_queues: multiport.then_some((control_rx, control_tx)),
            control: control::PortControl::default(),
            interrupt,
        };
        // Without MULTIPORT, input typed before the driver came up goes out at once.
        Self::fill_receive_buffers(&mut running, &self.input)?;
        self.running = Some(running);
        Ok(())
    }

    fn process_queue(&mut self, index: u16) -> Result<(), VirtioError> {
        match index {
            RECEIVEQ => match self.running.as_mut() {
                Some(running) => Self::fill_receive_buffers(running, &self.input),
                None => Ok(()),
            },
            TRANSMITQ => self.drain_transmit_queue(),
            CONTROL_RECEIVEQ => match self.running.as_mut() {
                Some(running) => Self::send_control_messages(running),
                None => Ok(()),
            },
            CONTROL_TRANSMITQ => self.serve_control(),
            _ => Ok(()),
        }
    }

    /// Input still pending stays queued for the next driver: it is the user's typing, not
    /// device state.
    fn reset(&mut self) {
        self.running = None;
    }
}

#[cfg(test)]
mod tests;
