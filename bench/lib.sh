# Shared helpers of the benchmarks in bench/ (sourced, not run).
#
# The sourcing script sets REPO, BENCH (its name, for messages) and optionally BENCH_NETNS (the
# prefix of its network namespace's name), and calls bench_enter_netns "$@" early. Everything a helper starts goes into STARTED_PIDS, so the
# script's cleanup can kill what is left.

BENCH=${BENCH:-bench}
declare -a STARTED_PIDS=()

# The task every benchmark runs: exits promptly on SIGTERM so removal measures the orchestrator,
# not a 10 s stop grace period.
TASK_CMD=(sh -c "trap 'exit 0' TERM; while true; do sleep 1 & wait \$!; done")

# ratio A B: "A/B" as "2.5x", or "-" when either is not a number (n/a, timeout) or B is 0.
ratio() {
  if [[ $1 =~ ^[0-9.]+$ && $2 =~ ^[0-9.]+$ ]] && awk -v b="$2" 'BEGIN { exit !(b > 0) }'; then
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }'
  else
    echo "-"
  fi
}

# bench_finish WORK KEEP: kills whatever STARTED_PIDS left, unmounts WORK and removes it (or
# says where it is kept when KEEP is 1). For the scripts' EXIT traps, after their own stops.
bench_finish() {
  local p
  for p in "${STARTED_PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  unmount_under "$1"
  if [[ $2 -eq 1 ]]; then
    log "logs and state kept in $1"
  else
    rm -rf "$1"
  fi
}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
rss_mb() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "n/a"; }

# wait_for SECONDS COMMAND...: polls every WAIT_POLL seconds (default 0.1) until COMMAND
# succeeds; 1 on timeout.
wait_for() {
  local limit=$1; shift
  local deadline
  deadline=$(awk -v t="$(now)" -v l="$limit" 'BEGIN { printf "%.3f", t + l }')
  until "$@"; do
    if awk -v t="$(now)" -v d="$deadline" 'BEGIN { exit !(t > d) }'; then return 1; fi
    sleep "${WAIT_POLL:-0.1}"
  done
}

# bench_enter_netns ARGS...: re-runs the calling script ($0) inside a fresh network namespace and
# a private mount namespace, deletes the network namespace afterwards and exits with the
# script's status. Returns at once when already inside. (Not `ip netns exec`: its fresh /sys
# lacks the cgroup hierarchy that dockerd and runc need.)
bench_enter_netns() {
  [[ -z ${SHOAL_BENCH_NETNS:-} ]] || return 0
  local ns=${BENCH_NETNS:-shoal-bench}-$$ child rc=0
  ip netns add "$ns" || { echo "$BENCH: cannot create network namespace $ns" >&2; exit 1; }
  ip -n "$ns" link set lo up
  SHOAL_BENCH_NETNS=$ns nsenter --net="/run/netns/$ns" -- \
    unshare --mount --propagation slave -- bash "$0" "$@" &
  child=$!
  # A background child of a script ignores SIGINT; pass Ctrl-C and TERM on as TERM.
  trap 'kill -TERM "$child" 2>/dev/null' INT TERM
  wait "$child" || rc=$?
  while kill -0 "$child" 2>/dev/null; do wait "$child" || rc=$?; done
  ip netns delete "$ns" 2>/dev/null || true
  exit "$rc"
}

# ---------------------------------------------------------------- containerd

containerd_answers() { # SOCKET (ctr waits 10 s for a socket that does not exist yet)
  [[ -S $1 ]] && ctr --connect-timeout 5s -a "$1" version >/dev/null 2>&1
}

# start_containerd DIR: a private containerd with everything under DIR; socket DIR/containerd.sock
start_containerd() {
  local dir=$1
  mkdir -p "$dir/root" "$dir/state"
  cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[debug]
  address = "$dir/debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
EOF
  containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
  echo $! >"$dir/containerd.pid"
  STARTED_PIDS+=("$!")
  if ! wait_for 60 containerd_answers "$dir/containerd.sock"; then
    echo "$BENCH: containerd in $dir did not answer within 60s; see $dir/containerd.log" >&2
    return 1
  fi
}

# stop_containerd DIR NAMESPACE: kills the tasks left in NAMESPACE, stops containerd, then the
# shims it left behind (found by this instance's unique socket path), and unmounts DIR.
stop_containerd() {
  local dir=$1 ns=$2 sock=$1/containerd.sock pid
  [[ -f $dir/containerd.pid ]] || return 0
  pid=$(cat "$dir/containerd.pid")
  if kill -0 "$pid" 2>/dev/null; then
    local t c
    for t in $(ctr -a "$sock" -n "$ns" tasks ls -q 2>/dev/null); do
      ctr -a "$sock" -n "$ns" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
    done
    for t in $(ctr -a "$sock" -n "$ns" tasks ls -q 2>/dev/null); do
      ctr -a "$sock" -n "$ns" tasks delete -f "$t" >/dev/null 2>&1 || true
    done
    for c in $(ctr -a "$sock" -n "$ns" containers ls -q 2>/dev/null); do
      ctr -a "$sock" -n "$ns" containers delete "$c" >/dev/null 2>&1 || true
    done
    kill "$pid" 2>/dev/null || true
    wait_for 20 bash -c "! kill -0 $pid 2>/dev/null" || kill -9 "$pid" 2>/dev/null || true
  fi
  local p
  for p in /proc/[0-9]*; do
    if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "-address $sock "; then
      kill -9 "${p#/proc/}" 2>/dev/null || true
    fi
  done
  rm -f "$dir/containerd.pid"
}

# unmount_under DIR: lazily unmounts every mount point below DIR, deepest first.
unmount_under() {
  local m
  awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

# ---------------------------------------------------------------- a private system bus

# start_bus DIR: a dbus-daemon of type system with an allow-all policy, listening on
# DIR/bus.sock (shoald owns org.shoal.Shoal1 there; the CLI finds it through
# DBUS_SYSTEM_BUS_ADDRESS=unix:path=DIR/bus.sock). Its pid goes to DIR/dbus.pid.
start_bus() {
  local dir=$1
  mkdir -p "$dir"
  cat >"$dir/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$dir/bus.sock</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
EOF
  dbus-daemon --config-file="$dir/bus.conf" --nofork --nopidfile >"$dir/dbus.log" 2>&1 &
  echo $! >"$dir/dbus.pid"
  STARTED_PIDS+=("$!")
  wait_for 20 test -S "$dir/bus.sock"
}

stop_bus() { # DIR
  if [[ -f $1/dbus.pid ]]; then
    kill "$(cat "$1/dbus.pid")" 2>/dev/null || true
    rm -f "$1/dbus.pid"
  fi
}

# build_busybox_oci FILE: the busybox image both benchmarks run, as an OCI archive named
# docker.io/library/busybox:latest (built once per run by scripts/mkimage.py).
build_busybox_oci() {
  [[ -s $1 ]] || python3 "$REPO/scripts/mkimage.py" --format oci --name docker.io/library/busybox:latest -o "$1"
}

# ---------------------------------------------------------------- one Swarm node, one shoal node

# For the scripts that run both side by side in one network namespace (swarm-vs-shoal.sh,
# update.sh): each under $WORK with its own containerd. The caller sets WORK, DOCKER,
# DOCKER_IMAGE (the name `docker load` gives the busybox image), SHOALD and SHOAL.

D() { "$DOCKER" -H "unix://$WORK/docker/docker.sock" "$@"; }

start_swarm() {
  local dir=$WORK/docker
  mkdir -p "$dir/data" "$dir/exec"
  start_containerd "$WORK/swarm-containerd"
  # Docker's defaults (docker0, iptables rules): they land in this run's network namespace.
  # DOCKER_SERVICE_PREFER_OFFLINE_IMAGE: the swarm agent uses the loaded image instead of trying
  # a pull from Docker Hub before every task start (shoal uses its local archive too).
  DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 dockerd --containerd="$WORK/swarm-containerd/containerd.sock" \
    --data-root="$dir/data" --exec-root="$dir/exec" --pidfile="$dir/dockerd.pid" \
    -H "unix://$dir/docker.sock" >"$dir/dockerd.log" 2>&1 &
  echo $! >"$dir/dockerd.main"
  STARTED_PIDS+=("$!")
  if ! wait_for 60 D version >/dev/null 2>&1; then
    echo "$BENCH: dockerd did not answer within 60s; see $dir/dockerd.log" >&2
    return 1
  fi
  D swarm init --advertise-addr 127.0.0.1 >/dev/null
  python3 "$REPO/scripts/mkimage.py" --format docker --name "$DOCKER_IMAGE" -o "$WORK/busybox-docker.tar"
  D load -i "$WORK/busybox-docker.tar" >/dev/null
}

# stop_swarm [DOCKER_DIR [CONTAINERD_DIR]]: removes every service, leaves the swarm and stops
# dockerd and its containerd (by default the ones start_swarm started).
# shellcheck disable=SC2120 # the arguments are optional
stop_swarm() {
  local dir=${1:-$WORK/docker} ctd=${2:-$WORK/swarm-containerd} pid
  [[ -f $dir/dockerd.main ]] || return 0
  pid=$(cat "$dir/dockerd.main")
  if kill -0 "$pid" 2>/dev/null; then
    local s
    for s in $(D service ls -q 2>/dev/null); do D service rm "$s" >/dev/null 2>&1 || true; done
    D swarm leave --force >/dev/null 2>&1 || true
    kill "$pid" 2>/dev/null || true
    wait_for 30 bash -c "! kill -0 $pid 2>/dev/null" || kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/dockerd.main"
  stop_containerd "$ctd" moby
}

S() { DBUS_SYSTEM_BUS_ADDRESS="unix:path=$WORK/shoal/bus.sock" "$SHOAL" "$@"; }

start_shoal() {
  local dir=$WORK/shoal
  mkdir -p "$dir/state" "$dir/stacks"
  start_containerd "$WORK/shoal-containerd"
  # A private system bus: shoald owns org.shoal.Shoal1 there, the CLI finds it through
  # DBUS_SYSTEM_BUS_ADDRESS, and the host's bus is left alone.
  start_bus "$dir"
  cat >"$dir/cluster.toml" <<EOF
[node]
name = "bench"

[network]
listen = "127.0.0.1:4600"
advertise = "127.0.0.1:4600"

[cluster]
bootstrap = true

[containerd]
address = "$WORK/shoal-containerd/containerd.sock"
namespace = "shoal-bench"

[paths]
state_dir = "$dir/state"
stacks_dir = "$dir/stacks"

# Imported at start, as Swarm gets the image with `docker load` before the clock runs.
[images]
preload = ["oci-archive:$WORK/busybox-oci.tar"]
EOF
  build_busybox_oci "$WORK/busybox-oci.tar"
  DBUS_SYSTEM_BUS_ADDRESS="unix:path=$dir/bus.sock" "$SHOALD" --config "$dir/cluster.toml" \
    >"$dir/shoald.log" 2>&1 &
  echo $! >"$dir/shoald.pid"
  STARTED_PIDS+=("$!")
  if ! wait_for 120 S info >/dev/null 2>&1; then
    echo "$BENCH: shoald did not answer 'shoal info' within 120s; see $dir/shoald.log" >&2
    return 1
  fi
}

stop_shoal() {
  local dir=$WORK/shoal pid
  if [[ -f $dir/shoald.pid ]]; then
    pid=$(cat "$dir/shoald.pid")
    if kill -0 "$pid" 2>/dev/null; then
      local s
      for s in $(S service ls -q 2>/dev/null); do S service rm "$s" >/dev/null 2>&1 || true; done
      kill "$pid" 2>/dev/null || true
      wait_for 30 bash -c "! kill -0 $pid 2>/dev/null" || kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/shoald.pid"
  fi
  # Tasks outlive shoald by design: stop_containerd kills whatever is left.
  stop_containerd "$WORK/shoal-containerd" shoal-bench
  stop_bus "$dir"
}
