"""The soak driver behind bench/soak.sh: real piko processes behind fault proxies, bursts of mixed
HTTP, WebSocket and TCP traffic with agents churning, and the server's and agent's RSS, open file
descriptors and live tasks sampled every few seconds. Fails if RSS grows more than 5 % between the
second quarter of the run and the last, or if fds or tasks do not come back to their level between
bursts.

    python3 bench/soak.py --piko target/release/piko --fault-proxy target/release/fault-proxy \
        --minutes 30 --out soak-results
"""

import argparse
import asyncio
import http.client
import json
import os
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SAMPLE_EVERY = 5.0
BURST_SECONDS = 20.0
QUIET_SECONDS = 10.0
RSS_GROWTH_LIMIT = 0.05


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- services behind the agents --------------------------------------------------------------


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"ok {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            while True:
                data = self.request.recv(65536)
                if not data:
                    return
                self.request.sendall(data)
        except OSError:
            pass  # the fault proxies reset connections on purpose


class ThreadingTcp(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


class QuietHttp(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the fault proxies reset connections on purpose


def start_services():
    http_server = QuietHttp(("127.0.0.1", 0), Hello)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    echo_server = ThreadingTcp(("127.0.0.1", 0), Echo)
    threading.Thread(target=echo_server.serve_forever, daemon=True).start()
    ws_port = free_port()

    def ws_main():
        import websockets

        async def echo(conn, *_path):
            try:
                async for message in conn:
                    await conn.send(message)
            except websockets.exceptions.ConnectionClosed:
                pass

        async def serve():
            async with websockets.serve(echo, "127.0.0.1", ws_port):
                await asyncio.Future()

        asyncio.run(serve())

    threading.Thread(target=ws_main, daemon=True).start()
    return http_server.server_address[1], echo_server.server_address[1], ws_port


# ---- processes -------------------------------------------------------------------------------


class Procs:
    def __init__(self, out):
        self.out = out
        self.children = []

    def start(self, name, args):
        log = open(os.path.join(self.out, f"{name}.log"), "ab")
        child = subprocess.Popen(args, stdout=log, stderr=log)
        self.children.append(child)
        return child

    def stop_all(self):
        for child in self.children:
            if child.poll() is None:
                child.terminate()
        for child in self.children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


def fault_proxy(procs, binary, name, upstream, schedule):
    port = free_port()
    procs.start(
        name,
        [binary, "--listen", f"127.0.0.1:{port}", "--upstream", upstream, "--schedule", schedule],
    )
    return port


def wait_until(what, check, limit=30.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"soak: {what} never happened")


# ---- sampling --------------------------------------------------------------------------------


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def alive_tasks(metrics_url):
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("piko_runtime_alive_tasks "):
                return int(float(line.split()[1]))
    return -1


# ---- traffic ---------------------------------------------------------------------------------


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = {}
        self.failed = {}
        # Answers that were not their own request's: any one fails the soak.
        self.mixups = []

    def mixup(self, what):
        with self.lock:
            self.mixups.append(what)

    def add(self, kind, ok):
        with self.lock:
            table = self.ok if ok else self.failed
            table[kind] = table.get(kind, 0) + 1


def http_client(addr, stop, counts):
    host, port = addr
    conn = None
    n = 0
    while not stop.is_set():
        n += 1
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=5)
            path = f"/r{threading.get_ident()}-{n}"
            conn.request("GET", path, headers={"x-piko-endpoint": "web"})
            response = conn.getresponse()
            body = response.read()
            if response.status == 200 and body != f"ok {path}".encode():
                counts.mixup(f"{path} answered with {body[:64]!r}")
            counts.add("http", response.status == 200)
        except (OSError, http.client.HTTPException):
            counts.add("http", False)
            conn = None
            time.sleep(0.05)


def ws_client(proxy_port, stop, counts):
    import websockets

    # websockets 14 renamed the handshake's header argument (Debian 12 ships 10.4).
    major = int(websockets.__version__.split(".")[0])
    header_arg = "additional_headers" if major >= 14 else "extra_headers"

    async def sessions():
        while not stop.is_set():
            try:
                async with websockets.connect(
                    f"ws://127.0.0.1:{proxy_port}/",
                    open_timeout=5,
                    close_timeout=2,
                    **{header_arg: {"x-piko-endpoint": "ws"}},
                ) as ws:
                    for i in range(10):
                        await ws.send(f"m{i}")
                        got = await asyncio.wait_for(ws.recv(), 5)
                        if got != f"m{i}":
                            counts.mixup(f"WebSocket message m{i} echoed as {got!r}")
                counts.add("websocket", True)
            except Exception:  # noqa: BLE001 - any failure of a fault-ridden connection counts
                counts.add("websocket", False)
                await asyncio.sleep(0.05)

    asyncio.run(sessions())


def tcp_client(forward_port, stop, counts):
    payload = os.urandom(1024)
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", forward_port), timeout=5) as tcp:
                tcp.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = tcp.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                if got and not payload.startswith(got):
                    counts.mixup("a TCP echo came back with other bytes")
                counts.add("tcp", got == payload)
        except OSError:
            counts.add("tcp", False)
            time.sleep(0.05)


def burst(seconds, targets, counts):
    stop = threading.Event()
    threads = [threading.Thread(target=t, args=(*a, stop, counts), daemon=True) for t, a in targets]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=15)


# ---- the run ---------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--piko", required=True)
    parser.add_argument("--fault-proxy", required=True)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    procs = Procs(args.out)
    try:
        return run(args, procs)
    finally:
        procs.stop_all()


def run(args, procs):
    piko = args.piko
    http_port, echo_port, ws_port = start_services()
    proxy, upstream, admin = free_port(), free_port(), free_port()
    server = procs.start(
        "server",
        [
            piko, "server",
            "--proxy.bind-addr", f"127.0.0.1:{proxy}",
            "--upstream.bind-addr", f"127.0.0.1:{upstream}",
            "--admin.bind-addr", f"127.0.0.1:{admin}",
            "--cluster.gossip.bind-addr", "127.0.0.1:0",
            "--log.level", "warn",
            "--proxy.access-log.disable",
        ],
    )
    wait_until("the server serving", lambda: urllib.request.urlopen(
        f"http://127.0.0.1:{admin}/ready", timeout=1).status == 200)
    # Agents reach the server through one fault proxy, clients through another.
    agent_side = fault_proxy(
        procs, args.fault_proxy, "faults-agents", f"127.0.0.1:{upstream}",
        "pass:25s,delay=20ms:5s,reset:0s,pass:15s,stall:2s,pass:10s,drop:1s",
    )
    client_side = fault_proxy(
        procs, args.fault_proxy, "faults-clients", f"127.0.0.1:{proxy}",
        "pass:15s,reset:0s,delay=20ms:5s,stall:1s,pass:10s,drop:1s",
    )
    connect = ["--connect.url", f"http://127.0.0.1:{agent_side}", "--log.level", "warn"]
    agent_metrics = free_port()
    agent = procs.start(
        "agent-web",
        [piko, "agent", "http", "web", str(http_port), *connect,
         "--server.enabled", "--server.bind-addr", f"127.0.0.1:{agent_metrics}"],
    )
    procs.start("agent-ws", [piko, "agent", "http", "ws", str(ws_port), *connect])
    procs.start("agent-tcp", [piko, "agent", "tcp", "echo", str(echo_port), *connect])
    forward_port = free_port()
    procs.start(
        "forward",
        [piko, "forward", "tcp", f"127.0.0.1:{forward_port}", "echo",
         "--connect.url", f"http://127.0.0.1:{client_side}", "--log.level", "warn"],
    )

    def served():
        conn = http.client.HTTPConnection("127.0.0.1", proxy, timeout=2)
        conn.request("GET", "/up", headers={"x-piko-endpoint": "web"})
        return conn.getresponse().status == 200

    wait_until("the tunnel serving", served)
    server_metrics = f"http://127.0.0.1:{admin}/metrics"
    agent_metrics_url = f"http://127.0.0.1:{agent_metrics}/metrics"
    targets = (
        [(http_client, (("127.0.0.1", client_side),)) for _ in range(6)]
        + [(ws_client, (client_side,)) for _ in range(2)]
        + [(tcp_client, (forward_port,)) for _ in range(2)]
    )
    counts = Counts()
    samples = []
    started = time.monotonic()
    end = started + args.minutes * 60
    churned = None
    stop_sampling = threading.Event()

    def sample_loop():
        while not stop_sampling.is_set():
            row = {"t": round(time.monotonic() - started, 1), "phase": phase[0]}
            for name, pid, url in (("server", server.pid, server_metrics),
                                   ("agent", agent.pid, agent_metrics_url)):
                try:
                    row[f"{name}_rss_kib"] = rss_kib(pid)
                    row[f"{name}_fds"] = fds(pid)
                    row[f"{name}_tasks"] = alive_tasks(url)
                except OSError:
                    row[f"{name}_tasks"] = -1
            samples.append(row)
            stop_sampling.wait(SAMPLE_EVERY)

    phase = ["quiet"]
    sampler = threading.Thread(target=sample_loop, daemon=True)
    sampler.start()
    while time.monotonic() < end:
        # Agent churn: one more agent for `web` comes and goes every cycle.
        if churned is None:
            churned = procs.start("agent-churn", [piko, "agent", "http", "web", str(http_port), *connect])
        else:
            churned.terminate()
            churned.wait(timeout=10)
            churned = None
        phase[0] = "burst"
        burst(min(BURST_SECONDS, max(0.0, end - time.monotonic())), targets, counts)
        phase[0] = "quiet"
        time.sleep(QUIET_SECONDS)
        # The last sample of each quiet period is the level the process came back to.
        samples.append({**samples[-1], "phase": "settled"} if samples else {})
    stop_sampling.set()
    sampler.join(timeout=10)

    with open(os.path.join(args.out, "samples.json"), "w") as f:
        json.dump(samples, f, indent=1)
    return verdict(samples, counts, args)


def verdict(samples, counts, args):
    n = len(samples)
    quarter = max(1, n // 4)
    second, last = samples[quarter:2 * quarter], samples[-quarter:]
    failures = []
    report = [f"soak: {args.minutes:g} minutes, {n} samples every {SAMPLE_EVERY:g} s"]
    report.append(f"  traffic ok: {counts.ok}")
    report.append(f"  traffic failed visibly (faults injected): {counts.failed}")
    if counts.mixups:
        failures.append(f"{len(counts.mixups)} answers were not their request's: {counts.mixups[:3]}")
    for kind in ("http", "websocket", "tcp"):
        if not counts.ok.get(kind):
            failures.append(f"no {kind} traffic got through")
    for name in ("server", "agent"):
        key = f"{name}_rss_kib"
        before = statistics.mean(s[key] for s in second if key in s)
        after = statistics.mean(s[key] for s in last if key in s)
        growth = (after - before) / before
        report.append(
            f"  {name} RSS: {before / 1024:.1f} MiB (2nd quarter) -> {after / 1024:.1f} MiB (last), {growth:+.1%}"
        )
        if growth > RSS_GROWTH_LIMIT:
            failures.append(f"{name} RSS grew {growth:.1%}")
        for what, slack in (("fds", 5), ("tasks", 10)):
            key = f"{name}_{what}"
            settled = [s[key] for s in samples if s.get("phase") == "settled" and s.get(key, -1) >= 0]
            if len(settled) < 4:
                failures.append(f"too few settled samples of {key}")
                continue
            early = settled[len(settled) // 4: len(settled) // 2] or settled[:1]
            late = settled[-max(1, len(settled) // 4):]
            peak = max(s[key] for s in samples if s.get(key, -1) >= 0)
            report.append(
                f"  {name} {what} between bursts: {max(early)} (2nd quarter) -> {max(late)} (last); peak in bursts {peak}"
            )
            if max(late) > max(early) + slack:
                failures.append(f"{name} {what} did not come back: {max(early)} -> {max(late)}")
    print("\n".join(report))
    if failures:
        print("soak: FAILED: " + "; ".join(failures))
        return 1
    print("soak: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
