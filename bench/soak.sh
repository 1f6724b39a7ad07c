#!/usr/bin/env bash
# Soak (not run in CI): MINUTES (default 30) of mixed HTTP, WebSocket and TCP traffic in bursts,
# through fault proxies on both sides of the server (delays, resets, stalls, dropped bytes), with
# agents coming and going; the server's and an agent's RSS, open fds and live tasks are sampled
# every 5 s. Fails if RSS grows more than 5 % between the second quarter and the last, or if fds or
# tasks do not return to their level between bursts. Release build, as users run it.
#
#   bench/soak.sh                 # 30 minutes
#   MINUTES=5 OUT=/tmp/soak bench/soak.sh
#
# The samples are written to $OUT/samples.json with every process's log.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${MINUTES:-30}
if ! /usr/bin/python3 -c 'import websockets.sync.client' 2>/dev/null; then
  apt-get update -qq && apt-get install -y -qq python3-websockets >/dev/null
fi
echo "building (release) ..." >&2
cargo build -q --release -p piko-cli -p piko-testkit
out=${OUT:-$(mktemp -d)}
echo "soak: $minutes minutes, results in $out" >&2
exec /usr/bin/python3 bench/soak.py --piko target/release/piko --fault-proxy target/release/fault-proxy \
  --minutes "$minutes" --out "$out"
