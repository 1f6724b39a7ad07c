#!/usr/bin/env bash
# What the server's access log costs per request: `piko server` + `piko agent http` in front of
# nginx, with the server's access log on (the default) and off (`--proxy.access-log.disable`),
# for one or more builds, all in the same run. Rounds interleave every configuration; the table
# gives medians.
#
#   bench/access_log.sh                                   # the release build of this tree
#   BINS="before=/tmp/piko-old after=target/release/piko" bench/access_log.sh
#   ROUNDS=3 DURATION=10 bench/access_log.sh
#
# The server writes its log to a file, as under a service manager. CPU per request is the user +
# system time of each process over the wrk run (-t1 -c64 on a 13-byte file) divided by the
# requests wrk completed. The agent's access log is off throughout.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
duration=${DURATION:-10}

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq nginx-light wrk >/dev/null
fi
# shellcheck source=bench/lib.sh
. bench/lib.sh
if [ -z "${BINS:-}" ]; then
  build_piko
  BINS="piko=$piko"
fi

nginx_port=$(free_port)
start_nginx "$nginx_port" 1
for _ in $(seq 1 200); do
  curl -sf -o /dev/null "http://127.0.0.1:$nginx_port/hello" && break
  sleep 0.05
done
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
results="$work/results"

# One measurement: fresh processes of binary $2 with the server's access log $3 (on|off).
measure() { # label binary log
  local label=$1 bin=$2 log=$3 proxy upstream admin flags=() server agent before_s before_a out
  proxy=$(free_port)
  upstream=$(free_port)
  admin=$(free_port)
  [ "$log" = on ] || flags=(--proxy.access-log.disable)
  "$bin" server --proxy.bind-addr "127.0.0.1:$proxy" --upstream.bind-addr "127.0.0.1:$upstream" \
    --admin.bind-addr "127.0.0.1:$admin" --cluster.gossip.bind-addr 127.0.0.1:0 "${flags[@]}" \
    2>"$work/server-$label-$log.log" &
  server=$!
  pids+=($server)
  "$bin" agent http bench "$nginx_port" --connect.url "http://127.0.0.1:$upstream" \
    --access-log.disable --log.level warn 2>"$work/agent.log" &
  agent=$!
  pids+=($agent)
  for _ in $(seq 1 200); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'x-piko-endpoint: bench' "http://127.0.0.1:$proxy/hello")" = 200 ]; then
      break
    fi
    sleep 0.05
  done
  before_s=$(cpu_ticks "$server")
  before_a=$(cpu_ticks "$agent")
  out=$(wrk -t1 -c64 -d"${duration}s" -H 'x-piko-endpoint: bench' "http://127.0.0.1:$proxy/hello")
  python3 - "$label" "$log" "$out" "$before_s" "$(cpu_ticks "$server")" "$before_a" "$(cpu_ticks "$agent")" >>"$results" <<'PY'
import re, sys
label, log, out, s0, s1, a0, a1 = sys.argv[1:]
requests = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
if re.search(r"Non-2xx|Socket errors", out):
    print(f"{label} {log}: errors: {out}", file=sys.stderr)
# Clock ticks are 1/100 s.
server = (int(s1) - int(s0)) * 10000 / requests
agent = (int(a1) - int(a0)) * 10000 / requests
print(label, log, rps, round(server, 1), round(agent, 1))
PY
  kill "$server" "$agent"
  wait "$server" "$agent" 2>/dev/null || true
}

for round in $(seq 1 "$rounds"); do
  echo "round $round/$rounds: direct" >&2
  rps=$(wrk -t1 -c64 -d"${duration}s" "http://127.0.0.1:$nginx_port/hello" | awk '/Requests\/sec/ { print $2 }')
  echo "direct - $rps 0 0" >>"$results"
  for entry in $BINS; do
    for log in on off; do
      echo "round $round/$rounds: ${entry%%=*}, access log $log" >&2
      measure "${entry%%=*}" "${entry#*=}" "$log"
    done
  done
done

python3 - "$results" "$rounds" "$duration" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, log, rps, server, agent = line.split()
    rows.setdefault((label, log), []).append((float(rps), float(server), float(agent)))
med = lambda values: statistics.median(values)
direct = med([r[0] for r in rows.pop(("direct", "-"))])
print(f"{sys.argv[2]} rounds of wrk -t1 -c64 -d{sys.argv[3]}s on a 13-byte file, medians; direct nginx {direct:.0f} req/s")
print(f"{'build':<10} {'access log':<11} {'req/s':>9} {'x direct':>9} {'server us/req':>14} {'agent us/req':>13}")
for (label, log), values in rows.items():
    rps = med([v[0] for v in values])
    print(f"{label:<10} {log:<11} {rps:>9.0f} {rps / direct:>9.3f} {med([v[1] for v in values]):>14.1f} {med([v[2] for v in values]):>13.1f}")
PY
