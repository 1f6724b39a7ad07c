#!/usr/bin/env bash
# Builds every fuzz target once, then runs each for its share of one time budget.
#
#   fuzz/run.sh [SECONDS]     (default 180: for all targets together, build not included)
#
# Each target starts from a temporary copy of its committed seed corpus (fuzz/corpus/<target>),
# so runs never write into the repository. A crash, a hang past FUZZ_TIMEOUT seconds on one
# input, or an input over the memory limit fails the script (exit 1) and prints the path of the
# input that did it (kept in fuzz/artifacts/<target>/, which git ignores). Needs the nightly
# toolchain; installs cargo-fuzz from crates.io when `cargo fuzz` is missing.
set -euo pipefail
cd "$(dirname "$0")"

budget=${1:-180}
toolchain=${FUZZ_TOOLCHAIN:-nightly}
per_input_timeout=${FUZZ_TIMEOUT:-30}
case $budget in
  '' | *[!0-9]*)
    echo "usage: $0 [SECONDS]" >&2
    exit 2
    ;;
esac

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  echo "the $toolchain toolchain is required (cargo-fuzz needs -Z flags)" >&2
  exit 1
fi
if ! cargo "+$toolchain" fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

# Optimised, with debug assertions and overflow checks (cargo-fuzz's default), and AddressSanitizer:
# overflow checks are how arithmetic mistakes in the window accounting show up. Most of the
# build is the dependencies (aws-lc, hyper, rustls), compiled once per machine.
build_flags=(--release --debug-assertions)
triple=$(rustup run "$toolchain" rustc -vV | sed -n 's/^host: //p')
bin_dir=target/$triple/release

started=$(date +%s)
echo "=== fuzz build"
cargo "+$toolchain" fuzz build "${build_flags[@]}"
built=$(date +%s)
echo "=== fuzz build: $((built - started)) s"

mapfile -t targets < <(cargo "+$toolchain" fuzz list)
share=$((budget / ${#targets[@]}))
if [ "$share" -lt 1 ]; then
  share=1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

summary=()
failed=()
for target in "${targets[@]}"; do
  corpus=$work/corpus/$target
  artifacts=$PWD/artifacts/$target
  mkdir -p "$corpus" "$artifacts"
  if [ -d "corpus/$target" ]; then
    cp -R "corpus/$target/." "$corpus/"
  fi
  log=$work/$target.log
  echo "=== fuzz $target: ${share} s"
  status=0
  "$bin_dir/$target" "$corpus" \
    -max_total_time="$share" \
    -timeout="$per_input_timeout" \
    -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" \
    -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log"
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    echo "=== fuzz $target: FAILED (exit $status); input: ${crash:-see the log above}"
    failed+=("$target ${crash:-}")
  fi
  summary+=("$(printf '%-20s %12s execs %8s/s' "$target" "${execs:-?}" "${rate:-?}")")
done

echo "=== fuzz summary (build $((built - started)) s, run $(($(date +%s) - built)) s)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "=== fuzz: ${#failed[@]} target(s) failed:"
  printf '  %s\n' "${failed[@]}"
  echo "reproduce with: cargo +$toolchain fuzz run ${build_flags[*]} <target> <input>"
  exit 1
fi
