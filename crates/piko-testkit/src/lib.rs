//! Test support for piko's process tests and soaks: a [`FaultProxy`](fault_proxy::FaultProxy)
//! to put between agent and server, or client and server, and [Piko's own Go
//! programs](go_piko::go_piko) to test against.

pub mod fault_proxy;
pub mod go_piko;
