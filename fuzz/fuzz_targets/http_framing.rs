//! Arbitrary bytes as HTTP/1.1 message heads and bodies, through what relays them without
//! hyper: `piko_http::message_head` (request and response heads), the framing rules of
//! `piko_http::body_framing`, its byte relay (`relay_body`, which finds where a body ends while
//! copying it framing and all) and its chunked decoder (`ChunkedDecoder`, which the server uses to
//! hand a response body to its client).
//!
//! Input: one options byte (bits 0-1: the framing the body is read with: chunked, a length taken
//! from the second byte, until close, none; bits 2-7: where the bytes are cut between "already
//! read" and "still to come", at one of 64 places spread over them), then the bytes.
//!
//! Checks: no panic; a parsed head's length is within the input, and writing it back parses to
//! the same method or status and the same header fields; the relay writes exactly the bytes it
//! consumed (the body, framing included) and leaves the rest; a chunked body the decoder reads to
//! its end, the relay does too (both take trailer lines under the same limits), and they agree on
//! where it ends and on its payload, whatever the cut (the decoder alone parses trailer fields,
//! so it may refuse trailers the relay passed on).

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use piko_http::{
    body_framing::{ChunkedDecoder, Decoded, Framing, relay_body},
    message_head::{parse_request, parse_response, write_request_head, write_response_head},
};

fuzz_target!(|data: &[u8]| {
    let Some((&options, bytes)) = data.split_first() else {
        return;
    };
    check_heads(bytes);
    let framing = match options & 0x3 {
        0 => Framing::Chunked,
        1 => Framing::Length(u64::from(bytes.first().copied().unwrap_or(0))),
        2 => Framing::UntilClose,
        _ => Framing::Empty,
    };
    let cut = usize::from(options >> 2) * bytes.len() / 63;
    let relayed = relay(framing, bytes, cut);
    if framing == Framing::Chunked {
        let decoded = decode(bytes, cut);
        match (&relayed, &decoded) {
            (Some((consumed, payload)), Some((decoded_end, data))) => {
                assert_eq!(consumed, decoded_end, "relay and decoder end apart");
                assert_eq!(*payload, data.len() as u64, "payload sizes differ");
            }
            // The relay passes trailer lines on as bytes; the decoder also parses them as
            // header fields, so it may refuse what the relay took.
            (Some(_) | None, None) => {}
            (None, Some(_)) => panic!("the decoder ended a body the relay refused: {decoded:?}"),
        }
    }
});

fn check_heads(bytes: &[u8]) {
    if let Ok(Some((request, len))) = parse_request(bytes) {
        assert!(len <= bytes.len());
        let target = request.uri().to_string();
        let mut out = Vec::new();
        write_request_head(&mut out, request.method(), &target, request.headers());
        let (again, again_len) = parse_request(&out)
            .expect("a written head parses")
            .expect("a written head is complete");
        assert_eq!(again_len, out.len());
        assert_eq!(again.method(), request.method());
        assert_eq!(again.headers(), request.headers());
    }
    if let Ok(Some((response, len))) = parse_response(bytes) {
        assert!(len <= bytes.len());
        let mut out = Vec::new();
        write_response_head(&mut out, response.status(), response.headers());
        let (again, _) = parse_response(&out)
            .expect("a written head parses")
            .expect("a written head is complete");
        assert_eq!(again.status(), response.status());
        assert_eq!(again.headers(), response.headers());
    }
}

/// Relays the body: `Some((bytes consumed, payload))` when it ended, after checking that what
/// was written is exactly what was consumed.
fn relay(framing: Framing, bytes: &[u8], cut: usize) -> Option<(usize, u64)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut buf = BytesMut::from(&bytes[..cut]);
        let mut from = &bytes[cut..];
        let mut to = Vec::new();
        let mut out = b"HEAD".to_vec();
        let result = relay_body(framing, &mut buf, &mut out, &mut from, &mut to).await;
        let consumed = bytes.len() - buf.len() - from.len();
        let payload = result.ok()?;
        assert_eq!(&to[..4], b"HEAD");
        assert_eq!(&to[4..], &bytes[..consumed], "written is not what was consumed");
        Some((consumed, payload))
    })
}

/// Decodes a chunked body fed in two parts: `Some((bytes consumed, payload))` when it ended.
fn decode(bytes: &[u8], cut: usize) -> Option<(usize, Vec<u8>)> {
    let mut decoder = ChunkedDecoder::default();
    let mut buf = BytesMut::from(&bytes[..cut]);
    let mut fed = cut;
    let mut data = Vec::new();
    loop {
        match decoder.decode(&mut buf).ok()? {
            Decoded::Data(part) => data.extend_from_slice(&part),
            Decoded::Trailers(_) => {}
            Decoded::End => return Some((fed - buf.len(), data)),
            Decoded::NeedMore if fed < bytes.len() => {
                buf.extend_from_slice(&bytes[fed..]);
                fed = bytes.len();
            }
            Decoded::NeedMore => return None,
        }
    }
}
