//! The virtio-console control protocol for hvrun's one port (VIRTIO 1.2 §5.3.6.2), as plain
//! state: messages the guest sent in, messages for the guest out.
//!
//! Why hvrun speaks it although it has one port: with VIRTIO_CONSOLE_F_MULTIPORT the guest
//! *tells* the device when its console port is connected (PORT_OPEN), and only then may input
//! be delivered. Linux posts the port's receive buffers before it marks the port connected and
//! discards data that arrives in between (drivers/char/virtio_console.c, `in_intr`), so input
//! typed before that moment — or piped in at start — would be lost without it. QEMU's
//! virtio-serial follows the same sequence:
//!
//! ```text
//! guest: DEVICE_READY(1)  → device: PORT_ADD(port 0)
//! guest: PORT_READY(0, 1) → device: CONSOLE_PORT(0, 1), PORT_OPEN(0, 1)  (host side is open)
//! guest: PORT_OPEN(0, 1)  → input flows
//! ```

use std::collections::VecDeque;

/// `struct virtio_console_control` is 8 bytes: le32 id, le16 event, le16 value.
pub const MESSAGE_SIZE: usize = 8;

/// Control events (VIRTIO 1.2 §5.3.6.2, `VIRTIO_CONSOLE_*`); all listed, though hvrun acts on
/// a few and ignores the rest.
#[allow(dead_code)]
pub mod event {
    pub const DEVICE_READY: u16 = 0;
    pub const PORT_ADD: u16 = 1;
    pub const PORT_REMOVE: u16 = 2;
    pub const PORT_READY: u16 = 3;
    pub const CONSOLE_PORT: u16 = 4;
    pub const RESIZE: u16 = 5;
    pub const PORT_OPEN: u16 = 6;
    pub const PORT_NAME: u16 = 7;
}

/// The only port hvrun has.
pub const CONSOLE_PORT_ID: u32 = 0;

/// One control message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlMessage {
    pub id: u32,
    pub event: u16,
    pub value: u16,
}

impl ControlMessage {
    /// Decodes a message; `None` if `bytes` is too short to hold one.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; MESSAGE_SIZE] = bytes.get(..MESSAGE_SIZE)?.try_into().ok()?;
        Some(ControlMessage {
            id: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            event: u16::from_le_bytes([bytes[4], bytes[5]]),
            value: u16::from_le_bytes([bytes[6], bytes[7]]),
        })
    }

    /// Encodes the message as the guest reads it.
    pub fn to_bytes(self) -> [u8; MESSAGE_SIZE] {
        let mut out = [0; MESSAGE_SIZE];
        out[..4].copy_from_slice(&self.id.to_le_bytes());
        out[4..6].copy_from_slice(&self.event.to_le_bytes());
        out[6..].copy_from_slice(&self.value.to_le_bytes());
        out
    }

    fn to_port(event: u16, value: u16) -> Self {
        ControlMessage { id: CONSOLE_PORT_ID, event, value }
    }
}

/// The port's connection state and the messages waiting for the guest's control buffers.
#[derive(Debug, Default)]
pub struct PortControl {
    guest_connected: bool,
    outbox: VecDeque<ControlMessage>,
}

impl PortControl {
    /// Whether the guest has the port open, so input may be delivered.
    pub fn guest_connected(&self) -> bool {
        self.guest_connected
    }

    /// Acts on one message from the guest. Messages for other ports or of unknown kinds are
    /// ignored (a driver cannot make the device do anything it did not offer).
    pub fn on_guest_message(&mut self, msg: ControlMessage) {
        use event::*;
        match msg.event {
            DEVICE_READY if msg.value == 1 => {
                self.outbox.push_back(ControlMessage::to_port(PORT_ADD, 1));
            }
            DEVICE_READY => log::warn!("virtio-console: the guest driver failed to set up"),
            _ if msg.id != CONSOLE_PORT_ID => {
                log::debug!(
                    "virtio-console: control message {msg:?} for a port that does not exist"
                )
            }
            PORT_READY if msg.value == 1 => {
                self.outbox.push_back(ControlMessage::to_port(CONSOLE_PORT, 1));
                self.outbox.push_back(ControlMessage::to_port(PORT_OPEN, 1));
            }
            PORT_READY => log::warn!("virtio-console: the guest could not set up its console port"),
            PORT_OPEN => self.guest_connected = msg.value == 1,
            _ => log::debug!("virtio-console: ignoring control message {msg:?}"),
        }
    }

    /// The next message for the guest, if any.
    pub fn next_outgoing(&mut self) -> Option<ControlMessage> {
        self.outbox.pop_front()
    }

    /// Puts back a message that found no buffer to go into, at the front.
    pub fn unsend(&mut self, msg: ControlMessage) {
        self.outbox.push_front(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::event::*;
    use super::*;

    fn msg(id: u32, event: u16, value: u16) -> ControlMessage {
        ControlMessage { id, event, value }
    }

    fn drain(c: &mut PortControl) -> Vec<ControlMessage> {
        std::iter::from_fn(|| c.next_outgoing()).collect()
    }

    #[test]
    fn messages_round_trip_little_endian() {
        let m = msg(0x0102_0304, RESIZE, 0xa0b0);
        assert_eq!(m.to_bytes(), [4, 3, 2, 1, 5, 0, 0xb0, 0xa0]);
        assert_eq!(ControlMessage::parse(&m.to_bytes()), Some(m));
        assert_eq!(ControlMessage::parse(&[0; 7]), None, "short");
        assert_eq!(
            ControlMessage::parse(&[0; 12]),
            Some(msg(0, DEVICE_READY, 0)),
            "trailing bytes"
        );
    }

    #[test]
    fn the_linux_sequence_connects_the_port_only_at_the_guests_port_open() {
        let mut c = PortControl::default();
        c.on_guest_message(msg(0, DEVICE_READY, 1));
        assert_eq!(drain(&mut c), vec![msg(0, PORT_ADD, 1)]);
        c.on_guest_message(msg(0, PORT_READY, 1));
        assert_eq!(drain(&mut c), vec![msg(0, CONSOLE_PORT, 1), msg(0, PORT_OPEN, 1)]);
        assert!(!c.guest_connected(), "not before the guest says so");
        c.on_guest_message(msg(0, PORT_OPEN, 1));
        assert!(c.guest_connected());
        c.on_guest_message(msg(0, PORT_OPEN, 0));
        assert!(!c.guest_connected(), "closed again");
    }

    #[test]
    fn failures_other_ports_and_unknown_events_change_nothing() {
        let mut c = PortControl::default();
        c.on_guest_message(msg(0, DEVICE_READY, 0));
        c.on_guest_message(msg(0, PORT_READY, 0));
        c.on_guest_message(msg(7, PORT_READY, 1));
        c.on_guest_message(msg(7, PORT_OPEN, 1));
        c.on_guest_message(msg(0, 0xffff, 1));
        c.on_guest_message(msg(0, PORT_NAME, 1));
        assert!(drain(&mut c).is_empty());
        assert!(!c.guest_connected());
    }

    #[test]
    fn an_unsent_message_keeps_its_place() {
        let mut c = PortControl::default();
        c.on_guest_message(msg(0, PORT_READY, 1));
        let first = c.next_outgoing().unwrap();
        c.unsend(first);
        assert_eq!(drain(&mut c), vec![msg(0, CONSOLE_PORT, 1), msg(0, PORT_OPEN, 1)]);
    }
}
