#!/usr/bin/env bash
# Checks of the Nix side that run without nixpkgs, a binary cache or KVM:
#   1. `nix-instantiate --parse` on every .nix file of the repository;
#   2. `py_compile` on every NixOS VM test script (tests/nixos/*.py);
#   3. the module evaluation test (tests/nix-eval/eval.nix) with nixpkgs' lib
#      from $SHOAL_NIXPKGS_LIB: a checkout of nix-community/nixpkgs.lib (or of
#      nixpkgs), or its lib/ folder. Skipped, and said so, when it is not set.
# The VM tests themselves run with `nix flake check` where Nix and KVM are.
# Needs: nix-instantiate (Debian: nix-bin), python3.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo" || exit 1

if ! command -v nix-instantiate >/dev/null 2>&1; then
    echo "nix-instantiate not found: install Nix (Debian: apt-get install nix-bin)" >&2
    exit 1
fi
if ! command -v python3 >/dev/null 2>&1; then
    echo "python3 not found: install python3" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Evaluation only: no store writes, no daemon, no channels, no build users.
export NIX_STATE_DIR="$work/state" NIX_LOG_DIR="$work/log"
export NIX_CONFIG="build-users-group =
experimental-features = nix-command"
unset NIX_PATH
nix_eval() { nix-instantiate --readonly-mode "$@"; }

passed=0
failed=0
skipped=0
pass() { passed=$((passed + 1)); echo "ok      $1"; }
fail() {
    failed=$((failed + 1))
    echo "FAILED  $1"
    if [ -n "${2:-}" ]; then sed 's/^/        /' <<<"$2"; fi
}

echo "== nix-instantiate --parse"
mapfile -t nix_files < <(find . \( -name .git -o -name target -o -name result -o -name node_modules \) -prune -o \
    -type f -name '*.nix' -print | sed 's|^\./||' | sort)
if [ "${#nix_files[@]}" -eq 0 ]; then
    fail "no .nix file found under $repo"
fi
for f in "${nix_files[@]}"; do
    if out="$(nix_eval --parse "$f" 2>&1 >/dev/null)"; then
        pass "parse $f"
    else
        fail "parse $f" "$out"
    fi
done

echo "== python3 -m py_compile tests/nixos/*.py"
shopt -s nullglob
py_files=(tests/nixos/*.py)
shopt -u nullglob
if [ "${#py_files[@]}" -eq 0 ]; then
    fail "no VM test script found in tests/nixos"
fi
for f in "${py_files[@]}"; do
    # Compile to a scratch file: no __pycache__ in the repository.
    if out="$(python3 -c 'import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)' \
        "$f" "$work/$(basename "$f")c" 2>&1)"; then
        pass "compile $f"
    else
        fail "compile $f" "$out"
    fi
done

# The NixOS test driver lints each testScript (helpers.py + the test's script)
# with pyflakes before it boots a VM; do the same here when pyflakes is there.
echo "== pyflakes on the VM test scripts as the driver sees them"
if python3 -m pyflakes --version >/dev/null 2>&1; then
    driver_globals="machine,manager1,manager2,manager3,worker1,worker2,start_all,join_all,subtest,t"
    driver_globals="$driver_globals,retry,polling_condition,driver,machines,vlans,serial_stdout_on,serial_stdout_off"
    for f in "${py_files[@]}"; do
        [ "$(basename "$f")" = helpers.py ] && continue
        script="$work/lint-$(basename "$f")"
        cat tests/nixos/helpers.py "$f" >"$script"
        if out="$(PYFLAKES_BUILTINS="$driver_globals" python3 -m pyflakes "$script" 2>&1)"; then
            pass "pyflakes helpers.py + $f"
        else
            fail "pyflakes helpers.py + $f" "$out"
        fi
    done
else
    echo "pyflakes not installed (pip install pyflakes): the VM test scripts are only compiled, not linted"
fi

echo "== module evaluation (lib.evalModules)"
if [ -z "${SHOAL_NIXPKGS_LIB:-}" ]; then
    skipped=$((skipped + 1))
    echo "module evaluation test SKIPPED: SHOAL_NIXPKGS_LIB is not set (point it at a checkout of nix-community/nixpkgs.lib)"
elif [ ! -d "$SHOAL_NIXPKGS_LIB" ]; then
    fail "module evaluation" "SHOAL_NIXPKGS_LIB=$SHOAL_NIXPKGS_LIB is not a directory; point it at a checkout of nix-community/nixpkgs.lib"
else
    lib_dir="$(cd "$SHOAL_NIXPKGS_LIB" && pwd -P)"
    if nix_eval --eval --strict --json tests/nix-eval/eval.nix -A results \
        --argstr nixpkgsLib "$lib_dir" >"$work/results.json" 2>"$work/eval.err"; then
        summary="$(python3 - "$work/results.json" <<'EOF'
import json
import sys

with open(sys.argv[1]) as f:
    results = json.load(f)
ok = bad = 0
for r in results:
    if r["ok"]:
        ok += 1
        print(f"ok      eval {r['name']}")
    else:
        bad += 1
        print(f"FAILED  eval {r['name']}")
        for line in r["detail"].splitlines():
            print(f"        {line}")
print(f"#summary {ok} {bad}")
EOF
)"
        if [ -z "$summary" ] || ! grep -q '^#summary ' <<<"$summary"; then
            fail "module evaluation" "could not read the results of tests/nix-eval/eval.nix"
        else
            grep -v '^#summary ' <<<"$summary"
            read -r _ ok bad < <(grep '^#summary ' <<<"$summary")
            passed=$((passed + ok))
            failed=$((failed + bad))
            if [ "$ok" -eq 0 ]; then
                fail "module evaluation" "tests/nix-eval/eval.nix returned no check"
            fi
        fi
    else
        fail "module evaluation" "$(cat "$work/eval.err")"
    fi
fi

echo
if [ "$skipped" -gt 0 ]; then
    echo "nix: $passed passed, $failed failed, $skipped skipped"
else
    echo "nix: $passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
