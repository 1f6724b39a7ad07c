//! The yamux v0 wire format: a 12-byte big-endian header, followed by `length` payload bytes on
//! Data frames only.
//!
//! ```text
//! | version u8 | type u8 | flags u16 | stream id u32 | length u32 |
//! ```
//!
//! `length` means the payload length on Data frames, the window delta on WindowUpdate frames, an
//! opaque ping ID on Ping frames and the error code on GoAway frames.

/// Length of every frame header.
pub const HEADER_LEN: usize = 12;

/// The only protocol version yamux has.
pub const PROTOCOL_VERSION: u8 = 0;

/// Frame type, the second header byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// Carries stream payload.
    Data,
    /// Grants send window to the peer; also carries stream flags without payload.
    WindowUpdate,
    /// Keep-alive / round-trip probe, session level.
    Ping,
    /// Announces that the sender accepts no new streams (code 0) or is terminating the session.
    GoAway,
}

impl FrameType {
    fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Self::Data,
            1 => Self::WindowUpdate,
            2 => Self::Ping,
            3 => Self::GoAway,
            _ => return None,
        })
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Data => 0,
            Self::WindowUpdate => 1,
            Self::Ping => 2,
            Self::GoAway => 3,
        }
    }
}

/// Header flags. Several may be set at once (for example SYN with FIN).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(u16);

impl Flags {
    /// No flag.
    pub const NONE: Self = Self(0);
    /// Opens a stream, or marks a ping request.
    pub const SYN: Self = Self(0x1);
    /// Acknowledges a stream open, or marks a ping reply.
    pub const ACK: Self = Self(0x2);
    /// Half-closes the sender's direction of a stream.
    pub const FIN: Self = Self(0x4);
    /// Aborts a stream.
    pub const RST: Self = Self(0x8);

    /// The raw bits.
    pub fn bits(self) -> u16 {
        self.0
    }

    /// Flags from raw bits; unknown bits are kept (and ignored), as Go's yamux does.
    pub fn from_bits(bits: u16) -> Self {
        Self(bits)
    }

    /// Whether every flag of `other` is set in `self`.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

/// GoAway code 0: the sender accepts no new streams; existing streams continue.
pub const GO_AWAY_NORMAL: u32 = 0;
/// GoAway code 1: the sender saw a protocol violation and is ending the session.
pub const GO_AWAY_PROTOCOL_ERROR: u32 = 1;
/// GoAway code 2: the sender hit an internal error and is ending the session.
pub const GO_AWAY_INTERNAL_ERROR: u32 = 2;

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Frame type.
    pub ty: FrameType,
    /// Stream flags.
    pub flags: Flags,
    /// Stream ID; 0 for Ping and GoAway.
    pub stream_id: u32,
    /// Payload length, window delta, ping ID or GoAway code, depending on `ty`.
    pub length: u32,
}

impl Header {
    /// A Data header announcing `len` payload bytes.
    pub fn data(stream_id: u32, flags: Flags, len: u32) -> Self {
        Self {
            ty: FrameType::Data,
            flags,
            stream_id,
            length: len,
        }
    }

    /// A WindowUpdate header granting `delta` bytes (often 0, to carry flags alone).
    pub fn window_update(stream_id: u32, flags: Flags, delta: u32) -> Self {
        Self {
            ty: FrameType::WindowUpdate,
            flags,
            stream_id,
            length: delta,
        }
    }

    /// A ping request (`SYN`) or reply (`ACK`) carrying `opaque`.
    pub fn ping(flags: Flags, opaque: u32) -> Self {
        Self {
            ty: FrameType::Ping,
            flags,
            stream_id: 0,
            length: opaque,
        }
    }

    /// A GoAway with `code`.
    pub fn go_away(code: u32) -> Self {
        Self {
            ty: FrameType::GoAway,
            flags: Flags::NONE,
            stream_id: 0,
            length: code,
        }
    }

    /// The header's 12 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = PROTOCOL_VERSION;
        out[1] = self.ty.as_u8();
        out[2..4].copy_from_slice(&self.flags.bits().to_be_bytes());
        out[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        out[8..12].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// Parses 12 header bytes.
    ///
    /// # Errors
    /// A version other than 0 or an unknown frame type.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, FrameError> {
        if bytes[0] != PROTOCOL_VERSION {
            return Err(FrameError::Version(bytes[0]));
        }
        let ty = FrameType::from_u8(bytes[1]).ok_or(FrameError::Type(bytes[1]))?;
        let flags = Flags::from_bits(u16::from_be_bytes([bytes[2], bytes[3]]));
        let stream_id = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let length = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        Ok(Self {
            ty,
            flags,
            stream_id,
            length,
        })
    }

    /// How many payload bytes follow this header on the wire.
    pub fn payload_len(&self) -> usize {
        match self.ty {
            FrameType::Data => self.length as usize,
            _ => 0,
        }
    }
}

/// A header that cannot be decoded. Either ends the session with GoAway(protocol error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The version byte is not 0.
    #[error("unsupported yamux version {0}")]
    Version(u8),
    /// The type byte is not one of the four frame types.
    #[error("unknown yamux frame type {0}")]
    Type(u8),
}

/// One piece of the inbound byte stream, as [`FrameDecoder::decode`] yields them.
///
/// Data payloads are yielded in whatever pieces have arrived, so the reader never needs a whole
/// frame (up to a window, 256 KiB or more) in its buffer and can copy each piece straight into the
/// stream it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part<'a> {
    /// A whole WindowUpdate, Ping or GoAway frame.
    Control(Header),
    /// The header of a Data frame; its payload follows as [`Part::Payload`] pieces, then
    /// [`Part::DataEnd`].
    DataStart(Header),
    /// A piece of the current Data frame's payload.
    Payload(&'a [u8]),
    /// The current Data frame is complete (its FIN or RST flags take effect now, after its data).
    DataEnd(Header),
}

/// Incremental decoder: turns bytes, in any chunking, into [`Part`]s.
///
/// It consumes every byte it is given: a header split across chunks is kept internally, so a
/// caller can hand it each chunk in place and never has to keep a tail of its own.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// The Data frame being received and how much of its payload is still to come.
    data: Option<(Header, u32)>,
    partial: [u8; HEADER_LEN],
    partial_len: usize,
}

impl FrameDecoder {
    /// A decoder at a frame boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes from the front of `input`: returns how many bytes it used and the part it
    /// completed, if any. Call again with the rest until it returns `(None, 0)`.
    ///
    /// # Errors
    /// A header that cannot be decoded; the stream is then unusable.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<(Option<Part<'a>>, usize), FrameError> {
        if let Some((header, remaining)) = &mut self.data {
            if *remaining == 0 {
                let header = *header;
                self.data = None;
                return Ok((Some(Part::DataEnd(header)), 0));
            }
            let n = input.len().min(*remaining as usize);
            if n == 0 {
                return Ok((None, 0));
            }
            *remaining -= n as u32;
            return Ok((Some(Part::Payload(&input[..n])), n));
        }
        let (raw, used) = if self.partial_len == 0 && input.len() >= HEADER_LEN {
            (
                input[..HEADER_LEN].try_into().expect("slice of HEADER_LEN"),
                HEADER_LEN,
            )
        } else {
            let take = input.len().min(HEADER_LEN - self.partial_len);
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&input[..take]);
            self.partial_len += take;
            if self.partial_len < HEADER_LEN {
                return Ok((None, take));
            }
            self.partial_len = 0;
            (self.partial, take)
        };
        let header = Header::decode(&raw)?;
        if header.ty == FrameType::Data {
            self.data = Some((header, header.length));
            Ok((Some(Part::DataStart(header)), used))
        } else {
            Ok((Some(Part::Control(header)), used))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_go_open_and_ack_bytes() {
        // The byte strings Piko's server and agent put on the wire for stream 2.
        let syn = Header::window_update(2, Flags::SYN, 0).encode();
        assert_eq!(syn, [0, 1, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0]);
        let ack = Header::window_update(2, Flags::ACK, 0).encode();
        assert_eq!(ack, [0, 1, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0]);
    }

    #[test]
    fn rejects_bad_version_and_type() {
        let mut raw = Header::ping(Flags::SYN, 7).encode();
        raw[0] = 1;
        assert_eq!(Header::decode(&raw), Err(FrameError::Version(1)));
        raw[0] = 0;
        raw[1] = 4;
        assert_eq!(Header::decode(&raw), Err(FrameError::Type(4)));
    }

    /// Decodes `wire` fed in pieces of `chunk` bytes into owned parts (payload pieces merged).
    fn decode_all(wire: &[u8], chunk: usize) -> Vec<(String, Vec<u8>)> {
        let mut decoder = FrameDecoder::new();
        let mut parts: Vec<(String, Vec<u8>)> = Vec::new();
        for piece in wire.chunks(chunk) {
            let mut pos = 0;
            loop {
                let (part, used) = decoder.decode(&piece[pos..]).unwrap();
                pos += used;
                let Some(part) = part else {
                    if used == 0 {
                        break;
                    }
                    continue;
                };
                match part {
                    Part::Payload(data) => match parts.last_mut() {
                        Some((kind, bytes)) if kind == "payload" => bytes.extend_from_slice(data),
                        _ => parts.push(("payload".into(), data.to_vec())),
                    },
                    other => parts.push((format!("{other:?}"), Vec::new())),
                }
            }
            assert_eq!(pos, piece.len(), "the decoder consumes every byte");
        }
        parts
    }

    #[test]
    fn decodes_across_arbitrary_chunks() {
        let payload: Vec<u8> = (0..40_000).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        wire.extend_from_slice(&Header::data(1, Flags::SYN, payload.len() as u32).encode());
        wire.extend_from_slice(&payload);
        wire.extend_from_slice(&Header::window_update(1, Flags::FIN, 9).encode());
        wire.extend_from_slice(&Header::data(1, Flags::FIN, 0).encode());
        let whole = decode_all(&wire, wire.len());
        for chunk in [1, 5, 12, 13, 4096] {
            assert_eq!(decode_all(&wire, chunk), whole, "chunk size {chunk}");
        }
        assert_eq!(whole.len(), 6);
        assert_eq!(whole[1], ("payload".to_string(), payload));
        let update = Part::Control(Header::window_update(1, Flags::FIN, 9));
        assert_eq!(whole[3].0, format!("{update:?}"));
        assert_eq!(
            whole[5].0,
            format!("{:?}", Part::DataEnd(Header::data(1, Flags::FIN, 0)))
        );
    }

    proptest! {
        #[test]
        fn header_round_trips(ty in 0u8..4, flags: u16, id: u32, length: u32) {
            let header = Header {
                ty: FrameType::from_u8(ty).unwrap(),
                flags: Flags::from_bits(flags),
                stream_id: id,
                length,
            };
            prop_assert_eq!(Header::decode(&header.encode()), Ok(header));
        }

        /// Arbitrary, truncated and split input never panics, and what it yields never claims
        /// more bytes than it was given.
        #[test]
        fn random_input_never_panics(
            input in proptest::collection::vec(any::<u8>(), 0..4096),
            split in 0usize..4096,
        ) {
            let mut decoder = FrameDecoder::new();
            let split = split.min(input.len());
            let mut consumed = 0;
            'chunks: for chunk in [&input[..split], &input[split..]] {
                let mut pos = 0;
                loop {
                    match decoder.decode(&chunk[pos..]) {
                        Ok((None, 0)) => break,
                        Ok((_, used)) => pos += used,
                        Err(_) => break 'chunks,
                    }
                }
                consumed += pos;
            }
            prop_assert!(consumed <= input.len());
        }
    }
}
