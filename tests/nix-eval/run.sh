#!/usr/bin/env bash
# Checks of the Nix side that run without nixpkgs, a binary cache or KVM (CI runs
# them through scripts/test.sh):
#   1. `nix-instantiate --parse` on every .nix file of the repository;
#   2. `py_compile` on every NixOS VM test script (tests/nixos/*.py);
#   3. the VM test scripts as the NixOS test driver checks them before it boots a
#      VM: mypy over the driver's type hints + the machines' hints + the script
#      (with a stub of the driver, tests/nix-eval/driver-stub), and pyflakes with
#      the driver's globals as builtins. Two deliberately bad scripts make sure
#      the type check really rejects what the driver rejects (a script that
#      assigns the driver's global `log`, a wrong argument type);
#   4. the module evaluation test (tests/nix-eval/eval.nix) with nixpkgs' lib from
#      $SHOAL_NIXPKGS_LIB, or else from ../shared/vendor/nixpkgs.lib beside the
#      repository (a copy of nix-community/nixpkgs.lib). When that lib is there,
#      an evaluation error is a failure. Only when no lib can be found is the
#      evaluation SKIPPED, with the reason, and counted in the summary.
# mypy and pyflakes are pinned below; when python3 cannot import those versions
# they are installed with pip into a cache directory (not into the system).
# The VM tests themselves run with `nix flake check` where Nix and KVM are.
#
# Ends with one line: `nix-eval: N passed, M failed` (`, K skipped` added when
# something was skipped); exits non-zero when something failed.
# Needs: nix-instantiate (Debian: nix-bin), python3 with pip (or the pinned
# mypy and pyflakes already importable).
set -uo pipefail

MYPY_VERSION=1.13.0
PYFLAKES_VERSION=3.2.0

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo" || exit 1

passed=0
failed=0
skipped=0
pass() { passed=$((passed + 1)); echo "ok      $1"; }
fail() {
    failed=$((failed + 1))
    echo "FAILED  $1"
    if [ -n "${2:-}" ]; then sed 's/^/        /' <<<"$2"; fi
}
skip() { skipped=$((skipped + 1)); echo "SKIPPED $1"; }
summary() {
    echo
    if [ "$skipped" -gt 0 ]; then
        echo "nix-eval: $passed passed, $failed failed, $skipped skipped"
    else
        echo "nix-eval: $passed passed, $failed failed"
    fi
}

if ! command -v nix-instantiate >/dev/null 2>&1; then
    fail "nix-instantiate not found: install Nix (Debian: apt-get install nix-bin)"
    summary
    exit 1
fi
if ! command -v python3 >/dev/null 2>&1; then
    fail "python3 not found: install python3"
    summary
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

# nixpkgs' lib: $SHOAL_NIXPKGS_LIB, else the vendored copy beside the repository.
lib_dir=""
lib_problem=""
if [ -n "${SHOAL_NIXPKGS_LIB:-}" ]; then
    if [ -d "$SHOAL_NIXPKGS_LIB" ]; then
        lib_dir="$(cd "$SHOAL_NIXPKGS_LIB" && pwd -P)"
    else
        lib_problem="SHOAL_NIXPKGS_LIB=$SHOAL_NIXPKGS_LIB is not a directory; point it at a checkout of nix-community/nixpkgs.lib"
    fi
elif [ -d "$repo/../shared/vendor/nixpkgs.lib" ]; then
    lib_dir="$(cd "$repo/../shared/vendor/nixpkgs.lib" && pwd -P)"
fi

# The VM test scripts as the driver sees them (helpers.py + the test's script)
# with the test's machine names, from eval.nix when the lib is there; without
# it, helpers.py + each script, with every machine name of the tests.
scripts_dir="$work/scripts"
mkdir -p "$scripts_dir"
scripts_from_eval=0
if [ -n "$lib_dir" ]; then
    if nix_eval --eval --strict --json tests/nix-eval/eval.nix -A vmScripts \
        --argstr nixpkgsLib "$lib_dir" >"$work/vm-scripts.json" 2>"$work/vm-scripts.err" \
        && python3 - "$work/vm-scripts.json" "$scripts_dir" <<'EOF'
import json
import sys

with open(sys.argv[1]) as f:
    scripts = json.load(f)
for name, test in sorted(scripts.items()):
    with open(f"{sys.argv[2]}/{name}.py", "w") as out:
        out.write(test["script"])
    with open(f"{sys.argv[2]}/{name}.machines", "w") as out:
        out.write(",".join(test["machines"]))
EOF
    then
        scripts_from_eval=1
    else
        fail "the VM tests' scripts from tests/nix-eval/eval.nix (-A vmScripts)" "$(cat "$work/vm-scripts.err")"
    fi
fi
if [ "$scripts_from_eval" -eq 0 ]; then
    for f in "${py_files[@]}"; do
        name="$(basename "$f" .py)"
        [ "$name" = helpers ] && continue
        [ "$name" = single-node ] && name=single
        cat tests/nixos/helpers.py "$f" >"$scripts_dir/$name.py"
        echo "machine,manager1,manager2,manager3,worker1,worker2" >"$scripts_dir/$name.machines"
    done
fi

echo "== the VM test scripts as the NixOS test driver checks them (mypy $MYPY_VERSION, pyflakes $PYFLAKES_VERSION)"
pyver="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
tools="${SHOAL_PY_TOOLS:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/shoal/nix-eval-python$pyver-mypy$MYPY_VERSION-pyflakes$PYFLAKES_VERSION}"
have_tools() {
    PYTHONPATH="$tools" python3 - "$MYPY_VERSION" "$PYFLAKES_VERSION" <<'EOF' >/dev/null 2>&1
import sys
import mypy.version
import pyflakes
sys.exit(0 if (mypy.version.__version__, pyflakes.__version__) == (sys.argv[1], sys.argv[2]) else 1)
EOF
}
tools_ok=1
if ! have_tools; then
    echo "installing mypy==$MYPY_VERSION and pyflakes==$PYFLAKES_VERSION into $tools"
    rm -rf "$tools.new"
    if out="$(python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --target "$tools.new" "mypy==$MYPY_VERSION" "pyflakes==$PYFLAKES_VERSION" 2>&1)"; then
        rm -rf "$tools" && mkdir -p "$(dirname "$tools")" && mv "$tools.new" "$tools"
    fi
    if ! have_tools; then
        # No pip or no network: a mypy and pyflakes of another version that
        # python3 imports (Debian: apt-get install mypy python3-pyflakes) still
        # check the scripts; say which.
        if python3 -c 'import mypy.version, pyflakes' >/dev/null 2>&1; then
            echo "could not install the pinned versions ($(tail -n 1 <<<"$out")); using python3's own mypy $(python3 -c 'import mypy.version; print(mypy.version.__version__)') and pyflakes $(python3 -c 'import pyflakes; print(pyflakes.__version__)')"
            tools=""
        else
            tools_ok=0
            fail "install mypy==$MYPY_VERSION and pyflakes==$PYFLAKES_VERSION (python3 -m pip install --target $tools ...; or apt-get install mypy python3-pyflakes)" "$out"
        fi
    fi
fi

stub_dir="$repo/tests/nix-eval/driver-stub"
# The globals the driver gives a test script (generate-driver-symbols), for pyflakes.
driver_symbols="start_all,test_script,machines,vlans,driver,log,os,create_machine,subtest,run_tests"
driver_symbols="$driver_symbols,join_all,retry,serial_stdout_off,serial_stdout_on,polling_condition,Machine,t"

# typecheck NAME SCRIPT MACHINES: mypy as driver.nix runs it; prints its output.
typecheck() {
    local typed="$work/typed-$1.py" hints="" m
    IFS=',' read -r -a machine_list <<<"$3"
    for m in "${machine_list[@]}"; do hints="$hints$m: QemuMachine; "; done
    { cat "$stub_dir/prepend.py"; echo "$hints"; echo; cat "$2"; } >"$typed"
    (cd "$work" && MYPYPATH="$stub_dir" PYTHONPATH="$tools" python3 -m mypy \
        --no-implicit-optional --pretty --no-color-output --cache-dir "$work/mypy-cache" \
        "$typed" 2>&1)
}

if [ "$tools_ok" -eq 1 ]; then
    shopt -s nullglob
    scripts=("$scripts_dir"/*.py)
    shopt -u nullglob
    if [ "${#scripts[@]}" -eq 0 ]; then
        fail "no VM test script to check"
    fi
    for script in "${scripts[@]}"; do
        name="$(basename "$script" .py)"
        machines="$(cat "$scripts_dir/$name.machines")"
        if out="$(typecheck "$name" "$script" "$machines")"; then
            pass "mypy: test $name (machines $machines)"
        else
            fail "mypy: test $name (machines $machines)" "$out"
        fi
        if out="$(PYFLAKES_BUILTINS="$machines,$driver_symbols" PYTHONPATH="$tools" python3 -m pyflakes "$script" 2>&1)"; then
            pass "pyflakes: test $name"
        else
            fail "pyflakes: test $name" "$out"
        fi
    done

    # The check must reject what the driver rejects (review F1): a script that
    # assigns the driver's `log` and uses it as a string, and a wrong argument.
    cat tests/nixos/helpers.py - >"$work/bad-log.py" <<'EOF'
log = machine.succeed("journalctl --unit=shoald.service")
t.assertIn("demo.toml", log)
EOF
    cat tests/nixos/helpers.py - >"$work/bad-argument.py" <<'EOF'
machine.wait_for_unit("shoald.service", timeout="5min")
wait_for_ready_nodes(machine, 1)
EOF
    for bad in bad-log bad-argument; do
        if out="$(typecheck "$bad" "$work/$bad.py" machine)"; then
            fail "mypy rejects a script with a known type error ($bad)" "mypy accepted it: $out"
        elif grep -q 'error:' <<<"$out"; then
            pass "mypy rejects a script with a known type error ($bad)"
        else
            fail "mypy rejects a script with a known type error ($bad)" "mypy failed without a type error: $out"
        fi
    done
fi

echo "== module evaluation (lib.evalModules, nixpkgs lib: ${lib_dir:-none})"
if [ -n "$lib_problem" ]; then
    fail "module evaluation" "$lib_problem"
elif [ -z "$lib_dir" ]; then
    skip "module evaluation: no nixpkgs lib (SHOAL_NIXPKGS_LIB is not set and $repo/../shared/vendor/nixpkgs.lib does not exist); point SHOAL_NIXPKGS_LIB at a checkout of nix-community/nixpkgs.lib"
else
    if nix_eval --eval --strict --json tests/nix-eval/eval.nix -A results \
        --argstr nixpkgsLib "$lib_dir" >"$work/results.json" 2>"$work/eval.err"; then
        results="$(python3 - "$work/results.json" <<'EOF'
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
        if [ -z "$results" ] || ! grep -q '^#summary ' <<<"$results"; then
            fail "module evaluation" "could not read the results of tests/nix-eval/eval.nix"
        else
            grep -v '^#summary ' <<<"$results"
            read -r _ ok bad < <(grep '^#summary ' <<<"$results")
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

summary
[ "$failed" -eq 0 ]
