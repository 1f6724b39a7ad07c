#!/usr/bin/env bash
# HTTP tunnel benchmark: nginx served directly, and through `piko server` + `piko agent http`
# (release build), in the same run, on loopback.
#
#   bench/http.sh                       # 10 s of wrk per phase, 1 GiB download
#   DURATION=5 BULK_MIB=256 bench/http.sh
#
# Prints one table with the ratio tunnel/direct. CPU per request is the user + system time of the
# piko server and agent processes over the wrk run, divided by the requests wrk completed.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${DURATION:-10}
bulk_mib=${BULK_MIB:-1024}

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq nginx-light wrk >/dev/null
fi
# shellcheck source=bench/lib.sh
. bench/lib.sh
build_piko
cargo bench -q -p piko-server --bench idle_upstreams --no-run 2>/dev/null

nginx_port=$(free_port)
proxy_port=$(free_port)
upstream_port=$(free_port)
admin_port=$(free_port)
start_nginx "$nginx_port" "$bulk_mib"
"$piko" server --proxy.bind-addr "127.0.0.1:$proxy_port" --upstream.bind-addr "127.0.0.1:$upstream_port" \
  --admin.bind-addr "127.0.0.1:$admin_port" --cluster.gossip.bind-addr 127.0.0.1:0 --log.level warn 2>"$work/server.log" &
server_pid=$!
pids+=($server_pid)
"$piko" agent http bench "$nginx_port" --connect.url "http://127.0.0.1:$upstream_port" --log.level warn \
  2>"$work/agent.log" &
agent_pid=$!
pids+=($agent_pid)

direct="http://127.0.0.1:$nginx_port"
tunnel="http://127.0.0.1:$proxy_port"
# Bounded wait for the tunnel to serve.
for _ in $(seq 1 200); do
  if [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'x-piko-endpoint: bench' "$tunnel/hello")" = 200 ]; then
    break
  fi
  sleep 0.05
done
[ "$(curl -s -H 'x-piko-endpoint: bench' "$tunnel/hello")" = "Hello, world!" ] || {
  echo "tunnel not serving; logs:" >&2
  cat "$work/server.log" "$work/agent.log" "$work/logs/error.log" >&2
  exit 1
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
results="$work/results"

run_wrk() { # name url [header]
  local name=$1 url=$2 header=${3:-} out before after
  before=$(($(cpu_ticks "$server_pid") + $(cpu_ticks "$agent_pid")))
  if [ -n "$header" ]; then
    out=$(wrk -t1 -c64 -d"${duration}s" --latency -H "$header" "$url/hello")
  else
    out=$(wrk -t1 -c64 -d"${duration}s" --latency "$url/hello")
  fi
  after=$(($(cpu_ticks "$server_pid") + $(cpu_ticks "$agent_pid")))
  echo "$out" >"$work/wrk-$name.txt"
  local requests rps p50 p99 errors
  requests=$(awk '/requests in/ { print $1 }' <<<"$out")
  rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
  p50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
  p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ { print }' <<<"$out")
  [ -z "$errors" ] || echo "$name: $errors" >&2
  echo "$name req/s $rps" >>"$results"
  echo "$name p50 $p50" >>"$results"
  echo "$name p99 $p99" >>"$results"
  if [ "$name" = tunnel ]; then
    # Clock ticks are 1/100 s.
    echo "$name cpu-us-per-req $(python3 -c "print(round(($after - $before) * 10000 / $requests, 1))")" >>"$results"
  fi
}

run_bulk() { # name url [header]
  local name=$1 url=$2 header=${3:-x-none: 1} speed
  speed=$(curl -s -o /dev/null -H "$header" -w '%{speed_download}' "$url/big")
  echo "$name bulk-MiB/s $(python3 -c "print(round($speed / 1048576, 1))")" >>"$results"
}

echo "wrk direct ..." >&2
run_wrk direct "$direct"
echo "wrk tunnel ..." >&2
run_wrk tunnel "$tunnel" "x-piko-endpoint: bench"
echo "bulk direct ..." >&2
run_bulk direct "$direct"
echo "bulk tunnel ..." >&2
run_bulk tunnel "$tunnel" "x-piko-endpoint: bench"
echo "idle upstreams ..." >&2
idle=$(cargo bench -q -p piko-server --bench idle_upstreams -- --upstreams 1000 2>/dev/null | awk '/RESULT/ { print $3 }')

python3 - "$results" "$idle" "$duration" "$bulk_mib" <<'PY'
import re, sys
rows = {}
for line in open(sys.argv[1]):
    name, measure, value = line.split()
    rows.setdefault(measure, {})[name] = value

def ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]

print(f"wrk -t1 -c64 -d{sys.argv[3]}s on a 13-byte file; curl of a {sys.argv[4]} MiB file; same run")
print(f"{'measure':<22} {'direct':>10} {'tunnel':>10} {'tunnel/direct':>14}")
for measure, unit in [("req/s", ""), ("p50", "ms"), ("p99", "ms"), ("bulk-MiB/s", "")]:
    d, t = rows[measure]["direct"], rows[measure]["tunnel"]
    if unit == "ms":
        d, t = ms(d), ms(t)
    else:
        d, t = float(d), float(t)
    print(f"{measure + (' (ms)' if unit else ''):<22} {d:>10.2f} {t:>10.2f} {t / d:>14.2f}")
print(f"{'cpu us/req (piko)':<22} {'-':>10} {float(rows['cpu-us-per-req']['tunnel']):>10.1f}")
print(f"{'KiB per idle upstream':<22} {'-':>10} {float(sys.argv[2]):>10.1f}")
PY
