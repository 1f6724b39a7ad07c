//! A hasher for stream IDs. IDs are sequential integers from the opener, not attacker-chosen
//! keys in a way that matters (a peer can only hurt its own session), so SipHash's cost on every
//! frame buys nothing. A Fibonacci multiply spreads sequential IDs over the high bits that
//! hashbrown uses for its control bytes.

use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(crate) type BuildIdHasher = BuildHasherDefault<IdHasher>;
