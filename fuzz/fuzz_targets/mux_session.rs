//! Arbitrary bytes drive piko-mux's session state machine: the peer's input, decoded and applied
//! in chunks, interleaved with the application's actions (open, accept, read, write, shutdown,
//! reset, drop, the writer taking output, the timer). The input format is described at
//! `piko_mux::fuzzing::session_script`.
//!
//! Checks, after every inbound part and every action: no panic; every stream the peer can
//! still send on has all of its granted window accounted for (still the peer's, buffered,
//! consumed, or in flight), and no stream buffers more than its window; the output the writer
//! takes is whole, valid frames, and every SYN we send is for a stream ID of our parity.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    piko_mux::fuzzing::session_script(data);
});
