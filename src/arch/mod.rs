//! Architecture knowledge that does not depend on a hypervisor: register reset state, CPU
//! identities. Portable and unit-tested on any host.

pub mod aarch64;
