//! Arbitrary bytes through piko-mux's frame decoder, fed in chunks whose sizes the input picks.
//!
//! Input: `n: u8`, then `n % 8` chunk-size bytes (cycled), then the wire bytes.
//!
//! Checks: every byte of every chunk is consumed; each header is exactly the 12 bytes at its
//! place on the wire; a Data frame's payload pieces are the bytes that follow its header and add
//! up to its length, then `DataEnd` carries the same header; an error happens exactly where a
//! header fails to decode on its own; and the parts do not depend on how the input was split.

#![no_main]

use libfuzzer_sys::fuzz_target;
use piko_mux::frame::{FrameDecoder, FrameError, FrameType, HEADER_LEN, Header, Part};

/// What the decoder made of the input, independent of the split: headers with their offsets,
/// payload spans merged, and the error.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Control(usize, Header),
    DataStart(usize, Header),
    Payload(usize, usize),
    DataEnd(Header),
    Error(usize, FrameError),
}

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let (sizes, wire) = rest.split_at(usize::from(count % 8).min(rest.len()));
    let split = decode(wire, sizes);
    let whole = decode(wire, &[]);
    assert_eq!(split, whole, "the parts depend on the chunking");
});

/// Decodes `wire` in chunks of the sizes in `sizes` (cycled; one chunk when empty), checking
/// each part against the wire as it comes.
fn decode(wire: &[u8], sizes: &[u8]) -> Vec<Event> {
    let mut decoder = FrameDecoder::new();
    let mut events = Vec::new();
    // Where the current frame's header starts, and the Data frame whose payload is arriving.
    let mut frame_start = 0;
    let mut data: Option<(Header, u32)> = None;
    let mut offset = 0;
    let mut size_index = 0;
    while offset < wire.len() {
        let size = match sizes.get(size_index % sizes.len().max(1)) {
            Some(&size) => usize::from(size) + 1,
            None => wire.len(),
        };
        size_index += 1;
        let chunk = &wire[offset..wire.len().min(offset + size)];
        let mut used_in_chunk = 0;
        loop {
            let (part, used) = match decoder.decode(&chunk[used_in_chunk..]) {
                Ok(decoded) => decoded,
                Err(err) => {
                    let raw: &[u8; HEADER_LEN] = wire[frame_start..frame_start + HEADER_LEN]
                        .try_into()
                        .expect("a failing header has all its bytes");
                    assert_eq!(
                        Header::decode(raw),
                        Err(err),
                        "the error is the header's own"
                    );
                    events.push(Event::Error(frame_start, err));
                    return events;
                }
            };
            let at = offset + used_in_chunk;
            used_in_chunk += used;
            let Some(part) = part else {
                if used == 0 {
                    break;
                }
                continue;
            };
            match part {
                Part::Control(header) | Part::DataStart(header) => {
                    assert!(data.is_none(), "a header inside a Data frame's payload");
                    let start = offset + used_in_chunk - HEADER_LEN;
                    assert_eq!(start, frame_start, "a header out of place");
                    assert_eq!(header.encode(), wire[start..start + HEADER_LEN]);
                    if let Part::DataStart(_) = part {
                        assert_eq!(header.ty, FrameType::Data);
                        data = Some((header, header.length));
                        events.push(Event::DataStart(start, header));
                    } else {
                        assert_ne!(header.ty, FrameType::Data);
                        frame_start = start + HEADER_LEN;
                        events.push(Event::Control(start, header));
                    }
                }
                Part::Payload(piece) => {
                    let (_, remaining) = data.as_mut().expect("payload outside a Data frame");
                    assert!(!piece.is_empty(), "an empty payload piece");
                    assert!(
                        piece.len() <= *remaining as usize,
                        "payload beyond the length"
                    );
                    *remaining -= piece.len() as u32;
                    assert_eq!(piece, &wire[at..at + piece.len()], "payload bytes moved");
                    match events.last_mut() {
                        Some(Event::Payload(start, len)) if *start + *len == at => {
                            *len += piece.len();
                        }
                        _ => events.push(Event::Payload(at, piece.len())),
                    }
                }
                Part::DataEnd(header) => {
                    let (started, remaining) = data.take().expect("DataEnd outside a Data frame");
                    assert_eq!(remaining, 0, "DataEnd before the whole payload");
                    assert_eq!(header, started, "DataEnd names another frame");
                    frame_start = at;
                    events.push(Event::DataEnd(header));
                }
            }
        }
        assert_eq!(
            used_in_chunk,
            chunk.len(),
            "the decoder left bytes of a chunk"
        );
        offset += chunk.len();
    }
    events
}
