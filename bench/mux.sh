#!/usr/bin/env bash
# Multiplexer benchmark: our piko-mux against Go's yamux (Piko's fork, Piko's settings), same
# machine, same run, both over loopback TCP and over the WebSocket byte stream.
#
#   bench/mux.sh                 # 1 GiB bulk transfers, 5 s of round trips
#   BYTES=268435456 DURATION=2 bench/mux.sh
#
# Prints one table: ours, Go's, ours/Go. For throughput a ratio above 1 is better; for CPU cost
# (seconds per GiB, microseconds per round trip, both sides of the session together) below 1 is.
set -euo pipefail
cd "$(dirname "$0")/.."

bytes=${BYTES:-1073741824}
duration=${DURATION:-5}
results=$(mktemp)
trap 'rm -f "$results"' EXIT

echo "building (release) ..." >&2
(cd interop && GOFLAGS=-mod=readonly GOTOOLCHAIN=local go build -o ../target/mux-bench-go ./cmd/mux-bench)
cargo bench -q -p piko-mux --bench mux --no-run 2>/dev/null
cargo bench -q -p piko-mux --bench idle_memory --no-run 2>/dev/null

run() { # impl transport direction benches
  local impl=$1 transport=$2 direction=$3 benches=$4 out
  if [ "$impl" = ours ]; then
    out=$(cargo bench -q -p piko-mux --bench mux -- --transport "$transport" --direction "$direction" \
      --bench "$benches" --bytes "$bytes" --duration "$duration" 2>/dev/null)
  else
    out=$(target/mux-bench-go -transport "$transport" -direction "$direction" -bench "$benches" \
      -bytes "$bytes" -duration "${duration}s")
  fi
  echo "$out" | awk -v i="$impl" -v t="$transport" -v d="$direction" \
    '$1 == "RESULT" { name = $2; if (name !~ /^rtt/) name = name "-" d; print i, t, name, $3, $4 }' >>"$results"
}

for transport in ws tcp; do
  for direction in down up; do
    for impl in ours go; do
      echo "running $impl $transport $direction ..." >&2
      run "$impl" "$transport" "$direction" bulk-1,bulk-64
    done
  done
  for impl in ours go; do
    echo "running $impl $transport rtt ..." >&2
    run "$impl" "$transport" down rtt
  done
done

python3 - "$results" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    impl, transport, name, value, unit = line.split()
    rows.setdefault((transport, name, unit), {})[impl] = float(value)
print(f"{'transport':<9} {'measure':<18} {'unit':<6} {'ours':>10} {'go':>10} {'ours/go':>8}")
for (transport, name, unit), v in rows.items():
    ours, go = v.get("ours"), v.get("go")
    ratio = f"{ours / go:.2f}" if ours and go else "-"
    print(f"{transport:<9} {name:<18} {unit:<6} {ours:>10.2f} {go:>10.2f} {ratio:>8}")
PY

echo
echo "idle memory, server side of one upstream connection (WebSocket + mux), and per idle stream:"
cargo bench -q -p piko-mux --bench idle_memory -- --sessions 1000 2>/dev/null | sed 's/^RESULT /  /'
