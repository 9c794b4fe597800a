//! A VZ VM on its own serial dispatch queue, and the small API hvrun's control seam drives it
//! with: start, pause, resume, ask the guest to stop, force stop, balloon target, state.
//!
//! Threads: `VZVirtualMachine` may only be touched on the queue it was created with (the
//! framework asserts it), and its completion handlers and delegate calls arrive there. Every
//! method of [`VzHandle`] hops onto that queue; callers are hvrun's main thread or a control
//! thread, never the VM queue itself (waiting there for a completion would deadlock).

use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use block2::RcBlock;
use dispatch2::{DispatchQueue, DispatchRetained};
use objc2::rc::Retained;
use objc2::runtime::{AnyObject, ProtocolObject};
use objc2::{define_class, msg_send, AnyThread, DefinedClass};
use objc2_foundation::{NSError, NSObject, NSObjectProtocol, NSProgress};
use objc2_virtualization::{
    VZMacOSInstaller, VZNetworkDevice, VZVirtioTraditionalMemoryBalloonDevice, VZVirtualMachine,
    VZVirtualMachineConfiguration, VZVirtualMachineDelegate, VZVirtualMachineStartOptions,
};

use super::ns::{error_from_ptr, file_url, framework_error};
use crate::control::VmControl;
use crate::vz::errors::FrameworkError;
use crate::vz::state::{self, outcome_of, VzAction, VzControlError, VzState, VzStop};

/// How long a control caller waits for the framework's completion handler.
const ANSWER_TIME: Duration = Duration::from_secs(120);

/// A value only ever used on the VM's serial queue (or, before the VM exists, on the thread
/// that made it), or an object Apple documents as thread-safe (`NSProgress`), so moving it
/// between threads is sound even though objc2 cannot know that.
struct OnQueue<T>(T);

// SAFETY: see the type: every use of a queue-bound object happens inside a block on the VM's
// serial queue, one at a time; the thread-safe ones may be used anywhere. Retain/release
// (cloning or dropping a Retained) is thread-safe.
unsafe impl<T> Send for OnQueue<T> {}
// SAFETY: as above; shared references are only dereferenced on the VM's queue.
unsafe impl<T> Sync for OnQueue<T> {}

impl<T> OnQueue<T> {
    /// Through a method, so closures capture the whole wrapper, never the bare field.
    fn get(&self) -> &T {
        &self.0
    }

    fn put(&mut self, value: T) {
        self.0 = value;
    }
}

/// A running `VZMacOSInstaller`: its completion, and its progress (read and cancelled from the
/// main thread: `NSProgress` is thread-safe, Apple's documentation says so).
pub struct Installation {
    pub done: Completion,
    progress: OnQueue<Retained<NSProgress>>,
    /// Kept alive until the install ends.
    _installer: OnQueue<Retained<VZMacOSInstaller>>,
}

impl Installation {
    /// How much of the install is done, 0 to 1.
    pub fn fraction(&self) -> f64 {
        self.progress.get().fractionCompleted()
    }

    /// Cancels the install; its completion then reports VZErrorOperationCancelled.
    pub fn cancel(&self) {
        self.progress.get().cancel();
    }
}

define_class!(
    // SAFETY: NSObject has no subclassing requirements, and StopDelegate does not implement Drop.
    #[unsafe(super(NSObject))]
    #[ivars = Arc<VmControl>]
    struct StopDelegate;

    unsafe impl NSObjectProtocol for StopDelegate {}

    // Called on the VM's queue.
    unsafe impl VZVirtualMachineDelegate for StopDelegate {
        /// The guest powered off (VZ reports a reset the same way).
        #[unsafe(method(guestDidStopVirtualMachine:))]
        fn guest_did_stop(&self, _vm: &VZVirtualMachine) {
            self.ivars().request_stop(outcome_of(&VzStop::GuestStopped));
        }

        /// The VM stopped because of an error (a device or the framework failed).
        #[unsafe(method(virtualMachine:didStopWithError:))]
        fn did_stop_with_error(&self, _vm: &VZVirtualMachine, error: &NSError) {
            self.ivars().request_stop(outcome_of(&VzStop::Error(framework_error(error))));
        }

        /// A network attachment went away (e.g. the host's network changed); the guest keeps
        /// running with its link down, so this is worth a warning, not a stop.
        #[unsafe(method(virtualMachine:networkDevice:attachmentWasDisconnectedWithError:))]
        fn network_disconnected(&self, _vm: &VZVirtualMachine, _dev: &VZNetworkDevice, error: &NSError) {
            log::warn!("a guest network attachment was disconnected: {}", framework_error(error));
        }
    }
);

impl StopDelegate {
    fn new(stop: Arc<VmControl>) -> Retained<StopDelegate> {
        let this = StopDelegate::alloc().set_ivars(stop);
        // SAFETY: NSObject's designated initialiser, on a freshly allocated object.
        unsafe { msg_send![super(this), init] }
    }
}

struct Inner {
    queue: DispatchRetained<DispatchQueue>,
    vm: OnQueue<Retained<VZVirtualMachine>>,
    /// VZ holds its delegate weakly: this keeps it alive as long as the VM.
    _delegate: OnQueue<Retained<StopDelegate>>,
    /// The configured memory, the balloon's ceiling.
    mem_bytes: u64,
}

/// A handle to a VZ VM; cheap to clone, usable from any thread but the VM's queue — the API
/// the control seam (pause, resume, stop, balloon, state) is wired to.
#[derive(Clone)]
pub struct VzHandle {
    inner: Arc<Inner>,
}

// A control thread must be able to hold one.
const _: fn() = || {
    fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<VzHandle>();
};

/// A completion handler's result, waited for by the caller.
pub type Completion = mpsc::Receiver<Option<FrameworkError>>;

impl VzHandle {
    /// Creates the VM for `config` on a new serial queue; its stops are reported to `stop`.
    /// Called on the main thread; the VM is made on its queue.
    pub fn create(
        config: &VZVirtualMachineConfiguration,
        stop: Arc<VmControl>,
        mem_bytes: u64,
    ) -> VzHandle {
        // No attribute: a serial queue (dispatch_queue_create(label, DISPATCH_QUEUE_SERIAL)).
        let queue = DispatchQueue::new("org.hvrun.vz", None);
        let delegate = OnQueue(StopDelegate::new(stop));
        let config = OnQueue(config);
        let mut made: OnQueue<Option<Retained<VZVirtualMachine>>> = OnQueue(None);
        let target = &queue;
        queue.exec_sync(|| {
            // SAFETY: the configuration was validated by the caller; the queue is serial and is
            // the one every later call is made on (this block runs on it).
            let vm = unsafe {
                VZVirtualMachine::initWithConfiguration_queue(
                    VZVirtualMachine::alloc(),
                    config.get(),
                    target,
                )
            };
            let protocol =
                ProtocolObject::<dyn VZVirtualMachineDelegate>::from_ref(&**delegate.get());
            // SAFETY: on the VM's queue; the delegate outlives the VM (held by Inner).
            unsafe { vm.setDelegate(Some(protocol)) };
            made.put(Some(vm));
        });
        let vm = made.0.unwrap_or_else(|| unreachable_vm());
        VzHandle {
            inner: Arc::new(Inner { queue, vm: OnQueue(vm), _delegate: delegate, mem_bytes }),
        }
    }

    /// The VM, for the window's view only: `VZVirtualMachineView.virtualMachine` is set on the
    /// main thread (it is a main-actor property) while the VM runs on its own queue — the
    /// arrangement Code-Hex/vz's windows use too.
    pub(super) fn vm(&self) -> &VZVirtualMachine {
        self.inner.vm.get()
    }

    /// Runs `f` on the VM's queue and returns its result.
    fn sync<R: Send>(&self, f: impl FnOnce(&VZVirtualMachine) -> R + Send) -> R {
        let mut result: Option<R> = None;
        let inner = &self.inner;
        let out = &mut result;
        self.inner.queue.exec_sync(move || *out = Some(f(inner.vm.get())));
        // exec_sync returns only after the block ran, so the result is there.
        result.unwrap_or_else(|| unreachable_vm())
    }

    /// Starts an asynchronous VZ call on the queue; the receiver gets its completion.
    fn call(
        &self,
        op: impl FnOnce(&VZVirtualMachine, &block2::DynBlock<dyn Fn(*mut NSError)>) + Send + 'static,
    ) -> Completion {
        let (tx, rx) = mpsc::channel();
        let inner = self.inner.clone();
        self.inner.queue.exec_async(move || {
            let done = RcBlock::new(move |error: *mut NSError| {
                // SAFETY: VZ passes nil or an NSError alive for this call.
                let _ = tx.send(unsafe { error_from_ptr(error) });
            });
            op(inner.vm.get(), &done);
        });
        rx
    }

    /// Installs the restore image at `image` on this macOS VM. The installer is created and
    /// started on the VM's queue (VZ asserts it).
    pub fn install(&self, image: &Path) -> Installation {
        let (tx, rx) = mpsc::channel();
        let url = OnQueue(file_url(image));
        let mut made: OnQueue<Option<(Retained<VZMacOSInstaller>, Retained<NSProgress>)>> =
            OnQueue(None);
        let inner = &self.inner;
        self.inner.queue.exec_sync(|| {
            // SAFETY: on the VM's queue, with a file URL of the restore image.
            let installer = unsafe {
                VZMacOSInstaller::initWithVirtualMachine_restoreImageURL(
                    VZMacOSInstaller::alloc(),
                    inner.vm.get(),
                    url.get(),
                )
            };
            let done = RcBlock::new(move |error: *mut NSError| {
                // SAFETY: VZ passes nil or an NSError alive for this call.
                let _ = tx.send(unsafe { error_from_ptr(error) });
            });
            // SAFETY: on the VM's queue; `done` is a valid completion block.
            unsafe { installer.installWithCompletionHandler(&done) };
            // SAFETY: a property of the installer, on the VM's queue.
            let progress = unsafe { installer.progress() };
            made.put(Some((installer, progress)));
        });
        let (installer, progress) = made.0.unwrap_or_else(|| unreachable_vm());
        Installation { done: rx, progress: OnQueue(progress), _installer: OnQueue(installer) }
    }

    /// The VM's state.
    pub fn state(&self) -> VzState {
        // SAFETY: on the VM's queue.
        self.sync(|vm| VzState::from_raw(unsafe { vm.state() }.0 as i64))
    }

    /// Starts the VM; `options` are macOS guests' (recovery), `None` for the defaults.
    pub fn start(&self, options: Option<Retained<VZVirtualMachineStartOptions>>) -> Completion {
        let options = OnQueue(options);
        self.call(move |vm, done| match options.get() {
            // SAFETY: on the VM's queue; `done` is a valid completion block.
            Some(options) => unsafe { vm.startWithOptions_completionHandler(options, done) },
            // SAFETY: as above.
            None => unsafe { vm.startWithCompletionHandler(done) },
        })
    }

    /// Checks `action` against the VM's state and VZ's own `can…` answer.
    fn check(&self, action: VzAction) -> Result<(), VzControlError> {
        let (state, can) = self.sync(move |vm| {
            // SAFETY: on the VM's queue.
            let state = VzState::from_raw(unsafe { vm.state() }.0 as i64);
            // SAFETY: on the VM's queue.
            let can = unsafe {
                match action {
                    VzAction::Pause => vm.canPause(),
                    VzAction::Resume => vm.canResume(),
                    VzAction::RequestStop => vm.canRequestStop(),
                    VzAction::ForceStop => vm.canStop(),
                }
            };
            (state, can)
        });
        state::check_action(state, action)?;
        if !can {
            return Err(VzControlError::NotNow { action: action.verb(), state });
        }
        Ok(())
    }

    fn finish(&self, what: &str, completion: Completion) -> Result<(), VzControlError> {
        match completion.recv_timeout(ANSWER_TIME) {
            Ok(None) => Ok(()),
            Ok(Some(error)) => Err(VzControlError::Framework(format!("{what}: {error}"))),
            Err(_) => Err(VzControlError::Framework(format!(
                "{what}: Virtualization.framework did not answer within {} s",
                ANSWER_TIME.as_secs()
            ))),
        }
    }

    /// Pauses the guest (its vCPUs stop; VZ keeps its clock from jumping on resume).
    pub fn pause(&self) -> Result<(), VzControlError> {
        self.check(VzAction::Pause)?;
        // SAFETY: on the VM's queue (inside `call`); `done` is a valid block.
        let completion = self.call(|vm, done| unsafe { vm.pauseWithCompletionHandler(done) });
        self.finish("pause", completion)
    }

    /// Resumes a paused guest.
    pub fn resume(&self) -> Result<(), VzControlError> {
        self.check(VzAction::Resume)?;
        // SAFETY: as in pause.
        let completion = self.call(|vm, done| unsafe { vm.resumeWithCompletionHandler(done) });
        self.finish("resume", completion)
    }

    /// Asks the guest to shut down (the power button); the guest decides, and its power-off
    /// arrives as the delegate's stop.
    pub fn request_stop(&self) -> Result<(), VzControlError> {
        self.check(VzAction::RequestStop)?;
        // SAFETY: on the VM's queue.
        self.sync(|vm| unsafe { vm.requestStopWithError() }.map_err(|e| framework_error(&e)))
            .map_err(|e| VzControlError::Framework(format!("asking the guest to stop: {e}")))
    }

    /// Stops the VM now, like pulling the plug (the guest gets no chance to flush).
    pub fn force_stop(&self) -> Result<(), VzControlError> {
        self.check(VzAction::ForceStop)?;
        self.finish("stop", self.force_stop_async())
    }

    /// [`VzHandle::force_stop`] without waiting (the main thread waits while pumping).
    pub fn force_stop_async(&self) -> Completion {
        // SAFETY: on the VM's queue (inside `call`); `done` is a valid block.
        self.call(|vm, done| unsafe { vm.stopWithCompletionHandler(done) })
    }

    /// Sets how much memory the guest should keep (the rest it gives back through the
    /// balloon); returns the target set, rounded down to whole MiB.
    pub fn set_balloon_target(&self, bytes: u64) -> Result<u64, VzControlError> {
        let target = state::balloon_target(bytes, self.inner.mem_bytes)?;
        let set = self.sync(move |vm| {
            // SAFETY: on the VM's queue.
            let devices = unsafe { vm.memoryBalloonDevices() };
            let Some(device) = devices.firstObject() else { return false };
            let any: &AnyObject = &device;
            match any.downcast_ref::<VZVirtioTraditionalMemoryBalloonDevice>() {
                // SAFETY: on the VM's queue; the target was checked against the VM's memory.
                Some(balloon) => unsafe { balloon.setTargetVirtualMachineMemorySize(target) },
                None => return false,
            }
            true
        });
        if !set {
            return Err(VzControlError::Framework("this VM has no memory balloon".into()));
        }
        Ok(target)
    }
}

/// `exec_sync` returns only after its block ran; a missing result cannot happen.
#[cold]
fn unreachable_vm() -> ! {
    // Aborting here is the honest answer: libdispatch broke its contract.
    log::error!("libdispatch returned from dispatch_sync without running the block");
    std::process::abort()
}
