//! Authenticating requests relayed between nodes. A relayed request is served from the
//! receiving node's own upstreams only (it is never relayed again), so the mark that says
//! "relayed" must come from a node: a client that could set it would turn routing off for its
//! requests, and a loop between nodes could not be ruled out.
//!
//! The sending node signs the request for the node it goes to: an HMAC-SHA256 over a timestamp,
//! the target's ID, the method and the path, in `x-piko-forward-signature`. The key is the
//! cluster's shared secret (`cluster.secret`) when one is set: each node then publishes a proof
//! that it knows the secret, bound to its ID and proxy address, and nodes relay only to nodes
//! whose proof checks (a forged node cannot make one for its own address). Without a secret each
//! node draws a random key at start and publishes it in its gossip state, for its peers to sign
//! with (the gossip port must then be private; with a secret, gossip is sealed). The signature
//! header never reaches an upstream.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{hmac, rand::SecureRandom as _};
use http::{HeaderMap, HeaderValue, Method};

/// Carries the signature of a relayed request.
pub const SIGNATURE_HEADER: &str = "x-piko-forward-signature";

/// Gossip key of a node's own random forwarding key (hex), when there is no shared secret.
pub(crate) const FORWARD_KEY: &str = "forward_key";
/// Gossip key of a node's proof that it knows the shared secret (an HMAC of its ID and proxy
/// address, never the secret).
pub(crate) const MEMBER_PROOF: &str = "member_proof";

/// How far a signature's timestamp may be from the receiving node's clock (a sealed gossip
/// datagram's too).
pub(super) const MAX_SKEW: Duration = Duration::from_secs(300);

/// This node's forwarding keys.
#[derive(Debug)]
pub struct ForwardAuth {
    own_id: String,
    /// What the node verifies with: the shared secret, or its own random key.
    key: Vec<u8>,
    shared: bool,
}

/// What a peer published about itself, for [`ForwardAuth::peer_key`].
#[derive(Clone, Copy, Debug)]
pub struct PeerAuth<'a> {
    /// Its node ID.
    pub id: &'a str,
    /// Its proxy address.
    pub proxy_addr: &'a str,
    /// Its `forward_key` entry.
    pub forward_key: Option<&'a str>,
    /// Its `member_proof` entry.
    pub member_proof: Option<&'a str>,
}

/// How to reach a peer with a relayed request: the key to sign for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerKey(pub(super) Vec<u8>);

impl ForwardAuth {
    /// Keys for node `own_id`: from `secret` when set, else a fresh random one.
    ///
    /// # Errors
    /// The system's random generator failed.
    pub fn new(own_id: &str, secret: Option<&str>) -> anyhow::Result<Self> {
        let (key, shared) = match secret {
            Some(secret) => (secret.as_bytes().to_vec(), true),
            None => {
                let mut key = vec![0u8; 32];
                aws_lc_rs::rand::SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| anyhow::anyhow!("no random bytes for the forwarding key"))?;
                (key, false)
            }
        };
        Ok(Self {
            own_id: own_id.to_owned(),
            key,
            shared,
        })
    }

    /// The gossip entry this node, reached at `proxy_addr`, publishes so that peers can sign
    /// for it.
    pub(crate) fn published(&self, proxy_addr: &str) -> (&'static str, String) {
        if self.shared {
            (
                MEMBER_PROOF,
                member_proof(&self.key, &self.own_id, proxy_addr),
            )
        } else {
            (FORWARD_KEY, to_hex(&self.key))
        }
    }

    /// The key to sign requests for `peer`; none when the two nodes cannot authenticate each
    /// other (one has a secret the other lacks, their secrets differ, or the peer's proof does
    /// not match its ID and address), and so must not route to each other.
    pub fn peer_key(&self, peer: &PeerAuth<'_>) -> Option<PeerKey> {
        if self.shared {
            let proof = from_hex(peer.member_proof?)?;
            let key = hmac::Key::new(hmac::HMAC_SHA256, &self.key);
            let message = member_message(peer.id, peer.proxy_addr);
            hmac::verify(&key, message.as_bytes(), &proof)
                .ok()
                .map(|()| PeerKey(self.key.clone()))
        } else if peer.member_proof.is_some() {
            None
        } else {
            from_hex(peer.forward_key?).map(PeerKey)
        }
    }

    /// Whether `headers` carry a valid signature for this node of a request with `method` and
    /// `path` (path and query).
    pub(crate) fn verify(&self, headers: &HeaderMap, method: &Method, path: &str) -> bool {
        let Some((timestamp, signature)) = headers
            .get(SIGNATURE_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once('.'))
        else {
            return false;
        };
        let (Ok(seconds), Some(signature)) = (timestamp.parse::<u64>(), from_hex(signature)) else {
            return false;
        };
        let now = unix_seconds();
        if now.abs_diff(seconds) > MAX_SKEW.as_secs() {
            return false;
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.key);
        let message = message(seconds, &self.own_id, method, path);
        hmac::verify(&key, message.as_bytes(), &signature).is_ok()
    }
}

impl PeerKey {
    /// The signature header for a request with `method` and `path` to node `target_id`.
    pub fn sign(&self, target_id: &str, method: &Method, path: &str) -> HeaderValue {
        let seconds = unix_seconds();
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let tag = hmac::sign(&key, message(seconds, target_id, method, path).as_bytes());
        HeaderValue::from_str(&format!("{seconds}.{}", to_hex(tag.as_ref())))
            .expect("digits, a dot and hex are a valid header value")
    }
}

fn message(seconds: u64, target_id: &str, method: &Method, path: &str) -> String {
    format!("piko-forward\n{seconds}\n{target_id}\n{method}\n{path}")
}

/// Proves that node `id`, at `proxy_addr`, knows the shared secret.
fn member_proof(secret: &[u8], id: &str, proxy_addr: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    to_hex(hmac::sign(&key, member_message(id, proxy_addr).as_bytes()).as_ref())
}

fn member_message(id: &str, proxy_addr: &str) -> String {
    format!("piko-member\n{id}\n{proxy_addr}")
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(key: &PeerKey, target: &str, path: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(SIGNATURE_HEADER, key.sign(target, &Method::GET, path));
        headers
    }

    fn peer<'a>(id: &'a str, published: &'a (&'static str, String)) -> PeerAuth<'a> {
        let (name, value) = published;
        PeerAuth {
            id,
            proxy_addr: "10.0.0.1:8000",
            forward_key: (*name == FORWARD_KEY).then_some(value.as_str()),
            member_proof: (*name == MEMBER_PROOF).then_some(value.as_str()),
        }
    }

    #[test]
    fn per_node_keys_sign_for_their_node_only() {
        let (a, b) = (
            ForwardAuth::new("a", None).unwrap(),
            ForwardAuth::new("b", None).unwrap(),
        );
        let b_published = b.published("10.0.0.1:8000");
        assert_eq!(b_published.0, FORWARD_KEY);
        let for_b = a.peer_key(&peer("b", &b_published)).unwrap();
        assert!(b.verify(&signed(&for_b, "b", "/x?y"), &Method::GET, "/x?y"));
        // Another path, method, target or key: refused.
        assert!(!b.verify(&signed(&for_b, "b", "/x?y"), &Method::GET, "/other"));
        assert!(!b.verify(&signed(&for_b, "b", "/x"), &Method::POST, "/x"));
        assert!(!b.verify(&signed(&for_b, "c", "/x"), &Method::GET, "/x"));
        let a_published = a.published("10.0.0.2:8000");
        let for_a = b.peer_key(&peer("a", &a_published)).unwrap();
        assert!(!b.verify(&signed(&for_a, "b", "/x"), &Method::GET, "/x"));
        // Garbage, or none at all.
        let mut headers = HeaderMap::new();
        assert!(!b.verify(&headers, &Method::GET, "/x"));
        for bad in ["true", "1.zz", "x.00", "1.", ".00"] {
            headers.insert(SIGNATURE_HEADER, HeaderValue::from_static(bad));
            assert!(!b.verify(&headers, &Method::GET, "/x"), "{bad}");
        }
    }

    #[test]
    fn old_signatures_are_refused() {
        let b = ForwardAuth::new("b", None).unwrap();
        let key = hmac::Key::new(hmac::HMAC_SHA256, &b.key);
        let stale = unix_seconds() - MAX_SKEW.as_secs() - 10;
        let tag = hmac::sign(&key, message(stale, "b", &Method::GET, "/").as_bytes());
        let mut headers = HeaderMap::new();
        headers.insert(
            SIGNATURE_HEADER,
            HeaderValue::from_str(&format!("{stale}.{}", to_hex(tag.as_ref()))).unwrap(),
        );
        assert!(!b.verify(&headers, &Method::GET, "/"));
    }

    #[test]
    fn a_shared_secret_pairs_only_nodes_that_prove_they_know_it() {
        let a = ForwardAuth::new("a", Some("s3cret")).unwrap();
        let b = ForwardAuth::new("b", Some("s3cret")).unwrap();
        let other = ForwardAuth::new("c", Some("different")).unwrap();
        let open = ForwardAuth::new("d", None).unwrap();
        let b_published = b.published("10.0.0.1:8000");
        assert_eq!(b_published.0, MEMBER_PROOF);
        assert!(!b_published.1.contains("s3cret"));
        let for_b = a.peer_key(&peer("b", &b_published)).unwrap();
        assert!(b.verify(&signed(&for_b, "b", "/"), &Method::GET, "/"));
        // B's proof copied by a node with another ID or address proves nothing.
        assert_eq!(a.peer_key(&peer("forged", &b_published)), None);
        let mut moved = peer("b", &b_published);
        moved.proxy_addr = "203.0.113.9:8000";
        assert_eq!(a.peer_key(&moved), None);
        assert_eq!(
            a.peer_key(&peer("c", &other.published("10.0.0.1:8000"))),
            None
        );
        assert_eq!(
            a.peer_key(&peer("d", &open.published("10.0.0.1:8000"))),
            None
        );
        assert_eq!(open.peer_key(&peer("b", &b_published)), None);
    }
}
