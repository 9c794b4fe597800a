//! virtio-console driven through the real virtio-mmio transport: output, input before and after
//! the driver is up, input larger than the posted buffers, and hostile receive buffers.

use std::io::Write;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::bus::BusDevice;
use crate::irq::test_support::RecordingLine;
use crate::virtio::test_support::*;
use crate::virtio::MmioTransport;

/// Host output the test can read back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct Rig {
    transport: Arc<Mutex<MmioTransport>>,
    input: Arc<ConsoleInput>,
    output: Captured,
    line: Arc<RecordingLine>,
}

fn rig(mem: &Mem) -> Rig {
    let input = Arc::new(ConsoleInput::default());
    let output = Captured::default();
    let console = VirtioConsole::new(Box::new(output.clone()), input.clone());
    let line = Arc::new(RecordingLine::default());
    let transport = MmioTransport::new(Box::new(console), mem.clone(), line.clone()).unwrap();
    Rig { transport: Arc::new(Mutex::new(transport)), input, output, line }
}

impl Rig {
    fn start(&self, rx: &TestRing<'_>, tx: &TestRing<'_>) {
        let status = start(&mut *self.transport.lock().unwrap(), 0, &[rx, tx]);
        assert_eq!(status & 0x40, 0, "DEVICE_NEEDS_RESET after start");
    }

    fn notify(&self, queue: u16) {
        let mut transport = self.transport.lock().unwrap();
        set_reg(&mut *transport, VIRTIO_MMIO_QUEUE_NOTIFY, queue.into());
        transport.serve_notified_queues();
    }

    /// What the console's worker would do now: serve every rung queue.
    fn serve(&self) {
        self.transport.lock().unwrap().serve_notified_queues();
    }

    /// Host input through the console's input port, then what the worker does about it.
    fn send_input(&self, bytes: &[u8]) -> usize {
        let taken = self.port().send(bytes);
        self.serve();
        taken
    }

    fn port(&self) -> ConsoleInputPort {
        let transport = self.transport.lock().unwrap();
        ConsoleInputPort::new(
            self.input.clone(),
            transport.queue_notifiers()[RECEIVEQ as usize].clone(),
        )
    }
}

/// Receive buffer `n` (4 KiB apart) in guest RAM.
fn rx_buffer(n: u64) -> u64 {
    BUFFERS + n * 0x1000
}

fn guest_bytes(mem: &Mem, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

/// Posts `count` receive buffers of `len` bytes, descriptors 0.., as one chain each.
fn post_rx(rx: &TestRing<'_>, first: u16, count: u16, len: u32) {
    for i in first..first + count {
        rx.set_desc(i, rx_buffer(u64::from(i)), len, WRITE, 0);
        rx.publish(i);
    }
}

#[test]
fn describes_itself_as_a_console_with_two_queues() {
    let mem = guest_memory();
    let rig = rig(&mem);
    let mut t = rig.transport.lock().unwrap();
    assert_eq!(reg(&mut *t, VIRTIO_MMIO_DEVICE_ID), 3);
    for q in 0..2 {
        set_reg(&mut *t, VIRTIO_MMIO_QUEUE_SEL, q);
        assert_eq!(reg(&mut *t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
    }
    for q in 2..4 {
        set_reg(&mut *t, VIRTIO_MMIO_QUEUE_SEL, q);
        assert_eq!(reg(&mut *t, VIRTIO_MMIO_QUEUE_NUM_MAX), 32, "control queue {q}");
    }
    set_reg(&mut *t, VIRTIO_MMIO_QUEUE_SEL, 4);
    assert_eq!(reg(&mut *t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0, "one port: no queue 4");
    assert_eq!(reg(&mut *t, VIRTIO_MMIO_DEVICE_FEATURES), 1 << 1, "MULTIPORT only");
    assert_eq!(t.read(0x100, 4), 0, "cols and rows: no SIZE");
    assert_eq!(t.read(0x104, 4), 1, "max_nr_ports");
    assert_eq!(t.read(0x108, 4), 0, "emerg_wr: no EMERG_WRITE");
    assert_eq!(t.read(0x10c, 4), 0, "past the end");
}

#[test]
fn transmitted_chains_reach_the_host_in_order() {
    let mem = guest_memory();
    let rig = rig(&mem);
    let (rx, tx) = (ring_at(&mem, 0, 16), ring_at(&mem, 0x4000, 16));
    rig.start(&rx, &tx);
    mem.write_slice(b"hello, ", GuestAddress(BUFFERS)).unwrap();
    mem.write_slice(b"world\n", GuestAddress(BUFFERS + 0x100)).unwrap();
    mem.write_slice(b"again\n", GuestAddress(BUFFERS + 0x200)).unwrap();
    // One chain of two descriptors, then a second chain.
    tx.set_desc(0, BUFFERS, 7, NEXT, 1);
    tx.set_desc(1, BUFFERS + 0x100, 6, 0, 0);
    tx.set_desc(2, BUFFERS + 0x200, 6, 0, 0);
    tx.publish(0);
    tx.publish(2);
    rig.notify(TRANSMITQ);
    assert_eq!(rig.output.text(), "hello, world\nagain\n");
    assert_eq!(tx.used(), vec![(0, 0), (2, 0)], "nothing written into transmit buffers");
    assert_eq!(rig.line.0.lock().unwrap().last(), Some(&true), "used buffers are signalled");
}

#[test]
fn input_typed_before_the_driver_is_delivered_once_buffers_exist() {
    let mem = guest_memory();
    let rig = rig(&mem);
    assert_eq!(rig.send_input(b"early"), 5, "kept while the device is not running");
    let (rx, tx) = (ring_at(&mem, 0, 16), ring_at(&mem, 0x4000, 16));
    post_rx(&rx, 0, 1, 64);
    rig.start(&rx, &tx);
    assert_eq!(rx.used(), vec![(0, 5)]);
    assert_eq!(guest_bytes(&mem, rx_buffer(0), 5), b"early");
    assert!(rig.input.is_empty());
}

#[test]
fn input_fills_buffers_in_order_and_the_rest_waits_for_more() {
    let mem = guest_memory();
    let rig = rig(&mem);
    let (rx, tx) = (ring_at(&mem, 0, 16), ring_at(&mem, 0x4000, 16));
    rig.start(&rx, &tx);
    post_rx(&rx, 0, 2, 4);
    rig.notify(RECEIVEQ);
    assert!(rx.used().is_empty(), "no input, so no buffer is used up");

    assert_eq!(rig.send_input(b"0123456789"), 10);
    assert_eq!(rx.used(), vec![(0, 4), (1, 4)]);
    assert_eq!(guest_bytes(&mem, rx_buffer(0), 4), b"0123");
    assert_eq!(guest_bytes(&mem, rx_buffer(1), 4), b"4567");
    assert_eq!(rig.input.len(), 2);

    post_rx(&rx, 2, 1, 4);
    rig.notify(RECEIVEQ);
    assert_eq!(rx.used().last(), Some(&(2, 2)));
    assert_eq!(guest_bytes(&mem, rx_buffer(2), 2), b"89");
    assert!(rig.input.is_empty());
}

#[test]
fn input_beyond_capacity_is_refused_not_dropped() {
    let input = ConsoleInput::default();
    let big = vec![b'x'; INPUT_CAPACITY + 10];
    assert_eq!(input.push(&big), INPUT_CAPACITY);
    assert_eq!(input.push(b"more"), 0, "full: the host side waits and retries");
    assert_eq!(input.len(), INPUT_CAPACITY);
}

#[test]
fn unusable_receive_buffers_are_returned_empty_and_input_survives() {
    let mem = guest_memory();
    let rig = rig(&mem);
    let (rx, tx) = (ring_at(&mem, 0, 16), ring_at(&mem, 0x4000, 16));
    rig.start(&rx, &tx);
    rx.set_desc(0, 0x1000, 64, WRITE, 0); // below guest RAM
    rx.set_desc(1, rx_buffer(1), 64, 0, 0); // read-only: the device cannot write it
    rx.publish(0);
    rx.publish(1);
    assert_eq!(rig.send_input(b"kept"), 4);
    assert_eq!(rx.used(), vec![(0, 0), (1, 0)]);
    assert_eq!(rig.input.len(), 4, "nothing was lost in the bad buffers");
    post_rx(&rx, 2, 1, 64);
    rig.notify(RECEIVEQ);
    assert_eq!(rx.used().last(), Some(&(2, 4)));
    assert_eq!(guest_bytes(&mem, rx_buffer(2), 4), b"kept");
}

#[test]
fn a_reset_stops_delivery_but_keeps_pending_input() {
    let mem = guest_memory();
    let rig = rig(&mem);
    let (rx, tx) = (ring_at(&mem, 0, 16), ring_at(&mem, 0x4000, 16));
    rig.start(&rx, &tx);
    set_reg(&mut *rig.transport.lock().unwrap(), VIRTIO_MMIO_STATUS, 0);
    assert_eq!(rig.send_input(b"typed"), 5);
    assert_eq!(rig.input.len(), 5);
    let (rx, tx) = (ring_at(&mem, 0x8000, 16), ring_at(&mem, 0xc000, 16));
    post_rx(&rx, 0, 1, 64);
    rig.start(&rx, &tx);
    assert_eq!(rx.used(), vec![(0, 5)]);
}

/// The driver side of the control queues, for the MULTIPORT tests.
struct ControlRings<'a> {
    rx: TestRing<'a>,
    tx: TestRing<'a>,
    sent: u16,
}

const CONTROL_IN: u64 = BUFFERS + 0x4_0000;
const CONTROL_OUT: u64 = BUFFERS + 0x5_0000;

impl ControlRings<'_> {
    /// Posts `count` 8-byte control receive buffers.
    fn post(&self, count: u16) {
        for i in 0..count {
            self.rx.set_desc(i, CONTROL_IN + u64::from(i) * 8, 8, WRITE, 0);
            self.rx.publish(i);
        }
    }

    /// The messages the device put in the control receive buffers so far.
    fn received(&self, mem: &Mem) -> Vec<(u32, u16, u16)> {
        self.rx
            .used()
            .iter()
            .filter(|(_, len)| *len == 8)
            .map(|&(id, _)| {
                let b = guest_bytes(mem, CONTROL_IN + u64::from(id) * 8, 8);
                let m = control::ControlMessage::parse(&b).unwrap();
                (m.id, m.event, m.value)
            })
            .collect()
    }

    /// The driver sends one control message.
    fn send(&mut self, mem: &Mem, rig: &Rig, id: u32, event: u16, value: u16) {
        let m = control::ControlMessage { id, event, value };
        let addr = CONTROL_OUT + u64::from(self.sent) * 8;
        mem.write_slice(&m.to_bytes(), GuestAddress(addr)).unwrap();
        self.tx.set_desc(self.sent, addr, 8, 0, 0);
        self.tx.publish(self.sent);
        self.sent += 1;
        rig.notify(CONTROL_TRANSMITQ);
    }
}

fn start_multiport<'m>(mem: &'m Mem, rig: &Rig) -> (TestRing<'m>, TestRing<'m>, ControlRings<'m>) {
    let (rx, tx) = (ring_at(mem, 0, 16), ring_at(mem, 0x4000, 16));
    let control =
        ControlRings { rx: ring_at(mem, 0x8000, 16), tx: ring_at(mem, 0xc000, 16), sent: 0 };
    let status =
        start(&mut *rig.transport.lock().unwrap(), 1 << 1, &[&rx, &tx, &control.rx, &control.tx]);
    assert_eq!(status & 0x40, 0, "DEVICE_NEEDS_RESET after start");
    (rx, tx, control)
}

#[test]
fn with_multiport_input_waits_for_the_guest_to_open_the_port() {
    use control::event::*;
    let mem = guest_memory();
    let rig = rig(&mem);
    let (rx, _tx, mut control) = start_multiport(&mem, &rig);
    control.post(8);
    rig.notify(CONTROL_RECEIVEQ);

    // Linux's probe: DEVICE_READY, then (after PORT_ADD) it posts the port's receive buffers
    // and says PORT_READY. Input must not go out yet: the port is not connected.
    control.send(&mem, &rig, 0, DEVICE_READY, 1);
    assert_eq!(control.received(&mem), vec![(0, PORT_ADD, 1)]);
    assert_eq!(rig.send_input(b"early"), 5);
    post_rx(&rx, 0, 2, 64);
    rig.notify(RECEIVEQ);
    control.send(&mem, &rig, 0, PORT_READY, 1);
    assert_eq!(
        control.received(&mem),
        vec![(0, PORT_ADD, 1), (0, CONSOLE_PORT, 1), (0, PORT_OPEN, 1)]
    );
    assert!(rx.used().is_empty(), "input before the guest's PORT_OPEN would be discarded");

    control.send(&mem, &rig, 0, PORT_OPEN, 1);
    assert_eq!(rx.used(), vec![(0, 5)]);
    assert_eq!(guest_bytes(&mem, rx_buffer(0), 5), b"early");
    assert_eq!(rig.send_input(b"later"), 5);
    assert_eq!(rx.used(), vec![(0, 5), (1, 5)]);
}

#[test]
fn control_messages_wait_for_control_buffers_and_bad_ones_are_dropped() {
    use control::event::*;
    let mem = guest_memory();
    let rig = rig(&mem);
    let (_rx, _tx, mut control) = start_multiport(&mem, &rig);
    control.send(&mem, &rig, 0, DEVICE_READY, 1);
    assert!(control.received(&mem).is_empty(), "no control buffer posted yet");
    control.post(1);
    rig.notify(CONTROL_RECEIVEQ);
    assert_eq!(control.received(&mem), vec![(0, PORT_ADD, 1)]);

    // A 4-byte message and a message from a buffer outside RAM: dropped, device still fine.
    control.tx.set_desc(10, CONTROL_OUT, 4, 0, 0);
    control.tx.publish(10);
    control.tx.set_desc(11, 0x10, 8, 0, 0);
    control.tx.publish(11);
    rig.notify(CONTROL_TRANSMITQ);
    assert_eq!(control.tx.used().len(), 3);
    let status = reg(&mut *rig.transport.lock().unwrap(), VIRTIO_MMIO_STATUS);
    assert_eq!(status & 0x40, 0, "still running");
}

#[test]
fn activation_needs_both_queues_ready() {
    let mem = guest_memory();
    let rig = rig(&mem);
    let rx = ring_at(&mem, 0, 16);
    let mut t = rig.transport.lock().unwrap();
    let status = negotiate(&mut *t, 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1);
    setup_queue(&mut *t, 0, &rx);
    set_reg(&mut *t, VIRTIO_MMIO_STATUS, status | 4); // DRIVER_OK with transmitq missing
    assert_ne!(reg(&mut *t, VIRTIO_MMIO_STATUS) & 0x40, 0, "DEVICE_NEEDS_RESET");
}
