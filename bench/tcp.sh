#!/usr/bin/env bash
# TCP tunnel benchmark: iperf3 and redis-benchmark directly, and through
# `piko forward` → `piko server` → `piko agent tcp` (release build), in the same run, on loopback.
#
#   bench/tcp.sh                        # 10 s per iperf3 phase
#   DURATION=5 bench/tcp.sh
#
# Prints one table with the ratio tunnel/direct:
# - throughput with 1 and 8 streams (client to service), and 1 stream the other way (-R);
# - CPU seconds per GiB: user + system time of the three piko processes over a 1-stream run,
#   divided by the GiB moved;
# - short connections per second: redis-benchmark PING with a new connection per request (-k 0).
# If `rathole` is on the PATH (cargo install rathole; never in CI), the same phases run through it
# and its column is added.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${DURATION:-10}

missing=()
command -v iperf3 >/dev/null || missing+=(iperf3)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# shellcheck source=bench/lib.sh
. bench/lib.sh
build_piko

iperf_port=$(free_port)
redis_port=$(free_port)
proxy_port=$(free_port)
upstream_port=$(free_port)
admin_port=$(free_port)
iperf_forward=$(free_port)
redis_forward=$(free_port)

iperf3 -s -p "$iperf_port" >/dev/null 2>&1 &
pids+=($!)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
pids+=($!)
"$piko" server --proxy.bind-addr "127.0.0.1:$proxy_port" --upstream.bind-addr "127.0.0.1:$upstream_port" \
  --admin.bind-addr "127.0.0.1:$admin_port" --cluster.gossip.bind-addr 127.0.0.1:0 --log.level warn 2>"$work/server.log" &
server_pid=$!
pids+=($server_pid)
agent_file="$work/agent.yaml"
cat >"$agent_file" <<EOF
connect:
  url: http://127.0.0.1:$upstream_port
listeners:
  - endpoint_id: iperf
    addr: "127.0.0.1:$iperf_port"
    protocol: tcp
    timeout: 10s
    access_log:
      disable: true
  - endpoint_id: redis
    addr: "127.0.0.1:$redis_port"
    protocol: tcp
    timeout: 10s
    access_log:
      disable: true
log:
  level: warn
EOF
"$piko" agent start --config.path "$agent_file" 2>"$work/agent.log" &
agent_pid=$!
pids+=($agent_pid)
forward_file="$work/forward.yaml"
cat >"$forward_file" <<EOF
connect:
  url: http://127.0.0.1:$proxy_port
ports:
  - addr: "127.0.0.1:$iperf_forward"
    endpoint_id: iperf
  - addr: "127.0.0.1:$redis_forward"
    endpoint_id: redis
log:
  level: warn
EOF
"$piko" forward start --config.path "$forward_file" 2>"$work/forward.log" &
forward_pid=$!
pids+=($forward_pid)

# Bounded wait for the tunnel to serve.
for _ in $(seq 1 200); do
  if [ "$(redis-cli -p "$redis_forward" PING 2>/dev/null)" = PONG ]; then break; fi
  sleep 0.05
done
[ "$(redis-cli -p "$redis_forward" PING 2>/dev/null)" = PONG ] || {
  echo "tunnel not serving; logs:" >&2
  cat "$work/server.log" "$work/agent.log" "$work/forward.log" >&2
  exit 1
}

rathole_iperf=""
rathole_redis=""
if command -v rathole >/dev/null; then
  rathole_control=$(free_port)
  rathole_iperf=$(free_port)
  rathole_redis=$(free_port)
  cat >"$work/rathole-server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$rathole_control"
default_token = "bench"
[server.services.iperf]
bind_addr = "127.0.0.1:$rathole_iperf"
[server.services.redis]
bind_addr = "127.0.0.1:$rathole_redis"
EOF
  cat >"$work/rathole-client.toml" <<EOF
[client]
remote_addr = "127.0.0.1:$rathole_control"
default_token = "bench"
[client.services.iperf]
local_addr = "127.0.0.1:$iperf_port"
[client.services.redis]
local_addr = "127.0.0.1:$redis_port"
EOF
  rathole --server "$work/rathole-server.toml" >/dev/null 2>&1 &
  rathole_server=$!
  pids+=($rathole_server)
  rathole --client "$work/rathole-client.toml" >/dev/null 2>&1 &
  rathole_client=$!
  pids+=($rathole_client)
  for _ in $(seq 1 200); do
    if [ "$(redis-cli -p "$rathole_redis" PING 2>/dev/null)" = PONG ]; then break; fi
    sleep 0.05
  done
fi

cpu_ticks() { local total=0 pid; for pid in "$@"; do total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done; echo "$total"; }
results="$work/results"

run_iperf() { # name port measure [iperf3 flags...]
  local name=$1 port=$2 measure=$3
  shift 3
  local out file="$work/iperf-$name-${measure//\//_}"
  out=$(iperf3 -c 127.0.0.1 -p "$port" -t "$duration" -J "$@")
  python3 -c '
import json, sys
result = json.loads(sys.stdin.read())
end = result["end"]
print(end["sum_received"]["bits_per_second"] / 8 / 1048576, end["sum_received"]["bytes"])
' <<<"$out" >"$file"
  echo "$name $measure $(cut -d' ' -f1 "$file")" >>"$results"
}

run_cpu() { # name port pids...
  local name=$1 port=$2
  shift 2
  local before after bytes
  before=$(cpu_ticks "$@")
  run_iperf "$name" "$port" cpu-run
  after=$(cpu_ticks "$@")
  bytes=$(cut -d' ' -f2 "$work/iperf-$name-cpu-run")
  # Clock ticks are 1/100 s.
  echo "$name cpu-s-per-GiB $(python3 -c "print(round(($after - $before) / 100 / ($bytes / 2**30), 3))")" >>"$results"
}

run_conns() { # name port
  local name=$1 port=$2 rps
  rps=$(redis-benchmark -p "$port" -k 0 -c 16 -n 20000 -t ping_inline --csv 2>/dev/null |
    awk -F'","' '/PING_INLINE/ { print $2 }')
  echo "$name conns/s $rps" >>"$results"
}

targets=("direct $iperf_port $redis_port" "tunnel $iperf_forward $redis_forward")
[ -n "$rathole_iperf" ] && targets+=("rathole $rathole_iperf $rathole_redis")
for target in "${targets[@]}"; do
  read -r name iperf redis <<<"$target"
  echo "$name: iperf3 1 stream ..." >&2
  run_iperf "$name" "$iperf" "1-stream-MiB/s"
  echo "$name: iperf3 8 streams ..." >&2
  run_iperf "$name" "$iperf" "8-streams-MiB/s" -P 8
  echo "$name: iperf3 reverse ..." >&2
  run_iperf "$name" "$iperf" "reverse-MiB/s" -R
  case $name in
  tunnel) run_cpu "$name" "$iperf" "$server_pid" "$agent_pid" "$forward_pid" ;;
  rathole) run_cpu "$name" "$iperf" "$rathole_server" "$rathole_client" ;;
  esac
  echo "$name: short connections ..." >&2
  run_conns "$name" "$redis"
done

python3 - "$results" "$duration" <<'PY'
import sys
rows, names = {}, []
for line in open(sys.argv[1]):
    name, measure, value = line.split()
    rows.setdefault(measure, {})[name] = float(value)
    if name not in names:
        names.append(name)
print(f"iperf3 -t {sys.argv[2]} on loopback; redis-benchmark PING, new connection per request; same run")
header = f"{'measure':<18}" + "".join(f"{n:>10}" for n in names) + "".join(
    f"{n + '/direct':>16}" for n in names if n != "direct"
)
if "rathole" in names:
    header += f"{'tunnel/rathole':>16}"
print(header)
for measure, values in rows.items():
    if measure == "cpu-run":  # the run the CPU figure was taken over
        continue
    line = f"{measure:<18}" + "".join(
        f"{values[n]:>10.1f}" if n in values else f"{'-':>10}" for n in names
    )
    for n in names:
        if n == "direct":
            continue
        ratio = values[n] / values["direct"] if "direct" in values and n in values else None
        line += f"{ratio:>16.2f}" if ratio else f"{'-':>16}"
    if "rathole" in names:
        ratio = values["tunnel"] / values["rathole"] if "tunnel" in values and "rathole" in values else None
        line += f"{ratio:>16.2f}" if ratio else f"{'-':>16}"
    print(line)
PY
