//! The guest's display in a window: an `NSWindow` whose content is a `VZVirtualMachineView`.
//! AppKit objects live on the main thread only (objc2 enforces it with `MainThreadMarker`);
//! the VM stays on its own queue, and the view is the one AppKit object handed the VM.
//! While a window is open, hvrun's main thread waits by pumping AppKit's events ([`Pump::App`]).

use std::sync::Arc;
use std::time::Duration;

use objc2::rc::Retained;
use objc2::runtime::ProtocolObject;
use objc2::{define_class, msg_send, DefinedClass, MainThreadMarker, MainThreadOnly};
use objc2_app_kit::{
    NSApplication, NSApplicationActivationPolicy, NSBackingStoreType, NSEventMask, NSWindow,
    NSWindowDelegate, NSWindowStyleMask,
};
use objc2_foundation::{
    NSDate, NSDefaultRunLoopMode, NSNotification, NSObject, NSObjectProtocol, NSPoint, NSRect,
    NSSize, NSString,
};
use objc2_virtualization::VZVirtualMachineView;

use super::machine::VzHandle;
use super::ns::pump_run_loop;
use crate::control::{VmControl, VmOutcome};
use crate::vz::version::{Feature, MacosVersion};

define_class!(
    // SAFETY: NSObject has no subclassing requirements; CloseDelegate does not implement Drop.
    #[unsafe(super(NSObject))]
    #[thread_kind = MainThreadOnly]
    #[ivars = Arc<VmControl>]
    struct CloseDelegate;

    unsafe impl NSObjectProtocol for CloseDelegate {}

    // Called on the main thread by AppKit.
    unsafe impl NSWindowDelegate for CloseDelegate {
        /// Closing the window ends the VM, like Ctrl-A x on the terminal.
        #[unsafe(method(windowWillClose:))]
        fn window_will_close(&self, _notification: &NSNotification) {
            self.ivars().request_stop(VmOutcome::Quit);
        }
    }
);

impl CloseDelegate {
    fn new(mtm: MainThreadMarker, stop: Arc<VmControl>) -> Retained<CloseDelegate> {
        let this = CloseDelegate::alloc(mtm).set_ivars(stop);
        // SAFETY: NSObject's designated initialiser, on a freshly allocated object.
        unsafe { msg_send![super(this), init] }
    }
}

/// An open window showing the VM; closed when dropped.
pub struct VmWindow {
    window: Retained<NSWindow>,
    _view: Retained<VZVirtualMachineView>,
    _delegate: Retained<CloseDelegate>,
}

/// What the window shows.
pub struct WindowSpec<'a> {
    pub title: &'a str,
    pub width: u32,
    pub height: u32,
    /// Let the guest's display follow the window's size (macOS 14; Mac graphics).
    pub follow_size: bool,
}

impl VmWindow {
    /// Opens the window on the main thread (`mtm`) and makes hvrun a regular app with a Dock
    /// icon, so the window can take the keyboard.
    pub fn open(
        mtm: MainThreadMarker,
        vm: &VzHandle,
        spec: &WindowSpec,
        stop: Arc<VmControl>,
        host: MacosVersion,
    ) -> VmWindow {
        let app = NSApplication::sharedApplication(mtm);
        app.setActivationPolicy(NSApplicationActivationPolicy::Regular);
        app.finishLaunching();
        let frame = NSRect::new(
            NSPoint::new(0.0, 0.0),
            NSSize::new(f64::from(spec.width), f64::from(spec.height)),
        );
        // SAFETY: a fresh allocation on the main thread.
        let view =
            unsafe { VZVirtualMachineView::initWithFrame(VZVirtualMachineView::alloc(mtm), frame) };
        // SAFETY: main thread; the VM outlives the view (the caller drops the window first).
        unsafe {
            view.setVirtualMachine(Some(vm.vm()));
            // Cmd-Tab, Cmd-Space and friends go to the guest while the view has the keyboard.
            view.setCapturesSystemKeys(true);
            if spec.follow_size && Feature::DisplayFollowsWindow.available_on(host) {
                view.setAutomaticallyReconfiguresDisplay(true);
            }
        }
        let style = NSWindowStyleMask::Titled
            | NSWindowStyleMask::Closable
            | NSWindowStyleMask::Miniaturizable
            | NSWindowStyleMask::Resizable;
        // SAFETY: a fresh allocation on the main thread, with a valid frame and style.
        let window = unsafe {
            NSWindow::initWithContentRect_styleMask_backing_defer(
                NSWindow::alloc(mtm),
                frame,
                style,
                NSBackingStoreType::Buffered,
                false,
            )
        };
        // SAFETY: Rust owns the window (the Retained); AppKit must not release it on close too.
        unsafe { window.setReleasedWhenClosed(false) };
        let delegate = CloseDelegate::new(mtm, stop);
        window.setTitle(&NSString::from_str(spec.title));
        window.setContentView(Some(&view));
        window.setDelegate(Some(ProtocolObject::from_ref(&*delegate)));
        window.center();
        window.makeKeyAndOrderFront(None);
        if host >= MacosVersion::new(14, 0) {
            app.activate();
        } else {
            #[allow(deprecated)] // deprecated in macOS 14, the only way before it
            app.activateIgnoringOtherApps(true);
        }
        VmWindow { window, _view: view, _delegate: delegate }
    }
}

impl Drop for VmWindow {
    fn drop(&mut self) {
        self.window.setDelegate(None);
        self.window.close();
    }
}

/// How the main thread waits: the run loop alone (no window), or AppKit's event loop.
pub enum Pump {
    RunLoop,
    App(Retained<NSApplication>),
}

impl Pump {
    /// The pump for hvrun's main thread: AppKit's when a window is open.
    pub fn for_window(mtm: Option<MainThreadMarker>) -> Pump {
        match mtm {
            Some(mtm) => Pump::App(NSApplication::sharedApplication(mtm)),
            None => Pump::RunLoop,
        }
    }

    /// Serves the main thread for up to `timeout`: AppKit events (and with them the main queue
    /// and timers), or the plain run loop.
    pub fn pump(&self, timeout: Duration) {
        match self {
            Pump::RunLoop => pump_run_loop(timeout),
            Pump::App(app) => {
                let until = NSDate::dateWithTimeIntervalSinceNow(timeout.as_secs_f64());
                // SAFETY: reading an immutable framework constant.
                let mode = unsafe { NSDefaultRunLoopMode };
                if let Some(event) = app.nextEventMatchingMask_untilDate_inMode_dequeue(
                    NSEventMask::Any,
                    Some(&until),
                    mode,
                    true,
                ) {
                    app.sendEvent(&event);
                }
                app.updateWindows();
            }
        }
    }
}
