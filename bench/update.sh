#!/usr/bin/env bash
# Rolling update under load: shoal against Docker Swarm (Debian's docker.io) on this machine.
#
# Each side runs a service of REPLICAS (default 20) busybox httpd tasks with a healthcheck
# behind a published port, then updates it (a new environment value, so every task is
# replaced) with order start-first, parallelism 1, monitor 0s (Swarm's pace: the next batch
# starts once the last one is running and healthy) while a client sends requests through the
# published port (100 a second, see --rate). Prints the seconds from the update command until
# the update is completed with every task replaced, and the requests answered and failed during
# it.
#
# Not a test: it exits 0 whenever both halves ran (a timed-out step shows as "timeout"). Swarm's
# published ports go through its ingress network, which needs the kernel's IPVS; where IPVS is
# missing (as on the project's CI machines) Swarm's service has no published port, its update is
# still timed, and its request columns say n/a. See bench/README.md.
#
# usage: bench/update.sh [--only swarm|shoal] [--replicas N] [--monitor DURATION]
#                        [--interval DURATION] [--start-interval DURATION] [--rate N|max]
#                        [--keep-workdir] [--timeout SECONDS]
#
# --rate N sends N requests a second (default 100) whatever the answers take (open loop: a late
# request goes at once, without a burst to catch up): a constant load. --rate max sends the next
# request as soon as the last one is answered (closed loop, what this script did before
# 2026-12-02), which keeps a core busy with the client and the proxy alone: on a 2-core machine
# that measures the update under CPU starvation as much as the update itself, and where IPVS is
# missing only shoal carries that load.
#
# --start-interval adds a 30 s start period checked every DURATION (Docker 25's
# --health-start-interval). Swarm gets it only when its dockerd speaks API 1.44 or newer; Debian
# 12's docker.io (20.10, API 1.41) does not, and then checks a new task first after --interval;
# the report says which.
#
# The same healthcheck runs on a different schedule on each side, and the report says so: Swarm
# checks a new task first one interval (or start interval) after its start; shoal also checks a
# starting task early, at its start and then after 100 ms, 200 ms, 400 ms... (README, "A
# starting task is checked early"). So shoal's time barely depends on --interval while Swarm's
# grows by an interval a batch.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BENCH=update
BENCH_NETNS=shoal-bench-update
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
ARGS=("$@")
ONLY=""
KEEP=0
STEP_TIMEOUT=600
REPLICAS=20
MONITOR=0s
RATE=100
INTERVAL=1s
START_INTERVAL=
PORT=8080

while [[ $# -gt 0 ]]; do
  case "$1" in
    --only) ONLY=${2:?--only needs swarm or shoal}; shift 2 ;;
    --replicas) REPLICAS=${2:?--replicas needs a number}; shift 2 ;;
    --monitor) MONITOR=${2:?--monitor needs a duration}; shift 2 ;;
    --rate) RATE=${2:?--rate needs requests a second or max}; shift 2 ;;
    --interval) INTERVAL=${2:?--interval needs a duration}; shift 2 ;;
    --start-interval) START_INTERVAL=${2:?--start-interval needs a duration}; shift 2 ;;
    --keep-workdir) KEEP=1; shift ;;
    --timeout) STEP_TIMEOUT=${2:?--timeout needs seconds}; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "update: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$ONLY" in ""|swarm|shoal) ;; *) echo "update: --only takes swarm or shoal" >&2; exit 2 ;; esac
[[ $REPLICAS =~ ^[1-9][0-9]*$ && $REPLICAS -le 200 ]] ||
  { echo "update: --replicas takes a number from 1 to 200" >&2; exit 2; }

if [[ $(id -u) -ne 0 ]]; then
  echo "update: run as root (it starts containerd, dockerd and shoald)" >&2
  exit 1
fi

bench_enter_netns "${ARGS[@]}"

DOCKER_IMAGE=shoal-bench/busybox:latest
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker || true)}
SHOALD=${SHOALD:-$REPO/target/release/shoald}
SHOAL=${SHOAL:-$REPO/target/release/shoal}
WORK=$(mktemp -d /tmp/shoal-bench-update.XXXXXX)

# What both sides run and check, and how both update.
# shellcheck disable=SC2016 # $V is the task's variable, expanded by its shell
SERVE='mkdir -p /www && echo "version $V" > /www/index.html && exec httpd -f -p 80 -h /www'
HEALTH_FLAGS=(--health-cmd "wget -qO- http://127.0.0.1/ >/dev/null || exit 1"
  --health-interval "$INTERVAL" --health-timeout 2s --health-retries 3)
[[ -z $START_INTERVAL ]] || HEALTH_FLAGS+=(--health-start-period 30s)
# --health-start-interval, for the sides that know it (set in run_swarm, run_shoal).
START_FLAGS=()
[[ -z $START_INTERVAL ]] || START_FLAGS=(--health-start-interval "$START_INTERVAL")
SWARM_START="not asked"
UPDATE_FLAGS=(--update-order start-first --update-parallelism 1 --update-delay 0s
  --update-monitor "$MONITOR" --update-failure-action pause)

declare -A RESULT # RESULT[shoal:seconds]=12.3, RESULT[shoal:ok]=..., RESULT[shoal:failed]=...

# ---------------------------------------------------------------- the load

# load_start NAME: requests to 127.0.0.1:PORT one after the other or RATE a second (a new
# connection each, 2 s timeout), until WORK/NAME.stop exists; then it writes "answered failed"
# to WORK/NAME.count and the time and reason of each failure to WORK/NAME.failures.
load_start() {
  rm -f "$WORK/$1.stop" "$WORK/$1.count" "$WORK/$1.failures"
  python3 - "$PORT" "$WORK/$1.stop" "$WORK/$1.count" "$WORK/$1.failures" "$RATE" <<'EOF' &
import datetime, os, socket, sys, time
port, stop, out, failures = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
gap = 0.0 if sys.argv[5] == "max" else 1.0 / float(sys.argv[5])
ok = 0
failed = []
due = time.monotonic()
def conntrack(local):
    """The conntrack entry of the connection from local port `local`, if there is one."""
    try:
        with open("/proc/net/nf_conntrack") as f:
            return " ".join(l.split(None, 2)[2].strip() for l in f if f"sport={local} " in l)
    except OSError:
        return ""
while not os.path.exists(stop):
    if gap:
        # Open loop: a request every `gap` seconds whatever the answers take; a late one is
        # sent at once, without a burst to catch up.
        due += gap
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        else:
            due = time.monotonic()
    start = datetime.datetime.now(datetime.timezone.utc)
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        status = data.split(b"\r\n", 1)[0]
        if data.startswith(b"HTTP/1.") and b" 200 " in status and b"version" in data:
            ok += 1
        else:
            failed.append((start, f"answer {status[:60]!r}"))
    except OSError as e:
        try:
            local = s.getsockname()[1]
        except OSError:
            local = None
        failed.append((start, f"{type(e).__name__}: {e} [from port {local}] {conntrack(local)}"))
    finally:
        s.close()
with open(failures, "w") as f:
    for when, why in failed:
        f.write(f"{when:%H:%M:%S.%f} {why}\n")
with open(out, "w") as f:
    f.write(f"{ok} {len(failed)}\n")
EOF
  STARTED_PIDS+=("$!")
}

load_stop() { # NAME -> sets RESULT[NAME:ok] and RESULT[NAME:failed]
  touch "$WORK/$1.stop"
  wait_for 10 test -s "$WORK/$1.count" || true
  if [[ -s $WORK/$1.count ]]; then
    read -r RESULT["$1":ok] RESULT["$1":failed] <"$WORK/$1.count"
  fi
  if [[ -s $WORK/$1.failures ]]; then
    log "$1: failed requests (start time, UTC, and reason):"
    head -20 "$WORK/$1.failures" >&2
  fi
}

# ---------------------------------------------------------------- Swarm half

swarm_running() { # N VALUE: N running tasks whose containers run with V=VALUE
  local n
  n=$(D service ps web --filter desired-state=running --format '{{.CurrentState}}' 2>/dev/null |
    grep -c '^Running' || true)
  [[ $n -eq $1 ]] || return 1
  [[ -z ${2:-} ]] || [[ $(D service inspect web --format '{{.UpdateStatus.State}}' 2>/dev/null) == completed ]]
}

run_swarm() {
  log "swarm: starting containerd, dockerd and swarm init"
  start_swarm
  local publish=() t0
  if [[ -e /proc/net/ip_vs ]]; then
    publish=(--publish "$PORT:80")
  else
    log "swarm: no IPVS in this kernel: Swarm's ingress cannot publish; timing the update without load"
    RESULT[swarm:ok]="n/a"
    RESULT[swarm:failed]="n/a (no IPVS)"
  fi
  local start=() api
  if [[ -n $START_INTERVAL ]]; then
    api=$(D version --format '{{.Server.APIVersion}}' 2>/dev/null || echo 0)
    if [[ $(printf '%s\n1.44\n' "$api" | sort -V | head -n 1) == 1.44 ]]; then
      start=("${START_FLAGS[@]}")
      SWARM_START="every $START_INTERVAL"
    else
      SWARM_START="not supported (dockerd API $api < 1.44): first check after $INTERVAL"
    fi
  fi
  log "swarm: create $REPLICAS replicas with a healthcheck"
  D service create --detach --no-resolve-image --quiet --name web --replicas "$REPLICAS" \
    "${publish[@]}" --env V=1 "${HEALTH_FLAGS[@]}" "${start[@]}" "${UPDATE_FLAGS[@]}" \
    "$DOCKER_IMAGE" sh -c "$SERVE" >/dev/null
  if ! wait_for "$STEP_TIMEOUT" swarm_running "$REPLICAS"; then
    RESULT[swarm:seconds]=timeout
    stop_swarm
    return 0
  fi
  sleep 2
  [[ ${#publish[@]} -eq 0 ]] || load_start swarm
  log "swarm: update (V=2), start-first"
  t0=$(now)
  D service update --detach --quiet --env-add V=2 web >/dev/null
  if wait_for "$STEP_TIMEOUT" swarm_running "$REPLICAS" completed; then
    RESULT[swarm:seconds]=$(since "$t0")
  else
    RESULT[swarm:seconds]=timeout
  fi
  [[ ${#publish[@]} -eq 0 ]] || load_stop swarm
  stop_swarm
}

# ---------------------------------------------------------------- shoal half

shoal_done() { # N [completed]: N running tasks (and the update completed)
  local n
  n=$(S service ls 2>/dev/null | awk '$2 == "web" { split($4, r, "/"); print r[1] }')
  [[ ${n:--1} -eq $1 ]] || return 1
  [[ -z ${2:-} ]] || S service inspect web 2>/dev/null | grep -q '"update_state": "completed"'
}

run_shoal() {
  log "shoal: starting containerd, dbus-daemon and $SHOALD"
  start_shoal
  local t0
  log "shoal: create $REPLICAS replicas with a healthcheck"
  S service create --detach --name web --replicas "$REPLICAS" --publish "$PORT:80" --env V=1 \
    "${HEALTH_FLAGS[@]}" "${START_FLAGS[@]}" "${UPDATE_FLAGS[@]}" \
    "oci-archive:$WORK/busybox-oci.tar" sh -c "$SERVE" >/dev/null
  if ! wait_for "$STEP_TIMEOUT" shoal_done "$REPLICAS"; then
    RESULT[shoal:seconds]=timeout
    stop_shoal
    return 0
  fi
  sleep 2
  load_start shoal
  log "shoal: update (V=2), start-first"
  t0=$(now)
  S service update --detach --env-add V=2 web >/dev/null
  if wait_for "$STEP_TIMEOUT" shoal_done "$REPLICAS" completed; then
    RESULT[shoal:seconds]=$(since "$t0")
  else
    RESULT[shoal:seconds]=timeout
  fi
  load_stop shoal
  stop_shoal
}

# ---------------------------------------------------------------- cleanup and report

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  touch "$WORK/shoal.stop" "$WORK/swarm.stop" 2>/dev/null
  stop_shoal 2>/dev/null
  stop_swarm 2>/dev/null
  bench_finish "$WORK" "$KEEP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

row() { printf '%-40s %14s %14s %12s\n' "$@"; }

report() {
  local s h
  echo
  echo "rolling update under load: $REPLICAS replicas, start-first, parallelism 1, monitor $MONITOR,"
  echo "healthcheck every $INTERVAL; load: $([[ $RATE == max ]] && echo "closed loop" || echo "$RATE requests/s");"
  echo "$(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
  if [[ -n $START_INTERVAL ]]; then
    echo "start period 30s checked every $START_INTERVAL: shoal yes; swarm $SWARM_START"
  fi
  echo "first check of a new task: swarm after ${START_INTERVAL:-$INTERVAL}; shoal at its start, then early checks"
  echo "swarm: $(dockerd --version 2>/dev/null | head -1 || echo "not run")"
  echo "shoal: $([[ -x $SHOALD ]] && "$SHOALD" --version 2>/dev/null | head -1 || echo "not run")"
  echo
  row "" swarm shoal swarm/shoal
  s=${RESULT[swarm:seconds]:-n/a}; h=${RESULT[shoal:seconds]:-n/a}
  row "update completed (s)" "$s" "$h" "$(ratio "$s" "$h")"
  row "requests answered during the update" "${RESULT[swarm:ok]:-n/a}" "${RESULT[shoal:ok]:-n/a}" ""
  row "requests failed during the update" "${RESULT[swarm:failed]:-n/a}" "${RESULT[shoal:failed]:-n/a}" ""
}

for tool in containerd ctr runc python3 ip dbus-daemon; do
  command -v "$tool" >/dev/null || { echo "update: $tool is missing; run scripts/install-deps.sh" >&2; exit 1; }
done
if [[ $ONLY != shoal ]]; then
  if [[ -z $DOCKER ]] || ! command -v dockerd >/dev/null; then
    echo "update: docker.io is missing (scripts/install-deps.sh --bench)" >&2; exit 1
  fi
fi
if [[ $ONLY != swarm ]] && { [[ ! -x $SHOALD ]] || [[ ! -x $SHOAL ]]; }; then
  echo "update: $SHOALD or $SHOAL not found; build them with:" >&2
  echo "  cargo build --release -p shoald -p shoal" >&2
  if [[ $ONLY == shoal ]]; then exit 1; fi
  echo "update: running the Swarm half only" >&2
  ONLY=swarm
fi

[[ $ONLY == shoal ]] || run_swarm
[[ $ONLY == swarm ]] || run_shoal
report
