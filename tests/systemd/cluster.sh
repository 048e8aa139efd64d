#!/usr/bin/env bash
# A three-node shoal cluster under real systemd: three Debian 12 hosts (m1, w1, w2), each booting
# systemd as PID 1 in a privileged container of a private containerd, each in its own network
# namespace wired to one Linux bridge (in a namespace of its own) on 10.99.0.0/24. The hosts are
# provisioned the way the NixOS `cluster` test provisions its VMs: /etc/shoal/cluster.toml, a
# token file and `systemctl start shoald`, nothing else. The workers start first and keep
# retrying (active, STATUS says they are joining) until m1 comes up; then the checks go through
# the `shoal` CLI inside the hosts: node ls from the manager and from a worker, a service spread
# over the three nodes, scaling from the workers, a host whose shoald and containerd stop
# (down, its replicas replaced), drain and activate, the stopped host coming back (its replaced
# task stopped), and a restart of the only manager (tasks unchanged, workers reconnect).
#
# usage: tests/systemd/cluster.sh      (as root; never prompts)
#
# Environment: as tests/systemd/run.sh (SHOAL_SYSTEMD_ROOTFS_CACHE, SHOAL_BIN_DIR,
# SHOAL_DEBIAN_MIRROR), and SHOAL_SYSTEMD_KEEP_LOGS: a directory to copy each host's journal
# into at the end.
#
# Prints one line per check (`ok - ...` / `not ok - ...`), diagnostics as `# ...`, and a final
#   systemd-cluster: N passed, M failed
# Exits non-zero when anything failed. Everything it starts (containerd, the hosts and the
# containers inside them, the network namespaces and the bridge) is removed on exit, failure or
# Ctrl-C.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=tests/systemd/lib.sh
source "$HERE/lib.sh"
CACHE=${SHOAL_SYSTEMD_ROOTFS_CACHE:-/var/cache/shoal-test/rootfs-bookworm}
BIN_DIR=${SHOAL_BIN_DIR:-$REPO/target/debug}

NS=shoal-systemd-cluster
HOSTS=(m1 w1 w2)
declare -A ADDR=([m1]=10.99.0.1 [w1]=10.99.0.2 [w2]=10.99.0.3)
declare -A ROLE=([m1]=manager [w1]=worker [w2]=worker)
PREFIX=sdc$$
BRNS=$PREFIX-br
IMAGE=oci-archive:/var/lib/shoal/images/busybox.tar
# A provisioning secret (>= 16 characters, no spaces), the same in every host's token file.
SECRET=systemd-cluster-provisioning-$$-$RANDOM$RANDOM

PASSED=0
FAILED=0
WORK=
SOCK=
CTD_PID=
INTERRUPTED=0
EXEC_N=0
declare -A NETNS_MADE=()
declare -A GUEST_UP=()
declare -A GUEST_PID=()
declare -A NESTED_IDS=()
START_TIME=$SECONDS

summary() {
  say "took $((SECONDS - START_TIME))s"
  echo "systemd-cluster: $PASSED passed, $FAILED failed"
}

# fatal MESSAGE: a setup step failed; nothing more can be checked.
fatal() {
  not_ok "$*"
  exit 1
}

cname() { echo "$PREFIX-$1"; }
netns() { echo "$PREFIX-$1"; }

# ---------------------------------------------------------------------------------------------
# Host side: containerd, cleanup

ctr_host() { ctr --address "$SOCK" -n "$NS" "$@"; }

# gx HOST [-t SECONDS] CMD...: runs CMD inside the systemd host HOST (stdin closed), with a
# timeout.
gx() {
  local h=$1 t=60
  shift
  if [[ ${1:-} == -t ]]; then
    t=$2
    shift 2
  fi
  EXEC_N=$((EXEC_N + 1))
  timeout --kill-after=5 "$t" ctr --address "$SOCK" -n "$NS" tasks exec \
    --exec-id "x$BASHPID-$EXEC_N-$RANDOM" \
    "$(cname "$h")" /usr/bin/env PATH="$GUEST_PATH" SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 \
    LC_ALL=C.UTF-8 "$@" </dev/null
}

# Remembers the containerd task ids inside HOST, so their cgroups (created by the inner runc at
# the machine's cgroup root, /shoal/<id>) can be removed after the hosts are gone.
remember_nested() {
  local id
  while read -r id; do
    [[ -n $id ]] && NESTED_IDS[$id]=1
  done < <(gx "$1" -t "${2:-20}" ctr -n shoal containers list -q 2>/dev/null)
}

cleanup() {
  local status=$?
  trap '' INT TERM
  trap - EXIT
  local h i pid cmd m id d
  if [[ -n $SOCK ]] && ctr --address "$SOCK" version >/dev/null 2>&1; then
    for h in "${HOSTS[@]}"; do
      [[ ${GUEST_UP[$h]:-0} -eq 1 ]] || continue
      if [[ $FAILED -gt 0 && $INTERRUPTED -eq 0 ]]; then
        say "last journal lines of shoald.service in $h:"
        gx "$h" -t 10 journalctl --no-pager -n 40 -u shoald 2>&1 | indent
      fi
      if [[ -n ${SHOAL_SYSTEMD_KEEP_LOGS:-} ]]; then
        mkdir -p "$SHOAL_SYSTEMD_KEEP_LOGS"
        gx "$h" -t 30 journalctl --no-pager -o short-precise \
          >"$SHOAL_SYSTEMD_KEEP_LOGS/journal-$h.txt" 2>&1
      fi
      remember_nested "$h" 10
    done
    if [[ -n ${SHOAL_SYSTEMD_KEEP_LOGS:-} ]]; then
      cp "$WORK/containerd.log" "$SHOAL_SYSTEMD_KEEP_LOGS/host-containerd.log" 2>/dev/null
      say "logs kept in $SHOAL_SYSTEMD_KEEP_LOGS"
    fi
  fi
  if [[ -n $SOCK && -S $SOCK ]]; then
    # Killing a host's PID 1 kills every process of its PID namespace: its containerd, shims and
    # containers.
    for h in "${HOSTS[@]}"; do
      ctr_host tasks kill --all --signal SIGKILL "$(cname "$h")" >/dev/null 2>&1
    done
    for h in "${HOSTS[@]}"; do
      for ((i = 0; i < 100; i++)); do
        ctr_host tasks list -q 2>/dev/null | grep -qx "$(cname "$h")" || break
        ctr_host tasks delete --force "$(cname "$h")" >/dev/null 2>&1 && break
        sleep 0.2
      done
      ctr_host containers delete "$(cname "$h")" >/dev/null 2>&1
    done
  fi
  for h in "${HOSTS[@]}"; do
    pid=${GUEST_PID[$h]:-}
    if [[ -n $pid ]] && grep -q "/$NS/$(cname "$h")" "/proc/$pid/cgroup" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null
      for ((i = 0; i < 50; i++)); do
        [[ -d /proc/$pid ]] || break
        sleep 0.2
      done
    fi
  done
  if [[ -n $CTD_PID ]] && kill -0 "$CTD_PID" 2>/dev/null; then
    kill -TERM "$CTD_PID" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
      kill -0 "$CTD_PID" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$CTD_PID" 2>/dev/null
    wait "$CTD_PID" 2>/dev/null
  fi
  if [[ -n $WORK ]]; then
    # A shim of ours that outlived its task (it is named after our private socket).
    for pid in $(pgrep -f -- "-address $SOCK" 2>/dev/null); do
      cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)
      [[ $cmd == *"containerd-shim"*"-address $SOCK"* ]] && kill -KILL "$pid" 2>/dev/null
    done
    while read -r m; do
      umount -l "$m" 2>/dev/null
    done < <(awk -v w="$WORK" '$5 == w || index($5, w "/") == 1 { print length($5), $5 }' \
      /proc/self/mountinfo | sort -rn | cut -d' ' -f2-)
  fi
  # The network namespaces (deleting the bridge's namespace removes the bridge and the veths).
  for h in "${!NETNS_MADE[@]}"; do
    ip netns delete "$(netns "$h")" 2>/dev/null
  done
  for id in "${!NESTED_IDS[@]}"; do
    for d in /sys/fs/cgroup/*/shoal/"$id" /sys/fs/cgroup/shoal/"$id"; do
      [[ -d $d ]] && rmdir "$d" 2>/dev/null
    done
  done
  for h in "${HOSTS[@]}"; do
    for d in /sys/fs/cgroup/*/"$NS"/"$(cname "$h")" /sys/fs/cgroup/"$NS"/"$(cname "$h")"; do
      [[ -d $d ]] && rmdir "$d" 2>/dev/null
    done
  done
  for d in /sys/fs/cgroup/*/"$NS" /sys/fs/cgroup/"$NS"; do
    [[ -d $d ]] && rmdir "$d" 2>/dev/null
  done
  if [[ -n $WORK && -d $WORK ]]; then
    if grep -q " $WORK" /proc/self/mountinfo; then
      say "mounts left below $WORK; not removing it"
    else
      rm -rf "$WORK"
    fi
  fi
  if [[ $status -ne 0 && $FAILED -eq 0 ]]; then
    not_ok "the test script ended unexpectedly (exit $status)"
  fi
  summary
  if [[ $FAILED -gt 0 ]]; then exit 1; fi
  exit "$status"
}
trap cleanup EXIT
trap 'INTERRUPTED=1; not_ok "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# Prerequisites

if [[ $(id -u) -ne 0 ]]; then
  fatal "setup: must run as root (it mounts overlays, makes network namespaces and runs privileged containers)"
fi
missing=()
for tool in containerd ctr runc debootstrap python3 flock timeout setsid ip; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  fatal "setup: missing tools: ${missing[*]} (run scripts/install-deps.sh)"
fi
if [[ ! -x $BIN_DIR/shoald || ! -x $BIN_DIR/shoal ]]; then
  if [[ -z ${SHOAL_BIN_DIR:-} ]] && command -v cargo >/dev/null; then
    say "building shoald and shoal (cargo build -p shoald -p shoal)"
    (cd "$REPO" && cargo build -q -p shoald -p shoal </dev/null) ||
      fatal "setup: cargo build -p shoald -p shoal failed"
  else
    fatal "setup: $BIN_DIR/shoald or $BIN_DIR/shoal missing (run cargo build -p shoald -p shoal)"
  fi
fi
for f in shoald.service org.shoal.Shoal1.conf shoal.tmpfiles; do
  [[ -f $REPO/systemd/$f ]] || fatal "setup: $REPO/systemd/$f is missing"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shoal-systemd-cluster.XXXXXX") || fatal "setup: mktemp failed"
ensure_rootfs || fatal "setup: build the Debian rootfs with debootstrap (see the log above)"

# ---------------------------------------------------------------------------------------------
# The binaries (copied once: target/debug is rebuilt by others while this runs) and the image

mkdir -p "$WORK/bin"
# As in run.sh, task output goes through `shoald log-driver` (no separate shoal-log-driver).
cp "$BIN_DIR/shoald" "$BIN_DIR/shoal" "$WORK/bin/" || fatal "setup: copy the binaries from $BIN_DIR"
python3 "$REPO/scripts/mkimage.py" -o "$WORK/busybox.tar" >/dev/null ||
  fatal "setup: build the busybox image (scripts/mkimage.py)"

# ---------------------------------------------------------------------------------------------
# Each host's rootfs: an overlay on the cached rootfs, with shoal installed and provisioned

# provision HOST ROOT: what a NixOS VM of the cluster test gets from its configuration: the
# binaries, the unit, the D-Bus policy, tmpfiles, cluster.toml and the token file. shoald is not
# enabled: the test starts it with systemctl, workers first.
provision() {
  local h=$1 root=$2 cluster
  if [[ $h == m1 ]]; then
    cluster="bootstrap = true"
  else
    cluster="join = [\"${ADDR[m1]}:4600\"]"
  fi
  install -m 0755 "$WORK/bin/"* "$root/usr/local/bin/" &&
    install -D -m 0644 "$REPO/systemd/shoald.service" "$root/etc/systemd/system/shoald.service" &&
    install -D -m 0644 "$REPO/systemd/org.shoal.Shoal1.conf" \
      "$root/usr/share/dbus-1/system.d/org.shoal.Shoal1.conf" &&
    install -D -m 0644 "$REPO/systemd/shoal.tmpfiles" "$root/usr/local/lib/tmpfiles.d/shoal.conf" &&
    mkdir -p "$root/etc/shoal/stacks" "$root/var/lib/shoal/images" &&
    cp "$WORK/busybox.tar" "$root/var/lib/shoal/images/busybox.tar" &&
    mkdir -p "$root/etc/systemd/system/multi-user.target.wants" &&
    ln -sf /lib/systemd/system/containerd.service \
      "$root/etc/systemd/system/multi-user.target.wants/containerd.service" &&
    echo "$h" >"$root/etc/hostname" &&
    printf '127.0.0.1 localhost\n%s %s\n' "${ADDR[$h]}" "$h" >"$root/etc/hosts" &&
    : >"$root/etc/machine-id" &&
    cat >"$root/etc/shoal/cluster.toml" <<EOF &&
# written by tests/systemd/cluster.sh
[node]
name = "$h"
role = "${ROLE[$h]}"

[network]
listen = "0.0.0.0:4600"
advertise = "${ADDR[$h]}:4600"

[cluster]
$cluster
token_file = "/etc/shoal/join-token"
EOF
    (umask 077 && printf '%s\n' "$SECRET" >"$root/etc/shoal/join-token") &&
    chmod 0400 "$root/etc/shoal/join-token"
}

declare -A ROOT=()
for h in "${HOSTS[@]}"; do
  r=$WORK/$h/root
  mkdir -p "$r" "$WORK/$h/upper" "$WORK/$h/ovlwork"
  if ! mount -t overlay overlay \
    -o "lowerdir=$CACHE,upperdir=$WORK/$h/upper,workdir=$WORK/$h/ovlwork" "$r" \
    2>"$WORK/overlay.err"; then
    say "overlay mount failed ($(cat "$WORK/overlay.err")); copying the rootfs for $h instead"
    rmdir "$r"
    cp -a "$CACHE" "$r" || fatal "setup: copy $CACHE to $r"
  fi
  ROOT[$h]=$r
  provision "$h" "$r" || fatal "setup: install and provision shoal in $h's rootfs"
done
say "rootfs: an overlay on $CACHE per host; shoald/shoal from $BIN_DIR"

# ---------------------------------------------------------------------------------------------
# The network: a bridge in a namespace of its own, one namespace per host on 10.99.0.0/24

setup_network() {
  local h ns
  ip netns add "$BRNS" || return 1
  NETNS_MADE[br]=1
  ip -n "$BRNS" link set lo up &&
    ip -n "$BRNS" link add br0 type bridge &&
    ip -n "$BRNS" link set br0 up || return 1
  for h in "${HOSTS[@]}"; do
    ns=$(netns "$h")
    ip netns add "$ns" || return 1
    NETNS_MADE[$h]=1
    ip -n "$BRNS" link add "$h" type veth peer name eth0 netns "$ns" &&
      ip -n "$BRNS" link set "$h" master br0 up &&
      ip -n "$ns" link set lo up &&
      ip -n "$ns" addr add "${ADDR[$h]}/24" dev eth0 &&
      ip -n "$ns" link set eth0 up || return 1
  done
}
setup_network || fatal "setup: network namespaces and the bridge"

# ---------------------------------------------------------------------------------------------
# A private containerd on the machine, and the three systemd hosts in it

SOCK=$WORK/containerd.sock
write_containerd_config "$WORK" "$SOCK"
# In its own session, so that a Ctrl-C reaches the script (which then cleans up) but not the
# containerd the cleanup needs.
setsid containerd --config "$WORK/containerd.toml" </dev/null >"$WORK/containerd.log" 2>&1 &
CTD_PID=$!
for ((i = 0; i < 300; i++)); do
  ctr --address "$SOCK" version >/dev/null 2>&1 && break
  kill -0 "$CTD_PID" 2>/dev/null || break
  sleep 0.2
done
if ! ctr --address "$SOCK" version >/dev/null 2>&1; then
  tail -n 30 "$WORK/containerd.log" | indent
  fatal "setup: start a private containerd on $SOCK"
fi

say "cgroup filesystem: $(stat -fc %T /sys/fs/cgroup) ($(uname -r))"
t_boot=$SECONDS
for h in "${HOSTS[@]}"; do
  # As in run.sh: the machine's /sys/fs/cgroup bound with rbind (runc inside needs it), and
  # /var/lib/containerd a tmpfs (the inner overlayfs snapshotter cannot use the overlay rootfs).
  if ! ctr_host run -d --rootfs --privileged \
    --with-ns "network:/var/run/netns/$(netns "$h")" \
    --env container=containerd --env PATH="$GUEST_PATH" \
    --mount type=tmpfs,src=tmpfs,dst=/run,options=rw:nosuid:nodev:mode=755 \
    --mount type=tmpfs,src=tmpfs,dst=/tmp,options=rw:nosuid:nodev \
    --mount type=tmpfs,src=tmpfs,dst=/var/lib/containerd,options=rw:mode=711 \
    --mount type=bind,src=/sys/fs/cgroup,dst=/sys/fs/cgroup,options=rbind:rw \
    --log-uri "file://$WORK/console-$h.log" \
    "${ROOT[$h]}" "$(cname "$h")" /sbin/init >"$WORK/run-$h.log" 2>&1; then
    indent <"$WORK/run-$h.log"
    fatal "setup: start the systemd host $h (ctr run --rootfs --privileged)"
  fi
  GUEST_UP[$h]=1
  GUEST_PID[$h]=$(ctr_host tasks list 2>/dev/null | awk -v c="$(cname "$h")" '$1 == c { print $2 }')
done

booted=()
for h in "${HOSTS[@]}"; do
  state=
  for ((i = 0; i < 120; i++)); do
    state=$(gx "$h" -t 120 systemctl is-system-running --wait 2>/dev/null)
    case $state in
      running | degraded) break ;;
    esac
    sleep 1
  done
  case $state in
    running | degraded) booted+=("$h:$state") ;;
    *)
      not_ok "systemd booted as PID 1 in $h (is-system-running: '${state:-no answer}')"
      gx "$h" -t 20 systemctl list-jobs --no-pager 2>&1 | indent
      indent <"$WORK/console-$h.log"
      exit 1
      ;;
  esac
done
ok "three hosts booted systemd as PID 1 (${booted[*]}) after $((SECONDS - t_boot))s"

# Each host reaches the others over the bridge (bash's /dev/tcp to the node port: "connection
# refused" is an answer; shoald is not running yet).
reach=()
for h in "${HOSTS[@]}"; do
  for o in "${HOSTS[@]}"; do
    [[ $h == "$o" ]] && continue
    out=$(gx "$h" -t 10 bash -c "exec 3<>/dev/tcp/${ADDR[$o]}/4600" 2>&1)
    [[ $out == *"Connection refused"* ]] || reach+=("$h->$o: ${out:-connected?}")
  done
done
[[ ${#reach[@]} -eq 0 ]]
r=$?
check "each host has its own address on the bridge and reaches the others (${ADDR[m1]}, ${ADDR[w1]}, ${ADDR[w2]})" $r \
  "$(printf '%s\n' "${reach[@]}")
$(gx w1 ip -br addr 2>&1)"

# ---------------------------------------------------------------------------------------------
# Helpers for the checks

# prop HOST NAME: one property of shoald.service in HOST.
prop() { gx "$1" systemctl show -p "$2" --value shoald 2>/dev/null; }

# py EXPR: evaluates EXPR with `d` = the JSON on stdin; prints it unless it is a bool; exit
# status 0 when it is truthy.
py() {
  python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)
except ValueError:
    sys.exit(2)
v = eval(sys.argv[1])
if not isinstance(v, bool):
    print(v)
sys.exit(0 if v else 1)' "$1"
}

nodes() { gx "$1" -t 30 shoal node ls --format json 2>/dev/null; }
# node_summary HOST: "name=status/availability/manager_status" of every node, sorted.
node_summary() {
  nodes "$1" | py "' '.join(sorted(n['name'] + '=' + n['status'] + '/' + n['availability'] + '/' + (n['manager_status'] or '-') for n in d))"
}
# cluster_formed HOST: 3 nodes, all ready, m1 the leader, roles as configured.
cluster_formed() {
  nodes "$1" | py 'sorted((n["name"], n["role"], n["status"]) for n in d) == [("m1", "manager", "ready"), ("w1", "worker", "ready"), ("w2", "worker", "ready")] and [n["name"] for n in d if n["manager_status"].lower() == "leader"] == ["m1"]'
}
# node_status HOST NAME STATUS
node_status() {
  nodes "$1" | py "[n['status'] for n in d if n['name'] == '$2'] == ['$3']"
}
node_availability() { # node_availability HOST NAME AVAILABILITY
  nodes "$1" | py "[n['availability'] for n in d if n['name'] == '$2'] == ['$3']"
}
# spread HOST SERVICE: "node=count" of the running tasks that should run, sorted.
spread() {
  gx "$1" -t 30 shoal service ps "$2" --format json 2>/dev/null |
    py "' '.join(f'{k}={v}' for k, v in sorted(__import__('collections').Counter(t['node'] for t in d if t['state'] == 'running' and t['desired'] == 'running').items()))"
}
spread_is() { # spread_is HOST SERVICE "m1=1 w1=1 w2=1"
  [[ $(spread "$1" "$2") == "$3" ]]
}
# running_total_without HOST SERVICE N EXCLUDED...: N running tasks, none on the excluded nodes.
running_total_without() {
  local h=$1 s=$2 n=$3 spr e total=0 kv
  shift 3
  spr=$(spread "$h" "$s") || return 1
  for kv in $spr; do
    total=$((total + ${kv#*=}))
    for e in "$@"; do
      [[ ${kv%%=*} == "$e" ]] && return 1
    done
  done
  [[ $total -eq $n ]]
}
containers() { # containers HOST: the running containers in HOST's containerd (namespace shoal)
  gx "$1" -t 20 ctr -n shoal tasks ls 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING"' | wc -l
}
containers_are() { # containers_are HOST N
  [[ $(containers "$1") -eq $2 ]]
}
all_containers() { # "m1=N w1=N w2=N"
  local h out=()
  for h in "${HOSTS[@]}"; do out+=("$h=$(containers "$h")"); done
  echo "${out[*]}"
}
all_containers_are() { [[ $(all_containers) == "$1" ]]; }
all_containers_total() { # the running containers of all hosts together
  local t=0 kv
  for kv in $(all_containers); do t=$((t + ${kv#*=})); done
  echo "$t"
}
all_containers_are_total() { [[ $(all_containers_total) -eq $1 ]]; }
journal() { gx "$1" -t 20 journalctl --no-pager -u shoald -n "${2:-30}" 2>&1; }

# ---------------------------------------------------------------------------------------------
# The workers start first, while m1 is unreachable: they are ready (Type=notify) and say they
# are joining.

t_start=$SECONDS
gx w1 -t 120 systemctl start shoald >"$WORK/start-w1.out" 2>&1 &
p1=$!
gx w2 -t 120 systemctl start shoald >"$WORK/start-w2.out" 2>&1 &
p2=$!
wait $p1
s1=$?
wait $p2
s2=$?
start_secs=$((SECONDS - t_start))
joining() { [[ $(prop "$1" StatusText) == *joining* ]]; }
wait_for 20 joining w1
wait_for 20 joining w2
sleep 3 # a few retries against the unreachable manager
bad=()
for h in w1 w2; do
  act=$(gx "$h" systemctl is-active shoald 2>&1)
  st=$(prop "$h" StatusText)
  nr=$(prop "$h" NRestarts)
  say "$h: is-active $act, NRestarts $nr, StatusText \"$st\""
  [[ $act == active && $st == *joining* && $nr == 0 ]] || bad+=("$h")
done
[[ $s1 -eq 0 && $s2 -eq 0 && ${#bad[@]} -eq 0 ]]
r=$?
check "systemctl start shoald on w1 and w2 returns (${start_secs}s) while m1 is down: active, no restarts, STATUS says joining" $r \
  "start w1: $s1 $(cat "$WORK/start-w1.out")
start w2: $s2 $(cat "$WORK/start-w2.out")
$(journal w1 15)"

# Now the manager.
out=$(gx m1 -t 120 systemctl start shoald 2>&1)
s=$?
# An exec into a host can fail under load: ask a few times before concluding.
for _ in 1 2 3 4 5; do
  act=$(gx m1 systemctl is-active shoald 2>&1)
  [[ $act == active ]] && break
  sleep 1
done
[[ $s -eq 0 && $act == active ]]
r=$?
check "systemctl start shoald on m1 (bootstrap manager): $act, StatusText \"$(prop m1 StatusText)\"" $r \
  "$out
$(journal m1)"

# ---------------------------------------------------------------------------------------------
# The cluster forms by itself.

t_form=$SECONDS
wait_for 90 cluster_formed m1
r=$?
check "the workers join by themselves: node ls on m1 shows m1 (leader), w1, w2, all ready, after $((SECONDS - t_form))s ($(node_summary m1))" $r \
  "$(gx m1 shoal node ls 2>&1)
$(journal w1 20)"
for h in w1 w2; do say "$h StatusText after joining: $(prop "$h" StatusText)"; done

wait_for 30 cluster_formed w1
r=$?
self=$(nodes w2 | py '",".join(n["name"] for n in d if n.get("is_self"))')
[[ $r -eq 0 ]] && cluster_formed w2 && [[ $self == w2 ]]
r=$?
check "node ls from the workers (forwarded to the leader) shows the same cluster; w2's row is_self on w2 (is_self: ${self:-none})" $r \
  "w1: $(gx w1 shoal node ls 2>&1)
w2: $(nodes w2)"

# ---------------------------------------------------------------------------------------------
# A service over the three nodes.

# sleep as a container's PID 1 ignores SIGTERM: a short grace period keeps the stops quick.
out=$(gx m1 -t 120 shoal service create --detach --name web --replicas 3 --stop-grace-period 2s \
  "$IMAGE" sleep 3600 2>&1)
s=$?
[[ $s -eq 0 ]] && wait_for 120 spread_is m1 web "m1=1 w1=1 w2=1"
r=$?
check "service create web --replicas 3 on m1: 3 running tasks on 3 distinct nodes ($(spread m1 web))" $r \
  "create: $s $out
$(gx m1 shoal service ps web 2>&1)"

wait_for 30 all_containers_are "m1=1 w1=1 w2=1"
r=$?
check "ctr -n shoal tasks ls shows one running container in each host ($(all_containers))" $r \
  "$(for h in "${HOSTS[@]}"; do echo "$h:"; gx "$h" ctr -n shoal tasks ls 2>&1; done)"
for h in "${HOSTS[@]}"; do
  remember_nested "$h"
  say "$h StatusText: $(prop "$h" StatusText)"
done

out=$(gx w1 -t 120 shoal service scale web=1 2>&1)
s=$?
[[ $s -eq 0 ]] && wait_for 60 running_total_without m1 web 1 && wait_for 30 all_containers_are_total 1
r=$?
check "service scale web=1 from worker w1: 1 running task, 1 container left ($(spread m1 web); $(all_containers))" $r \
  "scale: $s $out
$(gx m1 shoal service ps web 2>&1)"

out=$(gx w2 -t 120 shoal service scale web=3 2>&1)
s=$?
[[ $s -eq 0 ]] && wait_for 90 spread_is m1 web "m1=1 w1=1 w2=1" && wait_for 30 all_containers_are "m1=1 w1=1 w2=1"
r=$?
check "service scale web=3 from worker w2: one task on each node again ($(spread m1 web))" $r \
  "scale: $s $out
$(gx m1 shoal service ps web 2>&1)"
for h in "${HOSTS[@]}"; do remember_nested "$h"; done

# ---------------------------------------------------------------------------------------------
# w2 loses its shoald and containerd (its containers keep running under their shims): it is
# marked down and its replica runs elsewhere.

out=$(gx w2 -t 90 systemctl stop shoald containerd 2>&1)
s=$?
t_down=$SECONDS
wait_for 30 node_status m1 w2 down
r=$?
down_secs=$((SECONDS - t_down))
[[ $s -eq 0 && $r -eq 0 ]]
r=$?
check "systemctl stop shoald containerd on w2: node ls on m1 shows w2 down after ${down_secs}s ($(node_summary m1))" $r \
  "stop: $s $out"
wait_for 60 running_total_without m1 web 3 w2
r=$?
check "web's replica from w2 is replaced: 3 running tasks, none on w2, $((SECONDS - t_down))s after the stop ($(spread m1 web))" $r \
  "$(gx m1 shoal service ps web 2>&1)"

# ---------------------------------------------------------------------------------------------
# Drain and activate w1.

out=$(gx m1 -t 60 shoal node update --availability drain w1 2>&1)
s=$?
[[ $s -eq 0 ]] && wait_for 30 node_availability m1 w1 drain &&
  wait_for 60 running_total_without m1 web 3 w1 w2 && wait_for 30 containers_are w1 0
r=$?
check "node update --availability drain w1: its tasks move away, no container left on w1 ($(spread m1 web); w1 containers: $(containers w1))" $r \
  "update: $s $out
$(gx m1 shoal service ps web 2>&1)"

out=$(gx m1 -t 60 shoal node update --availability active w1 2>&1)
s=$?
[[ $s -eq 0 ]] && wait_for 30 node_availability m1 w1 active && node_status m1 w1 ready
r=$?
check "node update --availability active w1: w1 is active and ready again ($(node_summary m1))" $r \
  "update: $s $out"

# ---------------------------------------------------------------------------------------------
# w2 comes back: it is ready again and stops the task that was replaced while it was down.

out=$(gx w2 -t 120 systemctl start containerd shoald 2>&1)
s=$?
[[ $s -eq 0 ]] && wait_for 60 node_status m1 w2 ready && wait_for 60 containers_are w2 0
r=$?
check "systemctl start containerd shoald on w2: w2 ready again, its replaced task stopped (w2 containers: $(containers w2); $(node_summary m1))" $r \
  "start: $s $out
$(gx w2 ctr -n shoal tasks ls 2>&1)
$(journal w2 20)"

# ---------------------------------------------------------------------------------------------
# The only manager restarts: the tasks keep running, the workers reconnect by themselves.

tasks_before=$(gx m1 -t 30 shoal service ps web --format json 2>/dev/null |
  py "' '.join(sorted(t['id'] for t in d if t['state'] == 'running' and t['desired'] == 'running'))")
out=$(gx m1 -t 120 systemctl restart shoald 2>&1)
s=$?
t_restart=$SECONDS
same_tasks() {
  [[ $(gx m1 -t 30 shoal service ps web --format json 2>/dev/null |
    py "' '.join(sorted(t['id'] for t in d if t['state'] == 'running' and t['desired'] == 'running'))") == "$tasks_before" ]]
}
[[ $s -eq 0 && -n $tasks_before ]] && wait_for 60 cluster_formed m1 && wait_for 30 cluster_formed w2 &&
  same_tasks && containers_are m1 3
r=$?
check "systemctl restart shoald on m1: the cluster answers again (all ready after $((SECONDS - t_restart))s, from m1 and w2), web's tasks unchanged" $r \
  "restart: $s $out
before: $tasks_before
$(gx m1 shoal service ps web 2>&1)
$(gx m1 shoal node ls 2>&1)
$(journal m1 20)"

bad=()
for h in "${HOSTS[@]}"; do
  act=$(gx "$h" systemctl is-active shoald 2>&1)
  nr=$(prop "$h" NRestarts)
  [[ $act == active && $nr == 0 ]] || bad+=("$h: $act, NRestarts $nr")
  say "$h StatusText: $(prop "$h" StatusText)"
done
running_total_without m1 web 3 w1 w2
r=$?
[[ ${#bad[@]} -eq 0 && $r -eq 0 ]]
r=$?
check "at the end shoald is active on every host without restarts, web runs 3 tasks ($(spread m1 web))" $r \
  "$(printf '%s\n' "${bad[@]}")"

exit 0
