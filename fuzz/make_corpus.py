#!/usr/bin/env python3
"""Writes the committed seed corpus, fuzz/corpus/<target>/, from scratch.

Standard library only, plus the `openssl` command for the RS256/ES256 seeds (signed with the
test keys in fuzz/keys/). Run it again after changing a target's input format; the seeds are
valid inputs, so the fuzzer starts from the interesting paths instead of finding them.
"""

import base64
import hashlib
import hmac
import json
import pathlib
import shutil
import struct
import subprocess

FUZZ = pathlib.Path(__file__).resolve().parent
CORPUS = FUZZ / "corpus"
KEYS = FUZZ / "keys"
# Seeds made by this script are named so; crashes added as regression seeds keep their names.
PREFIX = "seed-"


def write(target, name, data):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (folder / f"{PREFIX}{name}").write_bytes(data)


def clear_seeds():
    for path in CORPUS.glob(f"*/{PREFIX}*"):
        path.unlink()


# ---- yamux -------------------------------------------------------------------------------------

DATA, WINDOW_UPDATE, PING, GO_AWAY = range(4)
SYN, ACK, FIN, RST = 1, 2, 4, 8
INITIAL_WINDOW = 256 * 1024


def frame(ty, flags, stream_id, length, payload=b""):
    return struct.pack(">BBHII", 0, ty, flags, stream_id, length) + payload


def mux_frames():
    wire = (
        frame(WINDOW_UPDATE, SYN, 1, 0)
        + frame(DATA, 0, 1, 20, bytes(range(20)))
        + frame(PING, SYN, 0, 7)
        + frame(WINDOW_UPDATE, 0, 1, 4096)
        + frame(DATA, FIN, 1, 0)
        + frame(GO_AWAY, 0, 0, 0)
    )
    write("mux_frames", "whole", bytes([0]) + wire)
    write("mux_frames", "chunks-1-5-12", bytes([3, 0, 4, 11]) + wire)
    write("mux_frames", "byte-by-byte", bytes([1, 0]) + wire)
    bad_version = frame(PING, ACK, 0, 1) + b"\x01" + frame(PING, 0, 0, 0)[1:]
    write("mux_frames", "bad-version", bytes([2, 2, 6]) + bad_version)
    bad_type = frame(DATA, 0, 3, 2, b"ok") + b"\x00\x07" + frame(PING, 0, 0, 0)[2:]
    write("mux_frames", "bad-type", bytes([1, 12]) + bad_type)
    truncated = frame(DATA, SYN | FIN, 5, 1000, b"x" * 300)
    write("mux_frames", "truncated-data", bytes([2, 99, 200]) + truncated)


# Actions of piko_mux::fuzzing::session_script (the byte modulo 20).
RAW, PEER_FRAME, OPEN, ACCEPT, READ, WRITE = 0, 3, 8, 9, 10, 12
SHUTDOWN, RESET, RELEASE, TAKE_OUTPUT, TIMER, LOCAL_GO_AWAY, SHRINK, CLOSE = (
    13, 14, 15, 16, 17, 18, 19, 219)
# Length selectors of a peer frame.
LEN_ZERO, LEN_U8, LEN_U16, LEN_INITIAL, LEN_INITIAL_PLUS_1, LEN_RECEIVE_WINDOW, LEN_U32 = (
    0, 1, 3, 4, 5, 6, 7)


def stream(sid):
    """The id byte naming stream `sid` (0..15) directly."""
    return 128 + sid


def handle(index):
    """The id byte naming the application's `index`th stream handle."""
    return index


def peer(ty, flags, id_byte, selector, length=b"", split=6):
    return bytes([PEER_FRAME, ty, flags, id_byte, selector]) + length + bytes([split])


def session(config0, config1, *steps):
    return bytes([config0, config1]) + b"".join(steps)


def mux_session():
    # Server role (even IDs), default windows, backlog 256, 256 un-ACKed opens.
    server = 0b0011_1100
    write("mux_session", "accept-read-write-finish", session(
        server, 3,
        peer(WINDOW_UPDATE, SYN, stream(1), LEN_ZERO),
        peer(DATA, 0, stream(1), LEN_U8, bytes([100]), split=50),
        bytes([ACCEPT]),
        bytes([READ, 0, 0]),
        bytes([TAKE_OUTPUT]),
        bytes([WRITE, 0, 0, 16, 1]),
        bytes([SHUTDOWN, 0]),
        peer(WINDOW_UPDATE, FIN, stream(1), LEN_ZERO, split=0),
        bytes([READ, 0, 255]),
        bytes([RELEASE, 0]),
        bytes([TAKE_OUTPUT, TIMER, 10]),
    ))
    write("mux_session", "full-window-and-grants", session(
        server, 3,
        bytes([OPEN]),
        peer(WINDOW_UPDATE, ACK, handle(0), LEN_ZERO),
        peer(DATA, 0, handle(0), LEN_INITIAL, split=200),
        bytes([READ, 0, 255, READ, 0, 255, READ, 0, 255]),
        bytes([TAKE_OUTPUT]),
        peer(DATA, 0, handle(0), LEN_U16, bytes([0x80, 0x00])),
        peer(DATA, 0, handle(0), LEN_INITIAL_PLUS_1),
        bytes([TAKE_OUTPUT]),
    ))
    write("mux_session", "write-window-and-reset", session(
        server, 1,
        bytes([OPEN]),
        bytes([WRITE, 0, 0xff, 0xff, 3]),
        bytes([WRITE, 0, 0xff, 0xff, 0]),
        bytes([TAKE_OUTPUT]),
        peer(WINDOW_UPDATE, ACK, handle(0), LEN_U16, bytes([0x10, 0x00])),
        bytes([WRITE, 0, 0x10, 0x00, 1]),
        bytes([RESET, 0]),
        peer(DATA, RST, handle(0), LEN_U8, bytes([10])),
        bytes([READ, 0, 1, RELEASE, 0, TAKE_OUTPUT]),
    ))
    # Client role (odd IDs), keep-alive on.
    client = 0b1111_1100
    write("mux_session", "keepalive-and-go-away", session(
        client, 3,
        bytes([TIMER, 31]),
        bytes([TAKE_OUTPUT]),
        peer(PING, ACK, stream(0), LEN_ZERO),
        peer(PING, SYN, stream(0), LEN_U8, bytes([42])),
        bytes([TIMER, 31, TIMER, 5]),
        peer(GO_AWAY, 0, stream(0), LEN_ZERO),
        bytes([OPEN, LOCAL_GO_AWAY, ACCEPT, TAKE_OUTPUT]),
        bytes([TIMER, 20]),
    ))
    # Short close timeout: a stream detached before its open was acknowledged.
    write("mux_session", "detached-streams", session(
        server, 4 | 3,
        bytes([OPEN, OPEN]),
        bytes([SHUTDOWN, 0, RELEASE, 0]),
        peer(WINDOW_UPDATE, ACK, stream(2), LEN_ZERO),
        peer(DATA, 0, stream(2), LEN_U8, bytes([200])),
        bytes([SHUTDOWN, 0, RELEASE, 0]),
        bytes([TIMER, 11]),
        peer(DATA, FIN, stream(4), LEN_U8, bytes([5])),
        bytes([TIMER, 70, TAKE_OUTPUT]),
    ))
    # 512 KiB windows, backlog 1: a second open is refused; GoAway resets the queued one.
    write("mux_session", "backlog-and-large-window", session(
        0b0011_0110, 3,
        peer(WINDOW_UPDATE, SYN, stream(1), LEN_ZERO),
        peer(DATA, SYN, stream(3), LEN_U8, bytes([9])),
        peer(DATA, 0, stream(1), LEN_INITIAL),
        bytes([ACCEPT]),
        peer(DATA, 0, stream(1), LEN_RECEIVE_WINDOW),
        peer(WINDOW_UPDATE, SYN, stream(5), LEN_ZERO),
        bytes([LOCAL_GO_AWAY, TAKE_OUTPUT, SHRINK]),
    ))
    # A Data frame for an ID of ours that is not open yet, and the open while its payload is
    # still arriving (half of it now, the rest as raw input after the open).
    half = 0x80
    write("mux_session", "open-during-a-frame", session(
        server, 3,
        peer(DATA, half, stream(2), LEN_U8, bytes([100]), split=12),
        bytes([OPEN]),
        bytes([RAW, 50]) + bytes(50),
        bytes([READ, 0, 9, TAKE_OUTPUT]),
    ))
    write("mux_session", "protocol-errors", session(
        server, 3,
        peer(WINDOW_UPDATE, SYN, stream(2), LEN_ZERO),
        bytes([OPEN, RAW, 12]) + frame(PING, SYN, 9, 0),
        bytes([READ, 0, 3, WRITE, 0, 0, 1, 1, TAKE_OUTPUT, CLOSE]),
    ))


# ---- WebSocket ----------------------------------------------------------------------------------

CONT, TEXT, BINARY, CLOSE_OP, PING_OP, PONG_OP = 0, 1, 2, 8, 9, 10


def ws_frame(opcode, payload=b"", fin=True, masked=True, key=b"\x11\x22\x33\x44"):
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if masked else 0
    if len(payload) < 126:
        head = bytes([first, mask_bit | len(payload)])
    elif len(payload) < 65536:
        head = bytes([first, mask_bit | 126]) + struct.pack(">H", len(payload))
    else:
        head = bytes([first, mask_bit | 127]) + struct.pack(">Q", len(payload))
    if not masked:
        return head + payload
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + body


def ws_stream():
    close = ws_frame(CLOSE_OP, struct.pack(">H", 1000) + b"bye")
    write("ws_stream", "binary-then-close",
          bytes([0]) + ws_frame(BINARY, b"hello ") + ws_frame(BINARY, b"world") + close)
    write("ws_stream", "half-close-marker",
          bytes([0x01]) + ws_frame(BINARY, b"abc") + ws_frame(BINARY, b"")
          + ws_frame(BINARY, b"after the end"))
    write("ws_stream", "fragments-and-ping-as-transport",
          bytes([0x02]) + ws_frame(BINARY, b"hel", fin=False) + ws_frame(PING_OP, b"p")
          + ws_frame(CONT, b"lo") + ws_frame(PONG_OP, b"") + close)
    write("ws_stream", "text-is-an-error", bytes([0x10]) + ws_frame(TEXT, b"text"))
    write("ws_stream", "unmasked-client-frame",
          bytes([0x20]) + ws_frame(BINARY, b"plain", masked=False))
    write("ws_stream", "vanishing-client-mid-frame",
          bytes([0x0c]) + ws_frame(BINARY, b"x" * 300)[:150])
    write("ws_stream", "over-the-size-limit",
          bytes([0x31]) + ws_frame(BINARY, b"y" * 300)
          + bytes([0x82, 0xff]) + struct.pack(">Q", 1 << 40) + b"\0\0\0\0")
    # Bit 6: we are the client, so the server's frames come unmasked.
    write("ws_stream", "client-role-fragments-and-ping",
          bytes([0x40]) + ws_frame(BINARY, b"hel", fin=False, masked=False)
          + ws_frame(PING_OP, b"p", masked=False) + ws_frame(CONT, b"lo", masked=False)
          + ws_frame(CLOSE_OP, struct.pack(">H", 1000), masked=False))
    write("ws_stream", "client-role-masked-frame-is-an-error",
          bytes([0x48]) + ws_frame(BINARY, b"masked"))
    write("ws_stream", "control-frame-over-125-bytes",
          bytes([0x00]) + ws_frame(BINARY, b"ok") + ws_frame(PING_OP, b"p" * 126))


# ---- JWT ----------------------------------------------------------------------------------------

HMAC_SECRET = b"fuzz-hmac-secret"
PROXY_SECRET = b"fuzz-proxy-secret"


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segments(header, claims):
    return (b64(json.dumps(header, separators=(",", ":")).encode()) + "."
            + b64(json.dumps(claims, separators=(",", ":")).encode()))


def hs_token(claims, alg="HS256", secret=HMAC_SECRET, extra_header=None):
    header = {"alg": alg, "typ": "JWT", **(extra_header or {})}
    signed = segments(header, claims)
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return signed + "." + b64(hmac.new(secret, signed.encode(), digest).digest())


def openssl_sign(key, data):
    return subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", str(KEYS / key)],
        input=data, capture_output=True, check=True).stdout


def der_ecdsa_to_raw(der, size=32):
    """An ECDSA signature from DER (SEQUENCE of two INTEGERs) to JOSE's r ‖ s."""
    assert der[0] == 0x30
    at = 2 if der[1] < 0x80 else 3
    values = []
    for _ in range(2):
        assert der[at] == 0x02
        length = der[at + 1]
        values.append(der[at + 2:at + 2 + length].lstrip(b"\0").rjust(size, b"\0"))
        at += 2 + length
    return values[0] + values[1]


def rs_token(claims):
    signed = segments({"alg": "RS256", "typ": "JWT"}, claims)
    return signed + "." + b64(openssl_sign("rsa_private.pem", signed.encode()))


def es_token(claims):
    signed = segments({"alg": "ES256", "typ": "JWT", "kid": "k1"}, claims)
    der = openssl_sign("ec_private.pem", signed.encode())
    return signed + "." + b64(der_ecdsa_to_raw(der))


def jwt_verify():
    seeds = {
        "hs256-exp-1e20-endpoints": hs_token({"exp": 1e20, "piko": {"endpoints": ["a", "b"]}}),
        "hs256-nbf-negative": hs_token({"nbf": -5, "exp": 1_900_000_000}),
        "hs384-empty-endpoints": hs_token({"piko": {"endpoints": []}}, alg="HS384"),
        "hs512-fractional-exp": hs_token({"exp": 1_800_000_000.5, "iat": "x"}, alg="HS512"),
        "hs256-expired": hs_token({"exp": 1_700_000_000}),
        "hs256-endpoints-not-a-list": hs_token({"piko": {"endpoints": "e"}}),
        "hs256-exp-a-string": hs_token({"exp": "soon"}),
        "hs256-exp-huge": hs_token({"exp": 1e308, "nbf": -1e308}),
        "hs256-piko-null": hs_token({"piko": None, "aud": ["x"]}),
        "rs256-audience-list": rs_token({
            "aud": ["x", "fuzz-audience"], "iss": "fuzz-issuer", "exp": 1.9e9,
            "piko": {"endpoints": ["e", "f/g"]}}),
        "rs256-wrong-issuer": rs_token({"aud": "fuzz-audience", "iss": "other"}),
        "es256-nbf-very-negative": es_token({
            "aud": "fuzz-audience", "iss": "fuzz-issuer", "nbf": -1e300,
            "piko": {"endpoints": ["e"]}}),
        "alg-none": segments({"alg": "none"}, {"exp": 1e20}) + ".",
        "two-segments": "eyJhbGciOiJIUzI1NiJ9.e30",
        "header-not-json": b64(b"{alg") + "." + b64(b"{}") + ".sig",
    }
    for name, token in seeds.items():
        write("jwt_verify", name, token)


# ---- gossip -------------------------------------------------------------------------------------

def gossip_seal():
    sealed = 1
    product, advance, replay, raw = 2, 3, 4, 0

    def fragment(message_id, index, count, chunk, skew=0, sender=0):
        return bytes([sealed, message_id, index << 4 | count, skew, sender, len(chunk)]) + chunk

    write("gossip_seal", "single-then-replay",
          fragment(3, 0, 1, b"hello") + bytes([replay]))
    write("gossip_seal", "two-fragments-two-senders",
          fragment(5, 1, 2, b"world", sender=1) + fragment(5, 0, 2, b"hello ", sender=0)
          + fragment(5, 0, 2, b"hello ", sender=1))
    write("gossip_seal", "bad-fragment-numbers",
          fragment(1, 0, 0, b"a") + fragment(1, 1, 1, b"b") + fragment(1, 15, 15, b"c"))
    write("gossip_seal", "product-message-reversed",
          bytes([product, 0x40, 0x00, 0x01]) + bytes([product, 0, 3, 0x80]))
    write("gossip_seal", "stale-seals-and-waiting",
          fragment(2, 0, 2, b"x", skew=3) + fragment(2, 0, 2, b"x", skew=1)
          + bytes([advance, 2]) + fragment(2, 1, 2, b"y") + bytes([advance, 120, replay]))
    write("gossip_seal", "raw-datagrams",
          bytes([raw, 0, 4]) + b"pk\x01\x00" + bytes([raw, 0, 48]) + b"pk" + bytes(46))


# ---- proxy --------------------------------------------------------------------------------------

def proxy_request_head():
    def request(name, options, text):
        write("proxy_request_head", name, bytes([options]) + text.encode())

    request("hop-by-hop", 0,
            "GET /a/b?c=d HTTP/1.1\r\nHost: e.example.com\r\n"
            "Connection: keep-alive, x-custom\r\nX-Custom: 1\r\nKeep-Alive: timeout=5\r\n"
            "TE: trailers, deflate\r\nProxy-Connection: x\r\nX-Forwarded-For: 203.0.113.1\r\n\r\n")
    request("endpoint-header-body", 0,
            "POST /upload HTTP/1.1\r\nx-piko-endpoint: e\r\nContent-Length: 5\r\n\r\nhello")
    request("chunked-body", 0,
            "POST / HTTP/1.1\r\nHost: e.x\r\nTransfer-Encoding: chunked\r\n\r\n"
            "5\r\nhello\r\n0\r\n\r\n")
    request("tenant", 0, "GET / HTTP/1.1\r\nHost: e.x\r\nx-piko-tenant-id: t\r\n\r\n")
    request("unknown-tenant", 0, "GET / HTTP/1.1\r\nHost: e.x\r\nx-piko-tenant-id: u\r\n\r\n")
    request("tcp-route", 0,
            "GET /_piko/v1/tcp/e HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nx-piko-half-close: true\r\n\r\n")
    request("tcp-route-redirect", 0, "GET /_piko/v1/tcp/e%2Fx/ HTTP/1.1\r\nHost: x\r\n\r\n")
    token = hs_token({"exp": 1e20, "piko": {"endpoints": ["e"]}}, secret=PROXY_SECRET)
    request("token", 1, f"GET / HTTP/1.1\r\nHost: e.x\r\nAuthorization: Bearer {token}\r\n\r\n")
    request("piko-token-header", 1,
            f"GET / HTTP/1.1\r\nx-piko-endpoint: e\r\nx-piko-authorization: Bearer {token}\r\n"
            "Authorization: Basic dTpw\r\n\r\n")
    request("websocket-upgrade", 0,
            "GET /ws HTTP/1.1\r\nHost: e.x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    request("absolute-form-pipelined", 2,
            "GET http://e.example.com/a?b HTTP/1.1\r\n\r\n"
            "GET //other.example.com/x HTTP/1.1\r\nHost: e.x:80\r\n\r\n")
    request("missing-endpoint", 0,
            "GET / HTTP/1.1\r\nHost: localhost\r\nx-piko-signature: 1.00\r\n\r\n")
    request("http-1-0", 0, "OPTIONS * HTTP/1.0\r\nHost: [::1]:80\r\n\r\n")


# ---- config files -------------------------------------------------------------------------------

def config_yaml():
    server, agent, forward = 0, 2, 4
    write("config_yaml", "server-all-sections", bytes([server]) + b"""
cluster:
  node_id: n1
  join: [a:8003, b:8003]
  join_timeout: 1m
  gossip: {bind_addr: ":8003", interval: 100ms, max_packet_size: 1400}
  secret: s
proxy:
  bind_addr: ":8000"
  timeout: 30s
  max_requests_per_endpoint: -1
  access_log:
    level: info
    request_headers: {allow_list: [a], block_list: []}
  http: {read_timeout: 1.5h, idle_timeout: 5m, max_header_bytes: 1048576}
  auth: {hmac_secret_key: k, jwks: {endpoint: "", cache_ttl: 0s}}
upstream:
  rebalance: {threshold: 0.5, shed_rate: 0.005, min_conns: 50}
  tenants:
    - id: t
      auth: {hmac_secret_key: tk}
admin: {bind_addr: ":8002", tls: {}}
log: {level: debug, subsystems: [proxy]}
grace_period: 1m30s
shutdown_delay: 0
""")
    write("config_yaml", "agent-listeners", bytes([agent]) + b"""
connect:
  url: http://piko.example.com:8001
  token: t0ken
  tenant_id: t
  timeout: 30s
listeners:
  - endpoint_id: my-api
    addr: "3000"
    protocol: http
    timeout: 300ms
    http_client: {keep_alive_timeout: 1us, max_idle_conns: 10, disable_compression: true}
  - endpoint_id: db
    addr: localhost:5432
    protocol: tcp
server: {enabled: false, bind_addr: ":5000"}
grace_period: 1m
""")
    write("config_yaml", "forward-ports", bytes([forward]) + b"""
connect:
  url: http://localhost:8000
  tls: {insecure_skip_verify: false}
ports:
  - addr: "3000"
    endpoint_id: my-endpoint
""")
    write("config_yaml", "expanded-env", bytes([server | 1])
          + b"proxy:\n  timeout: ${FUZZ_VAR}\n  bind_addr: ${UNSET:-:8000}\n"
            b"grace_period: $FUZZ_VAR\nlog: {level: ${}\n")
    write("config_yaml", "unknown-key-and-bare-duration", bytes([server])
          + b"proxy:\n  bind_adr: \":1\"\n  timeout: 30\n")
    write("config_yaml", "anchors-and-tags", bytes([agent])
          + b"connect: &c {url: !!str x, timeout: 1h}\nlisteners: [*c, {addr: *c}]\n")


def main():
    clear_seeds()
    mux_frames()
    mux_session()
    ws_stream()
    jwt_verify()
    gossip_seal()
    proxy_request_head()
    config_yaml()
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    print(f"corpus: {sum(1 for p in CORPUS.rglob('*') if p.is_file())} files, {total} bytes")


if __name__ == "__main__":
    main()
