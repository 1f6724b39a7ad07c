//! WebSocket frame headers (RFC 6455 §5.2): parsed and built without touching the payload, so a
//! byte stream can hand a frame's payload on as it arrives, whatever the frame's size.

use std::fmt;

/// Which end of the connection we are. A client masks what it sends and a server must not; each
/// rejects frames that break that rule (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We accepted the connection: frames we read are masked, frames we write are not.
    Server,
    /// We opened the connection: frames we read are unmasked, frames we write are masked.
    Client,
}

/// Frame opcodes (RFC 6455 §5.2).
pub(crate) mod opcode {
    pub(crate) const CONTINUATION: u8 = 0x0;
    pub(crate) const TEXT: u8 = 0x1;
    pub(crate) const BINARY: u8 = 0x2;
    pub(crate) const CLOSE: u8 = 0x8;
    pub(crate) const PING: u8 = 0x9;
    pub(crate) const PONG: u8 = 0xa;
}

/// Largest header: 2 bytes, an 8-byte length, a 4-byte masking key.
pub(crate) const MAX_HEADER_LEN: usize = 14;

/// Largest payload of a control frame (RFC 6455 §5.5).
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub(crate) fin: bool,
    pub(crate) opcode: u8,
    pub(crate) mask: Option<[u8; 4]>,
    pub(crate) payload_len: u64,
}

impl FrameHeader {
    pub(crate) fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// A frame the byte stream refuses: one that breaks RFC 6455 (the connection is closed with
/// status 1002, protocol error), or a text message (1003, unsupported data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// RSV1-3 set, with no extension negotiated.
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    UnknownOpcode(u8),
    /// A client sent an unmasked frame.
    UnmaskedFromClient,
    /// A server sent a masked frame.
    MaskedFromServer,
    /// A control frame over 125 bytes.
    ControlTooLong,
    /// A control frame without FIN.
    ControlFragmented,
    /// A 64-bit length with its most significant bit set.
    LengthOverflow,
    /// A continuation frame with no message to continue.
    ContinuationWithoutStart,
    /// A new data message before the previous one ended.
    MessageNotEnded,
    /// A close frame whose payload is one byte (a status is two).
    OneByteClose,
    /// A text message on a binary byte stream.
    TextMessage,
}

impl FrameError {
    /// The close status that answers this frame.
    pub(crate) fn close_status(self) -> u16 {
        match self {
            Self::TextMessage => 1003,
            _ => 1002,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedBits => f.write_str("reserved bits set"),
            Self::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            Self::UnmaskedFromClient => f.write_str("unmasked frame from a client"),
            Self::MaskedFromServer => f.write_str("masked frame from a server"),
            Self::ControlTooLong => f.write_str("control frame over 125 bytes"),
            Self::ControlFragmented => f.write_str("fragmented control frame"),
            Self::LengthOverflow => f.write_str("frame length over 2^63"),
            Self::ContinuationWithoutStart => f.write_str("continuation frame without a start"),
            Self::MessageNotEnded => f.write_str("new message before the previous one ended"),
            Self::OneByteClose => f.write_str("close frame with a one-byte payload"),
            Self::TextMessage => f.write_str("text message on a binary byte stream"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Parses the header at the start of `buf`, read by `role`: `Ok(None)` until the whole header is
/// there, else the header and its length. Checks everything a header alone can break; whether a
/// data frame fits the message in progress is the reader's to check.
pub(crate) fn parse_header(
    buf: &[u8],
    role: Role,
) -> Result<Option<(FrameHeader, usize)>, FrameError> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = first & 0x80 != 0;
    let opcode = first & 0x0f;
    match opcode {
        opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {}
        opcode::CLOSE | opcode::PING | opcode::PONG => {
            if !fin {
                return Err(FrameError::ControlFragmented);
            }
            if usize::from(second & 0x7f) > MAX_CONTROL_PAYLOAD {
                return Err(FrameError::ControlTooLong);
            }
        }
        other => return Err(FrameError::UnknownOpcode(other)),
    }
    let masked = second & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(FrameError::UnmaskedFromClient),
        (Role::Client, true) => return Err(FrameError::MaskedFromServer),
        _ => {}
    }
    let (payload_len, mut at) = match second & 0x7f {
        126 => match buf.get(2..4) {
            Some(len) => (u64::from(u16::from_be_bytes([len[0], len[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(len) => {
                let len = u64::from_be_bytes(len.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(FrameError::LengthOverflow);
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        len => (u64::from(len), 2),
    };
    let mask = if masked {
        let Some(key) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some(key.try_into().expect("4 bytes"))
    } else {
        None
    };
    let header = FrameHeader {
        fin,
        opcode,
        mask,
        payload_len,
    };
    Ok(Some((header, at)))
}

/// Writes a header into `out`; returns its length.
pub(crate) fn write_header(
    out: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    opcode: u8,
    payload_len: u64,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = if fin { 0x80 } else { 0 } | opcode;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut at = match payload_len {
        len @ 0..=125 => {
            out[1] = mask_bit | len as u8;
            2
        }
        len @ 126..=0xffff => {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        len => {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&len.to_be_bytes());
            10
        }
    };
    if let Some(key) = mask {
        out[at..at + 4].copy_from_slice(&key);
        at += 4;
    }
    at
}

/// XORs `data` with `key`, for payload bytes starting at offset `offset` of their frame: masking
/// and unmasking are the same operation (RFC 6455 §5.3).
pub(crate) fn apply_mask(data: &mut [u8], key: [u8; 4], offset: u64) {
    let mut key = key;
    key.rotate_left((offset % 4) as usize);
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = data.chunks_exact_mut(8);
    for word in &mut words {
        let value = u64::from_ne_bytes((&*word).try_into().expect("8 bytes")) ^ wide;
        word.copy_from_slice(&value.to_ne_bytes());
    }
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(bytes: &[u8], role: Role) -> Result<Option<(FrameHeader, usize)>, FrameError> {
        parse_header(bytes, role)
    }

    #[test]
    fn headers_round_trip_at_every_length_encoding() {
        for len in [0, 1, 125, 126, 0xffff, 0x1_0000, 64 << 20] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut out = [0; MAX_HEADER_LEN];
                let n = write_header(&mut out, true, opcode::BINARY, len, mask);
                let role = if mask.is_some() {
                    Role::Server
                } else {
                    Role::Client
                };
                let (parsed, at) = header(&out[..n], role).unwrap().unwrap();
                assert_eq!(at, n);
                assert_eq!(
                    parsed,
                    FrameHeader {
                        fin: true,
                        opcode: opcode::BINARY,
                        mask,
                        payload_len: len,
                    }
                );
                // Every proper prefix is incomplete, not an error.
                for cut in 0..n {
                    assert_eq!(header(&out[..cut], role), Ok(None), "{len} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn rule_breaking_headers_are_refused() {
        let cases: [(&[u8], Role, FrameError); 8] = [
            (&[0x82, 0x00], Role::Server, FrameError::UnmaskedFromClient),
            (&[0x82, 0x80], Role::Client, FrameError::MaskedFromServer),
            (&[0xc2, 0x00], Role::Client, FrameError::ReservedBits),
            (&[0x92, 0x00], Role::Client, FrameError::ReservedBits),
            (&[0x83, 0x00], Role::Client, FrameError::UnknownOpcode(3)),
            (&[0x8b, 0x00], Role::Client, FrameError::UnknownOpcode(0xb)),
            (&[0x09, 0x00], Role::Client, FrameError::ControlFragmented),
            (&[0x89, 0x7e], Role::Client, FrameError::ControlTooLong),
        ];
        for (bytes, role, want) in cases {
            assert_eq!(header(bytes, role), Err(want), "{bytes:x?}");
        }
        let mut huge = vec![0x82, 0x7f];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(header(&huge, Role::Client), Err(FrameError::LengthOverflow));
    }

    #[test]
    fn masking_at_any_offset_matches_the_bytewise_definition() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let data: Vec<u8> = (0..100u8).collect();
        for offset in 0..9u64 {
            for len in [0, 1, 7, 8, 9, 31, 100] {
                let mut masked = data[..len].to_vec();
                apply_mask(&mut masked, key, offset);
                let expected: Vec<u8> = data[..len]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ key[(offset as usize + i) % 4])
                    .collect();
                assert_eq!(masked, expected, "offset {offset} len {len}");
            }
        }
    }
}
