#!/usr/bin/env bash
# Runs shoal's whole test suite on Debian 12 as root: installs the dependencies, builds every
# target (dev profile), runs `cargo test --workspace`, `cargo fmt --check` and `cargo clippy -D
# warnings`, then the NixOS module evaluation
# (tests/nix-eval/run.sh) and the real-systemd tests (tests/systemd/run.sh: one host;
# tests/systemd/cluster.sh: a three-host cluster) when they exist. Prints how long each phase
# took.
#
# usage: scripts/test.sh [-- EXTRA CARGO TEST ARGS]
#
# The tests start the services they need themselves (their own containerd, dbus-daemon,
# registry), so nothing has to be running. Ends with one line
#   shoal tests: N passed, M failed, K skipped (REASON; REASON)
# summed from cargo's "test result:" lines and the suites' "NAME: N passed, M failed[, K
# skipped]" lines (a suite script printing neither counts as one test), and exits non-zero when
# anything failed. Every skip is counted and named: cargo's ignored tests (by name), a suite's
# "SKIPPED reason" lines, a suite that is missing, cargo test not run after a failed build.
# Never prompts; CI runs it through .ci/run.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
EXTRA=()
if [[ ${1:-} == -- ]]; then
  shift
  EXTRA=("$@")
elif [[ $# -gt 0 ]]; then
  case "$1" in
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "test: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
fi

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
if [[ ${CI:-} == true ]]; then
  # One build on a fresh clone: incremental state only costs time and disk there. (Not set for
  # developers: changing it makes cargo rebuild the workspace crates in a shared target/.)
  export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
fi
if [[ ! -t 1 ]]; then
  export CARGO_TERM_PROGRESS_WHEN=never
fi
if [[ -x $HOME/.cargo/bin/cargo ]]; then PATH=$HOME/.cargo/bin:$PATH; fi

PASSED=0
FAILED=0
SKIPPED=0
declare -a PROBLEMS=()
declare -a SKIPS=()

declare -a TIMINGS=()

phase() { printf '\n==> %s\n' "$*"; }
# took LABEL T0: prints and records how long the phase that started at T0 ($SECONDS) took.
took() {
  local secs=$((SECONDS - $2))
  TIMINGS+=("$(printf '%4dm%02ds  %s' $((secs / 60)) $((secs % 60)) "$1")")
  printf '==> %s took %dm%02ds\n' "$1" $((secs / 60)) $((secs % 60))
}

# count LOGFILE STATUS LABEL: adds the log's "test result:" counts; a non-zero STATUS with no
# failed test in the log (build error, crash, script failure) counts as one failure.
count() {
  local log=$1 status=$2 label=$3 p f k seen reason
  # cargo: "test result: ok. 3 passed; 0 failed; 1 ignored; ..." (summed); other suites may end
  # with a summary line "NAME: 3 passed, 0 failed[, 1 skipped]" (the last one counts).
  read -r p f k seen < <(awk '
    /test result:/ {
      for (i = 1; i <= NF; i++) {
        if ($(i) ~ /^passed;?$/) p += $(i - 1)
        if ($(i) ~ /^failed;?$/) f += $(i - 1)
        if ($(i) ~ /^ignored;?$/) k += $(i - 1)
      }
      seen = 1
    }
    /^[A-Za-z0-9_. -]+: [0-9]+ passed, [0-9]+ failed/ {
      split($0, parts, ": ")
      split(parts[2], words, /[ ,]+/)
      sp = words[1]; sf = words[3]; sk = (words[6] ~ /^skipped/) ? words[5] : 0; summary = 1
    }
    END {
      if (!seen && summary) { p = sp; f = sf; k = sk; seen = 1 }
      printf "%d %d %d %d\n", p, f, k, seen
    }' "$log")
  SKIPPED=$((SKIPPED + k))
  # Why: the names of cargo'"'"'s ignored tests, and the suites'"'"' "SKIPPED reason" lines.
  while IFS= read -r reason; do
    [[ -n $reason ]] && SKIPS+=("$label: $reason")
  done < <(sed -n -e 's/^test \(.*\) \.\.\. ignored.*$/ignored test \1/p' \
    -e 's/^SKIPPED \(.*\)$/\1/p' "$log")
  if [[ $seen -eq 0 ]]; then
    # A suite script without cargo-style output: the script is the test.
    if [[ $status -eq 0 ]]; then p=1; f=0; else p=0; f=1; fi
  elif [[ $status -ne 0 && $f -eq 0 ]]; then
    f=1
  fi
  PASSED=$((PASSED + p))
  FAILED=$((FAILED + f))
  if [[ $status -ne 0 ]]; then PROBLEMS+=("$label (exit $status, log $log)"); fi
}

phase "dependencies"
if ! bash scripts/install-deps.sh </dev/null; then
  echo "test: scripts/install-deps.sh failed; nothing was tested" >&2
  echo "shoal tests: 0 passed, 1 failed, 0 skipped"
  exit 1
fi

LOGDIR=$(mktemp -d /tmp/shoal-test.XXXXXX)

phase "cargo build --workspace --all-targets"
t0=$SECONDS
cargo build --workspace --all-targets </dev/null 2>&1 | tee "$LOGDIR/build.log"
build_status=${PIPESTATUS[0]}
took "cargo build" "$t0"

if [[ $build_status -ne 0 ]]; then
  FAILED=$((FAILED + 1))
  PROBLEMS+=("cargo build (exit $build_status, log $LOGDIR/build.log); cargo test skipped")
  SKIPPED=$((SKIPPED + 1))
  SKIPS+=("cargo test: not run, the build failed")
else
  phase "cargo test --workspace --no-fail-fast"
  t0=$SECONDS
  cargo test --workspace --no-fail-fast "${EXTRA[@]}" </dev/null 2>&1 | tee "$LOGDIR/cargo-test.log"
  count "$LOGDIR/cargo-test.log" "${PIPESTATUS[0]}" "cargo test"
  took "cargo test" "$t0"
fi

# Repository rules, enforced like tests: formatting and clippy with warnings as errors.
phase "cargo fmt --check and cargo clippy -D warnings"
t0=$SECONDS
{
  lint_ok=0
  lint_bad=0
  if cargo fmt --all -- --check </dev/null; then lint_ok=$((lint_ok + 1)); else lint_bad=$((lint_bad + 1)); fi
  if cargo clippy --workspace --all-targets </dev/null -- -D warnings; then
    lint_ok=$((lint_ok + 1))
  else
    lint_bad=$((lint_bad + 1))
  fi
  echo "lint: $lint_ok passed, $lint_bad failed"
  [[ $lint_bad -eq 0 ]]
} 2>&1 | tee "$LOGDIR/lint.log"
count "$LOGDIR/lint.log" "${PIPESTATUS[0]}" "cargo fmt / cargo clippy"
took "lint" "$t0"

for suite in tests/nix-eval/run.sh tests/systemd/run.sh tests/systemd/cluster.sh; do
  if [[ -f $suite ]]; then
    phase "$suite"
    # tests/systemd/cluster.sh -> systemd-cluster.log
    name=$(basename "$(dirname "$suite")")
    [[ $(basename "$suite") != run.sh ]] && name=$name-$(basename "$suite" .sh)
    t0=$SECONDS
    bash "$suite" </dev/null 2>&1 | tee "$LOGDIR/$name.log"
    count "$LOGDIR/$name.log" "${PIPESTATUS[0]}" "$suite"
    took "$suite" "$t0"
  else
    SKIPPED=$((SKIPPED + 1))
    SKIPS+=("$suite: the file is missing")
  fi
done

echo
echo "time per phase:"
printf '%s\n' "${TIMINGS[@]}"
if [[ ${#PROBLEMS[@]} -gt 0 ]]; then
  echo "failed:"
  printf '  %s\n' "${PROBLEMS[@]}"
else
  rm -rf "$LOGDIR"
fi
if [[ ${#SKIPS[@]} -gt 0 ]]; then
  echo "skipped:"
  printf '  %s\n' "${SKIPS[@]}"
fi
summary="shoal tests: $PASSED passed, $FAILED failed, $SKIPPED skipped"
if [[ ${#SKIPS[@]} -gt 0 ]]; then
  reasons=$(printf '%s; ' "${SKIPS[@]}")
  summary="$summary (${reasons%; })"
fi
echo "$summary"
[[ $FAILED -eq 0 && ${#PROBLEMS[@]} -eq 0 ]]
