#!/usr/bin/env bash
# Cluster forwarding benchmark: the cost of reaching an upstream through another node. Two
# `piko server` nodes (release build) in one cluster, one `piko agent http` connected to node A in
# front of nginx; wrk against A's proxy port (local upstream) and against B's (relayed to A), in
# the same run, on loopback.
#
#   bench/cluster.sh                    # 10 s of wrk per phase, 256 MiB download
#   DURATION=5 BULK_MIB=64 bench/cluster.sh
#
# Prints one table with the ratio relayed/local.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${DURATION:-10}
bulk_mib=${BULK_MIB:-256}

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq nginx-light wrk >/dev/null
fi
# shellcheck source=bench/lib.sh
. bench/lib.sh
build_piko

nginx_port=$(free_port)
a_proxy=$(free_port)
a_upstream=$(free_port)
a_gossip=$(free_port)
b_proxy=$(free_port)
start_nginx "$nginx_port" "$bulk_mib"
"$piko" server --proxy.bind-addr "127.0.0.1:$a_proxy" --upstream.bind-addr "127.0.0.1:$a_upstream" \
  --admin.bind-addr 127.0.0.1:0 --cluster.gossip.bind-addr "127.0.0.1:$a_gossip" --log.level warn \
  2>"$work/a.log" &
pids+=($!)
"$piko" server --proxy.bind-addr "127.0.0.1:$b_proxy" --upstream.bind-addr 127.0.0.1:0 \
  --admin.bind-addr 127.0.0.1:0 --cluster.gossip.bind-addr 127.0.0.1:0 \
  --cluster.join "127.0.0.1:$a_gossip" --log.level warn 2>"$work/b.log" &
pids+=($!)
"$piko" agent http bench "$nginx_port" --connect.url "http://127.0.0.1:$a_upstream" --log.level warn \
  2>"$work/agent.log" &
pids+=($!)

local_url="http://127.0.0.1:$a_proxy"
relayed_url="http://127.0.0.1:$b_proxy"
# Bounded wait until both nodes serve the endpoint.
for url in "$local_url" "$relayed_url"; do
  for _ in $(seq 1 200); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'x-piko-endpoint: bench' "$url/hello")" = 200 ]; then
      break
    fi
    sleep 0.05
  done
  [ "$(curl -s -H 'x-piko-endpoint: bench' "$url/hello")" = "Hello, world!" ] || {
    echo "$url not serving; logs:" >&2
    cat "$work/a.log" "$work/b.log" "$work/agent.log" >&2
    exit 1
  }
done

results="$work/results"
run_wrk() { # name url
  local name=$1 url=$2 out errors
  out=$(wrk -t1 -c64 -d"${duration}s" --latency -H "x-piko-endpoint: bench" "$url/hello")
  errors=$(awk '/Non-2xx|Socket errors/ { print }' <<<"$out")
  [ -z "$errors" ] || echo "$name: $errors" >&2
  echo "$name req/s $(awk '/Requests\/sec/ { print $2 }' <<<"$out")" >>"$results"
  echo "$name p50 $(awk '$1 == "50%" { print $2 }' <<<"$out")" >>"$results"
  echo "$name p99 $(awk '$1 == "99%" { print $2 }' <<<"$out")" >>"$results"
}
run_bulk() { # name url
  local speed
  speed=$(curl -s -o /dev/null -H "x-piko-endpoint: bench" -w '%{speed_download}' "$2/big")
  echo "$1 bulk-MiB/s $(python3 -c "print(round($speed / 1048576, 1))")" >>"$results"
}

echo "wrk local ..." >&2
run_wrk local "$local_url"
echo "wrk relayed ..." >&2
run_wrk relayed "$relayed_url"
echo "bulk local ..." >&2
run_bulk local "$local_url"
echo "bulk relayed ..." >&2
run_bulk relayed "$relayed_url"

python3 - "$results" "$duration" "$bulk_mib" <<'PY'
import re, sys
rows = {}
for line in open(sys.argv[1]):
    name, measure, value = line.split()
    rows.setdefault(measure, {})[name] = value

def ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]

print(f"wrk -t1 -c64 -d{sys.argv[2]}s on a 13-byte file; curl of a {sys.argv[3]} MiB file; same run")
print(f"{'measure':<22} {'local':>10} {'relayed':>10} {'relayed/local':>14}")
for measure, unit in [("req/s", ""), ("p50", "ms"), ("p99", "ms"), ("bulk-MiB/s", "")]:
    l, r = rows[measure]["local"], rows[measure]["relayed"]
    if unit == "ms":
        l, r = ms(l), ms(r)
    else:
        l, r = float(l), float(r)
    print(f"{measure + (' (ms)' if unit else ''):<22} {l:>10.2f} {r:>10.2f} {r / l:>14.2f}")
PY
