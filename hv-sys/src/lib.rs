//! Raw FFI for Apple's Hypervisor.framework (arm64). The bindings arrive with the HVF backend.
