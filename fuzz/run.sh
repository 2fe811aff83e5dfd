#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer instrumentation on the stable toolchain and runs
# each for a bounded time, starting from seeds made by `node/examples/fuzz_seeds.rs`.
# Exits non-zero if any target crashes, leaks past its RSS limit or hangs; the input that
# did it is left in the artifacts directory (printed).
#
# Usage: fuzz/run.sh [seconds-per-target] [target...]
#   QPQ_FUZZ_CORPUS=dir   keep the corpus there (default: a fresh temporary directory)
#   QPQ_FUZZ_SEED=n       libFuzzer's random seed (default: its own choice, printed)
# With a nightly toolchain and cargo-fuzz, `cargo fuzz run <target>` works here as well.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-30}"
shift || true
ALL=(mls_framing key_package raft_wire raft_command rpc_session admin_access backup_manifest admin_request restore_input archive_segment)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")

# Outside the repository, apart from the main build: different compiler flags.
FUZZ_TARGET_DIR="${QPQ_FUZZ_TARGET_DIR:-$HOME/.cache/qpq/fuzz-target}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
# The flags cargo-fuzz passes, minus the nightly-only sanitizer: SanitizerCoverage with
# inline 8-bit counters, PC table and comparison tracing, which libFuzzer's engine reads.
# `--target` keeps them away from build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing"
echo "== fuzz: build (${TARGETS[*]})"
bins=()
for t in "${TARGETS[@]}"; do bins+=(--bin "$t"); done
CARGO_TARGET_DIR="$FUZZ_TARGET_DIR" cargo build --manifest-path fuzz/Cargo.toml --locked \
  --release --target "$TRIPLE" "${bins[@]}"
unset RUSTFLAGS

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
CORPUS="${QPQ_FUZZ_CORPUS:-$WORK/corpus}"
ARTIFACTS="${QPQ_FUZZ_ARTIFACTS:-$FUZZ_TARGET_DIR/artifacts}"
mkdir -p "$CORPUS" "$ARTIFACTS"
echo "== fuzz: seeds"
cargo run -q -p qpq-node --example fuzz_seeds -- "$CORPUS"

failed=()
for t in "${TARGETS[@]}"; do
  echo "== fuzz: $t for ${SECS}s"
  args=(-max_total_time="$SECS" -timeout=60 -rss_limit_mb=4096 -print_final_stats=1
        -artifact_prefix="$ARTIFACTS/$t-")
  [ -n "${QPQ_FUZZ_SEED:-}" ] && args+=(-seed="$QPQ_FUZZ_SEED")
  if ! "$FUZZ_TARGET_DIR/$TRIPLE/release/$t" "${args[@]}" "$CORPUS/$t" 2>"$WORK/$t.log"; then
    tail -n 60 "$WORK/$t.log"
    failed+=("$t")
    continue
  fi
  # One line per target: executions, coverage and corpus size at the end.
  grep -E '^#[0-9]+.*(DONE|pulse)' "$WORK/$t.log" | tail -n 1 || true
  grep -E '^stat::number_of_executed_units' "$WORK/$t.log" || true
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs in $ARTIFACTS)" >&2
  exit 1
fi
echo "fuzz: ${#TARGETS[@]} targets ran ${SECS}s each without a finding"
