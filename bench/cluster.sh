#!/usr/bin/env bash
# Cluster benchmark: leader failover, dead-worker replacement, placement rate in the simulation,
# shoald memory on a manager and a worker, and deploy 50 against the `ctr run -d` floor.
#
# Not a test: it prints a table with shoal's numbers next to the goals and the published anchors
# (Swarm, Kubernetes, Nomad) and exits 0 whenever the steps ran (a step that times out shows as
# "timeout"). See bench/README.md.
#
# usage: bench/cluster.sh [--only STEPS] [--rounds N] [--keep-workdir] [--timeout SECONDS]
#
#   STEPS   comma-separated subset of: failover,worker,placement,rss,deploy (default: all)
#   N       repetitions of the failover, worker-death and deploy rows (default 3)
#
# Every node is simulated on this machine: its own containerd, its own dbus-daemon and its own
# shoald (node port on 127.0.0.1, own bridge and subnet), all in one network namespace of the
# script's own, with a private mount namespace. Everything started here is stopped again on
# exit, also on failure or Ctrl-C.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BENCH=cluster
BENCH_NETNS=shoal-cluster
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
ARGS=("$@")
ONLY="failover,worker,placement,rss,deploy"
ROUNDS=3
KEEP=0
STEP_TIMEOUT=120

while [[ $# -gt 0 ]]; do
  case "$1" in
    --only) ONLY=${2:?--only needs a list of steps}; shift 2 ;;
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
    --keep-workdir) KEEP=1; shift ;;
    --timeout) STEP_TIMEOUT=${2:?--timeout needs seconds}; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "cluster: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for s in ${ONLY//,/ }; do
  case $s in failover|worker|placement|rss|deploy) ;; *) echo "cluster: unknown step $s" >&2; exit 2 ;; esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "cluster: --rounds takes a positive number" >&2; exit 2; }
step() { [[ ,$ONLY, == *,$1,* ]]; }

if [[ $(id -u) -ne 0 ]]; then
  echo "cluster: run as root (it starts containerd, dbus-daemon and shoald)" >&2
  exit 1
fi

bench_enter_netns "${ARGS[@]}"

SHOALD=${SHOALD:-$REPO/target/release/shoald}
SHOAL=${SHOAL:-$REPO/target/release/shoal}
PLACEMENT_BENCH=${PLACEMENT_BENCH:-$REPO/target/release/examples/placement_bench}

for tool in containerd ctr runc python3 ip dbus-daemon timeout; do
  command -v "$tool" >/dev/null || { echo "cluster: $tool is missing; run scripts/install-deps.sh" >&2; exit 1; }
done
command -v jq >/dev/null || { echo "cluster: jq is missing (apt-get install jq)" >&2; exit 1; }
for b in "$SHOALD" "$SHOAL" "$PLACEMENT_BENCH"; do
  if [[ ! -x $b ]]; then
    echo "cluster: $b not found; build with:" >&2
    echo "  cargo build --release -p shoald -p shoal -p shoal-containerd -p control --examples" >&2
    exit 1
  fi
done

WORK=$(mktemp -d /tmp/shoal-cluster.XXXXXX)
IMAGE_TAR=$WORK/busybox-oci.tar
IMAGE="oci-archive:$IMAGE_TAR"
SECRET=cluster-bench-provisioning-secret
NS=shoal-bench          # containerd namespace of every shoald here
POLL=0.05               # how often the failover and worker-death rows poll
declare -A RESULT
declare -a NODES=()     # every node started (its directory is $WORK/nodes/NAME)
NODE_SEQ=0

# ---------------------------------------------------------------- nodes

ndir() { echo "$WORK/nodes/$1"; }
# S NODE ARGS...: the shoal CLI against NODE's bus.
S() { local d; d=$(ndir "$1"); shift; DBUS_SYSTEM_BUS_ADDRESS="unix:path=$d/bus.sock" "$SHOAL" "$@"; }
shoald_pid() { cat "$(ndir "$1")/shoald.pid" 2>/dev/null; }

# node_create NAME ROLE HEARTBEAT [JOIN_PORT]: containerd, bus and cluster file for a node; the
# first node of a cluster (no JOIN_PORT) bootstraps it. Prints nothing; see node_start.
node_create() {
  local name=$1 role=$2 hb=$3 join=${4:-} d idx
  d=$(ndir "$name")
  NODE_SEQ=$((NODE_SEQ + 1)); idx=$NODE_SEQ
  mkdir -p "$d/state" "$d/stacks" "$d/run"
  NODES+=("$name")
  echo "$SECRET" >"$WORK/token"
  start_containerd "$d/ctd"
  start_bus "$d"
  echo $((4700 + idx)) >"$d/port"
  {
    cat <<EOF
[node]
name = "$name"
role = "$role"

[network]
listen = "127.0.0.1:$((4700 + idx))"
bridge = "shb$idx"
subnet = "10.240.$idx.0/24"

[cluster]
EOF
    if [[ -z $join ]]; then echo "bootstrap = true"; else echo "join = [\"127.0.0.1:$join\"]"; fi
    cat <<EOF
token_file = "$WORK/token"

[cluster.settings]
heartbeat_period = "$hb"

[containerd]
address = "$d/ctd/containerd.sock"
namespace = "$NS"

[paths]
state_dir = "$d/state"
stacks_dir = "$d/stacks"
run_dir = "$d/run"

[images]
preload = ["$IMAGE"]
EOF
  } >"$d/cluster.toml"
}

# node_start NAME: starts shoald (log appended to NODE/shoald.log) and waits until it answers.
node_start() {
  local d; d=$(ndir "$1")
  DBUS_SYSTEM_BUS_ADDRESS="unix:path=$d/bus.sock" "$SHOALD" --config "$d/cluster.toml" \
    >>"$d/shoald.log" 2>&1 &
  echo $! >"$d/shoald.pid"
  STARTED_PIDS+=("$!")
  if ! wait_for 120 S "$1" info >/dev/null 2>&1; then
    echo "cluster: shoald of $1 did not answer 'shoal info' within 120s; see $d/shoald.log" >&2
    return 1
  fi
}

node_kill9() { # NAME
  local pid; pid=$(shoald_pid "$1")
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$(ndir "$1")/shoald.pid"
}

# node_stop NAME: shoald, its tasks, containerd and the bus; unmounts its task namespaces.
node_stop() {
  local d pid; d=$(ndir "$1")
  pid=$(shoald_pid "$1" || true)
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    wait_for 30 bash -c "! kill -0 $pid 2>/dev/null" || kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$d/shoald.pid"
  stop_containerd "$d/ctd" "$NS"
  stop_bus "$d"
  unmount_under "$d"
}

# cluster_up HEARTBEAT MANAGERS WORKERS PREFIX: PREFIXm1 bootstraps, the others join as
# workers, and MANAGERS-1 of them are promoted. Sets CL (the node names, managers first).
cluster_up() {
  local hb=$1 managers=$2 workers=$3 p=$4 i port
  CL=("${p}m1")
  node_create "${p}m1" manager "$hb"
  node_start "${p}m1"
  port=$(cat "$(ndir "${p}m1")/port")
  for ((i = 2; i <= managers; i++)); do CL+=("${p}m$i"); done
  for ((i = 1; i <= workers; i++)); do CL+=("${p}w$i"); done
  for n in "${CL[@]:1}"; do node_create "$n" worker "$hb" "$port"; done
  for n in "${CL[@]:1}"; do node_start "$n"; done
  if ! wait_for "$STEP_TIMEOUT" cluster_is "${CL[0]}" "${#CL[@]}" 1; then
    echo "cluster: ${#CL[@]} nodes did not become ready; see $WORK/nodes/*/shoald.log" >&2
    return 1
  fi
  for ((i = 2; i <= managers; i++)); do S "${CL[0]}" node promote "${p}m$i" >/dev/null; done
  if ! wait_for "$STEP_TIMEOUT" cluster_is "${CL[0]}" "${#CL[@]}" "$managers"; then
    echo "cluster: $managers managers did not become ready; see $WORK/nodes/*/shoald.log" >&2
    return 1
  fi
  # A promotion is in the state before the node has its manager certificate and a vote: wait
  # until every manager answers as one and counts the voters.
  for ((i = 1; i <= managers; i++)); do
    if ! wait_for "$STEP_TIMEOUT" voters_are "${p}m$i" "$managers"; then
      echo "cluster: ${p}m$i does not see $managers raft voters; see $WORK/nodes/*/shoald.log" >&2
      return 1
    fi
  done
}

voters_are() { # NODE N: NODE is a manager and its raft has N voters
  local out
  out=$(S "$1" info 2>/dev/null) || return 1
  grep -q "Is Manager: true" <<<"$out" && grep -q "Voters: $2\$" <<<"$out"
}

cluster_down() { local n; for n in "${CL[@]}"; do node_stop "$n"; done; }

# cluster_is NODE N MANAGERS: NODE sees N nodes, all ready, MANAGERS managers, one leader.
cluster_is() {
  S "$1" node ls --format json 2>/dev/null | jq -e --argjson n "$2" --argjson m "$3" '
    length == $n and all(.status == "ready") and
    ([.[] | select(.manager_status != "")] | length) == $m and
    ([.[] | select(.manager_status == "leader")] | length) == 1' >/dev/null 2>&1
}

leaders_agree() { # NODE...: every NODE names the same leader
  local n l first=""
  for n in "$@"; do
    l=$(leader_of "$n")
    [[ -n $l ]] || return 1
    [[ -z $first ]] && first=$l
    [[ $l == "$first" ]] || return 1
  done
}

leader_of() { # NODE -> name of the leader as NODE sees it
  S "$1" node ls --format json 2>/dev/null | jq -r '.[] | select(.manager_status == "leader") | .name'
}

# running_on NODE SERVICE -> "node count" lines of running tasks (desired and observed)
running_on() {
  S "$1" service ps "$2" --format json 2>/dev/null |
    jq -r '[.[] | select(.state == "running" and .desired == "running") | .node] | group_by(.) | .[] | "\(.[0]) \(length)"'
}

# service_running NODE SERVICE N: N tasks running
service_running() {
  local n
  n=$(S "$1" service ls 2>/dev/null | awk -v name="$2" '$2 == name { split($4, r, "/"); print r[1] }')
  [[ ${n:--1} -eq $3 ]]
}

# ---------------------------------------------------------------- helpers for the numbers

# stats V...: "min / median" of the numeric values (others ignored), "timeout" when none.
stats() {
  local v=() x
  for x in "$@"; do [[ $x =~ ^[0-9.]+$ ]] && v+=("$x"); done
  if [[ ${#v[@]} -eq 0 ]]; then echo "timeout"; return; fi
  printf '%s\n' "${v[@]}" | sort -g | awk '{ a[NR] = $1 } END {
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
    printf "%.2f / %.2f", a[1], m }'
}
median() { stats "$@" | awk -F' / ' '{ print $2 }'; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
late() { awk -v t="$(now)" -v d="$1" 'BEGIN { exit !(t > d) }'; }
deadline() { awk -v t="$(now)" -v l="$1" 'BEGIN { printf "%.3f", t + l }'; }

# ---------------------------------------------------------------- 1. leader failover

run_failover() {
  log "failover: 3 managers"
  cluster_up 1s 3 0 f
  S fm1 service create --detach --name probe --replicas 1 "$IMAGE" "${TASK_CMD[@]}" >/dev/null
  wait_for "$STEP_TIMEOUT" service_running fm1 probe 1 || true
  local r leader survivor t0 dl n secs=()
  for ((r = 1; r <= ROUNDS; r++)); do
    # The leader as every manager sees it; they must agree (a restarted node may answer from
    # what it knew before it heard from the new leader).
    if ! wait_for "$STEP_TIMEOUT" leaders_agree "${CL[@]}"; then
      log "failover $r: the managers do not agree on a leader: $(for n in "${CL[@]}"; do printf '%s->%s ' "$n" "$(leader_of "$n")"; done)"
      secs+=(timeout); break
    fi
    leader=$(leader_of "${CL[0]}")
    survivor=""
    for n in "${CL[@]}"; do [[ $n != "$leader" ]] && { survivor=$n; break; }; done
    log "failover $r/$ROUNDS: kill -9 the leader ($leader), changes through $survivor"
    t0=$(now)
    node_kill9 "$leader"
    log "failover $r: killed at $(date -u -d "@$t0" +%H:%M:%S.%3N) UTC"
    dl=$(deadline "$STEP_TIMEOUT")
    # A change: scale the probe service to a count it has never had (1 -> 2 -> 3 ...), through
    # a surviving manager, with a short client timeout, every POLL seconds.
    while :; do
      if DBUS_SYSTEM_BUS_ADDRESS="unix:path=$(ndir "$survivor")/bus.sock" timeout 2 \
        "$SHOAL" service scale --detach "probe=$((r + 1))" >/dev/null 2>>"$WORK/failover.err"; then
        secs+=("$(elapsed "$t0" "$(now)")")
        log "failover $r: change accepted after ${secs[-1]} s; leader now $(leader_of "$survivor")"
        break
      fi
      if late "$dl"; then
        secs+=(timeout); log "failover $r: no change accepted within ${STEP_TIMEOUT}s"; break
      fi
      sleep "$POLL"
    done
    node_start "$leader"
    # Noted, not timed: whom the restarted node names as leader once it answers, and for how
    # long that differs from what the survivor says.
    n=$(leader_of "$leader")
    if [[ $n != "$(leader_of "$survivor")" ]]; then
      t0=$(now)
      wait_for 30 leaders_agree "$leader" "$survivor" || true
      log "failover $r: note: the restarted $leader named '$n' as leader (the survivor: '$(leader_of "$survivor")') for $(since "$t0") s more"
    fi
    if ! wait_for "$STEP_TIMEOUT" cluster_is "$survivor" 3 3 ||
      ! wait_for "$STEP_TIMEOUT" voters_are "$leader" 3; then
      log "failover $r: the cluster did not get back to 3 ready managers"
      break
    fi
  done
  RESULT[failover]=$(stats "${secs[@]}")
  RESULT[failover_all]="${secs[*]}"
  cluster_down
}

# ---------------------------------------------------------------- 2. worker death

# replaced NODE SERVICE N DEAD: N tasks running (desired and observed), none on DEAD
replaced() {
  S "$1" service ps "$2" --format json 2>/dev/null | jq -e --argjson n "$3" --arg dead "$4" '
    [.[] | select(.state == "running" and .desired == "running")] |
    length == $n and all(.node != $dead)' >/dev/null 2>&1
}
is_down() { # NODE NAME
  S "$1" node ls --format json 2>/dev/null | jq -e --arg n "$2" 'any(.name == $n and .status == "down")' >/dev/null 2>&1
}

run_worker() { # HEARTBEAT PREFIX KEY
  local hb=$1 p=$2 key=$3
  log "worker death, heartbeat $hb: 1 manager + 2 workers, 6 replicas"
  cluster_up "$hb" 1 2 "$p"
  local m=${CL[0]} r victim t0 dl down secs=() downs=() spread
  S "$m" service create --detach --name web --replicas 6 "$IMAGE" "${TASK_CMD[@]}" >/dev/null
  if ! wait_for "$STEP_TIMEOUT" service_running "$m" web 6; then
    log "worker death: 6 replicas did not start"; RESULT[$key]=timeout; cluster_down; return
  fi
  for ((r = 1; r <= ROUNDS; r++)); do
    spread=$(running_on "$m" web | tr '\n' ',')
    # The worker with the most running tasks dies.
    victim=$(running_on "$m" web | awk -v m="$m" '$1 != m' | sort -k2,2nr | head -1 | cut -d' ' -f1)
    log "worker death $r/$ROUNDS ($hb): tasks per node ${spread%,}; kill -9 $victim"
    t0=$(now); down=""
    node_kill9 "$victim"
    dl=$(deadline "$STEP_TIMEOUT")
    while :; do
      if [[ -z $down ]] && is_down "$m" "$victim"; then down=$(elapsed "$t0" "$(now)"); fi
      if replaced "$m" web 6 "$victim"; then secs+=("$(elapsed "$t0" "$(now)")"); break; fi
      if late "$dl"; then secs+=(timeout); break; fi
      sleep "$POLL"
    done
    downs+=("${down:-timeout}")
    log "worker death $r: seen down after ${down:-?} s, 6 running elsewhere after ${secs[-1]} s ($(running_on "$m" web | tr '\n' ' '))"
    node_start "$victim"
    wait_for "$STEP_TIMEOUT" cluster_is "$m" 3 1 || log "worker death $r: $victim did not come back ready"
    # Its old tasks (desired SHUTDOWN) are stopped once it is back.
    wait_for 60 bash -c "[[ -z \$(ctr -a '$(ndir "$victim")/ctd/containerd.sock' -n $NS tasks ls 2>/dev/null | awk 'NR > 1 && \$3 == \"RUNNING\"') ]]" || true
  done
  RESULT[$key]=$(stats "${secs[@]}")
  RESULT[${key}_down]=$(stats "${downs[@]}")
  RESULT[${key}_all]="${secs[*]}"
  cluster_down
}

# ---------------------------------------------------------------- 3. placement rate

run_placement() {
  log "placement: $PLACEMENT_BENCH (100,000 tasks over 1,000 nodes)"
  "$PLACEMENT_BENCH" >"$WORK/placement.out" 2>&1 || { log "placement_bench failed: $(tail -3 "$WORK/placement.out")"; return; }
  cat "$WORK/placement.out" >&2
  RESULT[placement]=$(sed -n 's/.* = \([0-9]*\) placements\/s.*/\1/p' "$WORK/placement.out")
  RESULT[placement_first]=$(awk '$1 ~ /^[0-9]+$/ { print $3; exit }' "$WORK/placement.out")
  RESULT[placement_last]=$(awk '$1 ~ /^[0-9]+$/ { v = $3 } END { print v }' "$WORK/placement.out")
}

# ---------------------------------------------------------------- 4. RSS

run_rss() {
  log "RSS: 1 manager + 1 worker, then 100 replicas"
  cluster_up 1s 1 1 r
  sleep 5
  RESULT[rss_m_idle]=$(rss_mb "$(shoald_pid rm1)")
  RESULT[rss_w_idle]=$(rss_mb "$(shoald_pid rw1)")
  S rm1 service create --detach --name web --replicas 100 "$IMAGE" "${TASK_CMD[@]}" >/dev/null
  if wait_for "$STEP_TIMEOUT" service_running rm1 web 100; then
    sleep 2
    RESULT[rss_m]=$(rss_mb "$(shoald_pid rm1)")
    RESULT[rss_w]=$(rss_mb "$(shoald_pid rw1)")
    RESULT[rss_spread]=$(running_on rm1 web | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2 }')
  else
    RESULT[rss_m]=timeout; RESULT[rss_w]=timeout
  fi
  cluster_down
}

# ---------------------------------------------------------------- 5. deploy 50 vs ctr run -d

# floor_once DIR: 50 parallel `ctr run -d` on a fresh containerd; sets T (seconds or "failed").
floor_once() {
  local dir=$1 sock=$1/containerd.sock t0 i ok pids=() p
  start_containerd "$dir"
  ctr -a "$sock" -n bench images import "$IMAGE_TAR" >/dev/null
  t0=$(now)
  for ((i = 1; i <= 50; i++)); do
    ctr -a "$sock" -n bench run -d docker.io/library/busybox:latest "floor$i" "${TASK_CMD[@]}" \
      >/dev/null 2>>"$dir/ctr-run.err" &
    pids+=("$!")
  done
  for p in "${pids[@]}"; do wait "$p" || true; done
  T=$(elapsed "$t0" "$(now)")
  ok=$(ctr -a "$sock" -n bench tasks ls 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING"' | wc -l)
  [[ $ok -eq 50 ]] || { log "ctr floor: only $ok of 50 running; see $dir/ctr-run.err"; T="failed"; }
  stop_containerd "$dir" bench
  unmount_under "$dir"
}

# shoal_deploy_once PREFIX: a fresh single node, then service create --replicas 50 until 50
# run; sets T.
shoal_deploy_once() {
  local n=${1}s1 t0
  CL=("$n")
  node_create "$n" manager 1s
  node_start "$n"
  sleep 2
  t0=$(now)
  S "$n" service create --detach --name web --replicas 50 "$IMAGE" "${TASK_CMD[@]}" >/dev/null
  if WAIT_POLL=$POLL wait_for "$STEP_TIMEOUT" service_running "$n" web 50; then
    T=$(elapsed "$t0" "$(now)")
  else
    T=timeout
  fi
  cluster_down
}

run_deploy() {
  local r floor=() shoal=()
  for ((r = 1; r <= ROUNDS; r++)); do
    # Alternate which goes first, so that a drift in the machine's load hits both alike.
    if ((r % 2 == 0)); then
      log "deploy 50, round $r/$ROUNDS: shoal service create --replicas 50 on a fresh node"
      shoal_deploy_once "d$r"; shoal+=("$T")
    fi
    log "deploy 50, round $r/$ROUNDS: 50 parallel ctr run -d on a fresh containerd"
    floor_once "$WORK/floor$r"; floor+=("$T")
    if ((r % 2 == 1)); then
      log "deploy 50, round $r/$ROUNDS: shoal service create --replicas 50 on a fresh node"
      shoal_deploy_once "d$r"; shoal+=("$T")
    fi
    log "deploy 50, round $r: ctr floor ${floor[-1]} s, shoal ${shoal[-1]} s"
  done
  RESULT[floor]=$(stats "${floor[@]}")
  RESULT[deploy]=$(stats "${shoal[@]}")
  RESULT[floor_all]="${floor[*]}"
  RESULT[deploy_all]="${shoal[*]}"
  local f s
  f=$(median "${floor[@]}"); s=$(median "${shoal[@]}")
  if [[ $f =~ ^[0-9.]+$ && $s =~ ^[0-9.]+$ ]]; then
    RESULT[deploy_ratio]=$(awk -v a="$s" -v b="$f" 'BEGIN { printf "%.2f", a / b }')
  fi
}

# ---------------------------------------------------------------- cleanup and report

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  local n p
  for n in "${NODES[@]}"; do node_stop "$n" 2>/dev/null; done
  for p in "$WORK"/floor*; do [[ -d $p ]] && stop_containerd "$p" bench 2>/dev/null; done
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

row() { printf '%-44s %-24s %-10s %s\n' "$@"; }

report() {
  local v
  echo
  echo "shoal cluster benchmark, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "shoal: $("$SHOALD" --version 2>/dev/null | head -1); $ROUNDS round(s) per timed row, shown as min / median"
  echo
  row "row" "shoal" "goal" "anchors"
  if step failover; then
    row "leader killed -> change accepted (s)" "${RESULT[failover]:-n/a}" "<= 1" "Swarm 10-20 (here 9.7 / 12.8); Borg ~10"
  fi
  if step worker; then
    row "worker killed -> 6 tasks elsewhere (s)" "${RESULT[worker1s]:-n/a}" "<= 5" "Swarm ~20 (here 17.7 / 18.3); Kubernetes ~350"
    row "  of which: worker seen down (s)" "${RESULT[worker1s_down]:-n/a}" "" "2-3.5 (3 x 1s after the last heartbeat, checked every 0.5s); Swarm 13.5-16.5"
    row "  same, heartbeat_period 500ms (s)" "${RESULT[worker500]:-n/a}" "<= 5" "down mark 1-1.75"
    row "  of which: worker seen down (s)" "${RESULT[worker500_down]:-n/a}" "" ""
  fi
  if step placement; then
    row "placements/s, 100k tasks on 1k nodes (sim)" "${RESULT[placement]:-n/a}" ">= 20000" "Nomad C2M ~1,500/s; kube-scheduler ~100/s"
    v=n/a
    if [[ ${RESULT[placement_first]:-} =~ ^[0-9]+$ && ${RESULT[placement_last]:-} =~ ^[0-9]+$ ]]; then
      v="${RESULT[placement_first]} -> ${RESULT[placement_last]}"
      v+=" ($(awk -v a="${RESULT[placement_first]}" -v b="${RESULT[placement_last]}" 'BEGIN { printf "%.2fx", b / a }'))"
    fi
    row "  first -> last 10k window, placements/s" "$v" "flat" "Nomad C2M: about linear"
  fi
  if step rss; then
    row "shoald RSS idle, manager / worker (MB)" "${RESULT[rss_m_idle]:-n/a} / ${RESULT[rss_w_idle]:-n/a}" "" "dockerd ~84 idle (bench/README)"
    row "shoald RSS, 100 replicas (MB)" "${RESULT[rss_m]:-n/a} / ${RESULT[rss_w]:-n/a}" "" "dockerd ~143 with 100 tasks"
    row "  tasks per node" "${RESULT[rss_spread]:-n/a}" "" ""
  fi
  if step deploy; then
    row "deploy 50: parallel ctr run -d floor (s)" "${RESULT[floor]:-n/a}" "" "same run, fresh containerd"
    row "deploy 50: shoal, 1 node (s)" "${RESULT[deploy]:-n/a}" "" "Swarm 6.6-8.3 (bench/README)"
    row "deploy 50: shoal / floor (medians)" "${RESULT[deploy_ratio]:-n/a}" "<= 0.8" ""
  fi
  echo
  echo "every round: failover ${RESULT[failover_all]:-n/a}; worker 1s ${RESULT[worker1s_all]:-n/a};" \
    "worker 500ms ${RESULT[worker500_all]:-n/a}; ctr floor ${RESULT[floor_all]:-n/a}; shoal deploy 50 ${RESULT[deploy_all]:-n/a}"
}

mkdir -p "$WORK/nodes"
build_busybox_oci "$IMAGE_TAR"
if step placement; then run_placement; fi
if step deploy; then run_deploy; fi
if step failover; then run_failover; fi
if step worker; then
  run_worker 1s k worker1s
  run_worker 500ms h worker500
fi
if step rss; then run_rss; fi
report
