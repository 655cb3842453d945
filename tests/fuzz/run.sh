#!/usr/bin/env bash
# Runs every libFuzzer target for SECONDS each (default 10), starting from the
# committed seeds in tests/fuzz/seeds/<target>/ (copied, so the seeds stay as
# committed; new inputs collect in tests/fuzz/corpus/, ignored by git).
# A crash fails the script; its input is in tests/fuzz/artifacts/<target>/.
#
# cargo-fuzz needs nightly-only flags; on a stable toolchain RUSTC_BOOTSTRAP=1
# enables them. No sanitizer: the code under test has no `unsafe` (the
# workspace denies it), so AddressSanitizer would only slow the runs down;
# the fuzzer finds panics, overflows (debug assertions), hangs and runaway
# allocations (-rss_limit_mb).
set -euo pipefail
secs="${1:-10}"
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  if [ "${CI:-}" = true ]; then
    cargo install --locked cargo-fuzz
  else
    echo "SKIP: cargo-fuzz not installed (cargo install cargo-fuzz)"; exit 0
  fi
fi
export RUSTC_BOOTSTRAP=1
targets=(procfs zpool pfctl spool_segment agent_config rules agent_frame pod_list sample_block template)
cargo fuzz build --fuzz-dir "$here" -s none --debug-assertions
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
  echo "== $t: ${secs}s"
  if ! cargo fuzz run --fuzz-dir "$here" -s none --debug-assertions "$t" "corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=65536 \
      -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>&1 | tee "artifacts/$t.log" \
      | grep -E "^(Done|stat::number_of_executed_units|stat::new_units_added)|panicked|ERROR|SUMMARY"; then
    :
  fi
  if grep -q -E "panicked|ERROR: libFuzzer|SUMMARY: libFuzzer" "artifacts/$t.log"; then
    echo "FAIL: $t crashed; input in tests/fuzz/artifacts/$t/"; status=1
  fi
done
exit $status
