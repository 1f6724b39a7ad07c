//! Test support for piko's process tests and soaks: a [`FaultProxy`](fault_proxy::FaultProxy)
//! to put between agent and server, or client and server.

pub mod fault_proxy;
