#!/usr/bin/env bash
# Side-by-side benchmark: Docker Swarm mode (Debian's docker.io) against shoal on this machine.
#
# Not a test: it prints a table of wall-clock times and daemon memory and exits 0 whenever both
# halves ran (a timed-out step shows as "timeout"). See bench/README.md.
#
# usage: bench/swarm-vs-shoal.sh [--only swarm|shoal] [--keep-workdir] [--timeout SECONDS]
#
# The whole run happens in a network namespace of its own, and each orchestrator gets its own
# containerd (own root, state, socket); shoal also gets its own dbus-daemon and state directory.
# So neither dockerd's nor shoald's bridges, firewall rules and ports touch the host. Everything
# started here is stopped again on exit, also on failure or Ctrl-C.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BENCH=swarm-vs-shoal
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
ARGS=("$@")
ONLY=""
KEEP=0
STEP_TIMEOUT=300
SIZES=(1 10 50)
SCALE_TO=100

while [[ $# -gt 0 ]]; do
  case "$1" in
    --only) ONLY=${2:?--only needs swarm or shoal}; shift 2 ;;
    --keep-workdir) KEEP=1; shift ;;
    --timeout) STEP_TIMEOUT=${2:?--timeout needs seconds}; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "swarm-vs-shoal: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$ONLY" in ""|swarm|shoal) ;; *) echo "swarm-vs-shoal: --only takes swarm or shoal" >&2; exit 2 ;; esac

if [[ $(id -u) -ne 0 ]]; then
  echo "swarm-vs-shoal: run as root (it starts containerd, dockerd and shoald)" >&2
  exit 1
fi

bench_enter_netns "${ARGS[@]}"

# The task both orchestrators run is lib.sh's TASK_CMD.
DOCKER_IMAGE=shoal-bench/busybox:latest

DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker || true)}
SHOALD=${SHOALD:-$REPO/target/release/shoald}
SHOAL=${SHOAL:-$REPO/target/release/shoal}

WORK=$(mktemp -d /tmp/shoal-bench.XXXXXX)

declare -A RESULT   # RESULT[swarm:deploy1]=0.41 ...

# ---------------------------------------------------------------- Swarm half

swarm_running() { # NAME N
  local n
  n=$(D service ps "$1" --filter desired-state=running --format '{{.CurrentState}}' 2>/dev/null |
    grep -c '^Running' || true)
  [[ $n -eq $2 ]]
}
swarm_no_containers() {
  [[ -z $(ctr -a "$WORK/swarm-containerd/containerd.sock" -n moby containers ls -q 2>/dev/null) ]]
}

run_swarm() {
  log "swarm: starting containerd, dockerd and swarm init"
  start_swarm
  sleep 5
  RESULT[swarm:rss_idle]=$(rss_mb "$(cat "$WORK/docker/dockerd.main")")
  local n name t0
  for n in "${SIZES[@]}"; do
    name=bench$n
    log "swarm: create $n replica(s)"
    t0=$(now)
    D service create --detach --no-resolve-image --quiet --name "$name" --replicas "$n" \
      "$DOCKER_IMAGE" "${TASK_CMD[@]}" >/dev/null
    if wait_for "$STEP_TIMEOUT" swarm_running "$name" "$n"; then
      RESULT[swarm:deploy$n]=$(since "$t0")
    else
      RESULT[swarm:deploy$n]=timeout
    fi
    if [[ $n -ne ${SIZES[-1]} ]]; then
      D service rm "$name" >/dev/null
      wait_for "$STEP_TIMEOUT" swarm_no_containers || true
    fi
  done
  name=bench${SIZES[-1]}
  log "swarm: scale ${SIZES[-1]} -> $SCALE_TO"
  t0=$(now)
  D service scale --detach "$name=$SCALE_TO" >/dev/null 2>&1
  if wait_for "$STEP_TIMEOUT" swarm_running "$name" "$SCALE_TO"; then
    RESULT[swarm:scale]=$(since "$t0")
  else
    RESULT[swarm:scale]=timeout
  fi
  sleep 2
  RESULT[swarm:rss_busy]=$(rss_mb "$(cat "$WORK/docker/dockerd.main")")
  log "swarm: remove $SCALE_TO replicas"
  t0=$(now)
  D service rm "$name" >/dev/null
  if wait_for "$STEP_TIMEOUT" swarm_no_containers; then
    RESULT[swarm:remove]=$(since "$t0")
  else
    RESULT[swarm:remove]=timeout
  fi
  stop_swarm
}

# ---------------------------------------------------------------- shoal half

shoal_running() { # NAME N
  local n
  # REPLICAS is "running/desired"; parsed with awk, as the Swarm side uses grep, so that
  # neither side pays for an interpreter start on every poll.
  n=$(S service ls 2>/dev/null | awk -v name="$1" '$2 == name { split($4, r, "/"); print r[1] }')
  [[ ${n:--1} -eq $2 ]]
}
shoal_no_containers() {
  [[ -z $(ctr -a "$WORK/shoal-containerd/containerd.sock" -n shoal-bench containers ls -q 2>/dev/null) ]]
}

run_shoal() {
  log "shoal: starting containerd, dbus-daemon and $SHOALD"
  start_shoal
  sleep 5
  RESULT[shoal:rss_idle]=$(rss_mb "$(cat "$WORK/shoal/shoald.pid")")
  local image="oci-archive:$WORK/busybox-oci.tar" n name t0
  for n in "${SIZES[@]}"; do
    name=bench$n
    log "shoal: create $n replica(s)"
    t0=$(now)
    S service create --detach --name "$name" --replicas "$n" "$image" "${TASK_CMD[@]}" >/dev/null
    if wait_for "$STEP_TIMEOUT" shoal_running "$name" "$n"; then
      RESULT[shoal:deploy$n]=$(since "$t0")
    else
      RESULT[shoal:deploy$n]=timeout
    fi
    if [[ $n -ne ${SIZES[-1]} ]]; then
      S service rm "$name" >/dev/null
      wait_for "$STEP_TIMEOUT" shoal_no_containers || true
    fi
  done
  name=bench${SIZES[-1]}
  log "shoal: scale ${SIZES[-1]} -> $SCALE_TO"
  t0=$(now)
  S service scale "$name=$SCALE_TO" --detach >/dev/null
  if wait_for "$STEP_TIMEOUT" shoal_running "$name" "$SCALE_TO"; then
    RESULT[shoal:scale]=$(since "$t0")
  else
    RESULT[shoal:scale]=timeout
  fi
  sleep 2
  RESULT[shoal:rss_busy]=$(rss_mb "$(cat "$WORK/shoal/shoald.pid")")
  log "shoal: remove $SCALE_TO replicas"
  t0=$(now)
  S service rm "$name" >/dev/null
  if wait_for "$STEP_TIMEOUT" shoal_no_containers; then
    RESULT[shoal:remove]=$(since "$t0")
  else
    RESULT[shoal:remove]=timeout
  fi
  stop_shoal
}

# ---------------------------------------------------------------- cleanup and report

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  stop_shoal 2>/dev/null
  stop_swarm 2>/dev/null
  local p
  for p in "${STARTED_PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  unmount_under "$WORK"
  if [[ $KEEP -eq 1 ]]; then
    log "logs and state kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

row() { printf '%-34s %10s %10s %12s\n' "$@"; }

report() {
  local key label s h
  echo
  echo "shoal vs Docker Swarm, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "swarm: $(dockerd --version 2>/dev/null | head -1)"
  echo "shoal: $([[ -x $SHOALD ]] && "$SHOALD" --version 2>/dev/null | head -1 || echo "not run")"
  echo
  row "time (s)" swarm shoal swarm/shoal
  for key in deploy1 deploy10 deploy50 scale remove; do
    case $key in
      deploy1) label="deploy 1 replica" ;;
      deploy10) label="deploy 10 replicas" ;;
      deploy50) label="deploy 50 replicas" ;;
      scale) label="scale 50 -> 100" ;;
      remove) label="remove 100 replicas" ;;
    esac
    s=${RESULT[swarm:$key]:-n/a}; h=${RESULT[shoal:$key]:-n/a}
    row "$label" "$s" "$h" "$(ratio "$s" "$h")"
  done
  echo
  row "daemon RSS (MB)" dockerd shoald shoal/swarm
  for key in rss_idle rss_busy; do
    case $key in
      rss_idle) label="idle, no tasks" ;;
      rss_busy) label="with 100 tasks" ;;
    esac
    s=${RESULT[swarm:$key]:-n/a}; h=${RESULT[shoal:$key]:-n/a}
    row "$label" "$s" "$h" "$(ratio "$h" "$s")"
  done
}

for tool in containerd ctr runc python3 ip dbus-daemon; do
  command -v "$tool" >/dev/null || { echo "swarm-vs-shoal: $tool is missing; run scripts/install-deps.sh" >&2; exit 1; }
done

if [[ $ONLY != shoal ]]; then
  if [[ -z $DOCKER ]] || ! command -v dockerd >/dev/null; then
    echo "swarm-vs-shoal: docker.io is missing (apt-get install docker.io)" >&2; exit 1
  fi
fi
if [[ $ONLY != swarm ]] && { [[ ! -x $SHOALD ]] || [[ ! -x $SHOAL ]]; }; then
  echo "swarm-vs-shoal: $SHOALD or $SHOAL not found; build them with:" >&2
  echo "  cargo build --release -p shoald -p shoal" >&2
  if [[ $ONLY == shoal ]]; then exit 1; fi
  echo "swarm-vs-shoal: running the Swarm half only" >&2
  ONLY=swarm
fi

[[ $ONLY == shoal ]] || run_swarm
[[ $ONLY == swarm ]] || run_shoal
report
