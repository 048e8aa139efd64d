#!/usr/bin/env bash
# Networking benchmark: HTTP requests per second and latency percentiles to one busybox httpd
# task through shoal's routing mesh (from a host without a task), through a service VIP, and
# straight to the container, in the same run; and the same through Docker Swarm's ingress where
# this machine lets Swarm run. Load comes from Debian's wrk. See bench/README.md.
#
# Not a test: it prints a table and exits 0 whenever the shoal half could be set up (a path that
# does not answer shows "n/a" with the reason below the table).
#
# usage: bench/mesh.sh [--only shoal|swarm] [--duration S] [--rounds N] [--connections N]
#                      [--threads N] [--timeout S] [--keep-workdir]
#   --only shoal|swarm  run one half (the other column shows n/a)
#   --duration S        seconds of load per path and round (default 10)
#   --rounds N          rounds over all paths, interleaved; each cell is the median (default 3)
#   --connections N     wrk connections (default 8: busybox httpd listens with a backlog of 9)
#   --threads N         wrk threads (default 2)
#   --timeout S         give up on one wait after this long (default 120)
#   --keep-workdir      keep logs, wrk outputs and state in /tmp/shoal-mesh.*
#
# SHOALD=, SHOAL= and DOCKER= override the binaries used (target/release/{shoald,shoal}).
# MESH_HOLD=SECONDS keeps the setup up that long before measuring, to look at it from outside.
#
# Everything happens in network namespaces this script makes (inside one of its own, with a
# private mount namespace): a LAN bridge, two shoal hosts (each with its own containerd,
# dbus-daemon and shoald; node 1 bootstraps, node 2 joins as a worker), two client hosts that
# run no task, and a host for dockerd. Traffic goes only to addresses of those namespaces. A trap
# stops every process and deletes every namespace and directory the script made, also on
# failure or Ctrl-C.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BENCH=mesh
BENCH_NETNS=shoal-mesh
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
ARGS=("$@")
ONLY=""
KEEP=0
DURATION=10
ROUNDS=3
CONNS=8
THREADS=2
STEP_TIMEOUT=120

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --only) ONLY=${2:?--only needs shoal or swarm}; shift 2 ;;
    --duration) DURATION=${2:?--duration needs seconds}; shift 2 ;;
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
    --connections) CONNS=${2:?--connections needs a number}; shift 2 ;;
    --threads) THREADS=${2:?--threads needs a number}; shift 2 ;;
    --timeout) STEP_TIMEOUT=${2:?--timeout needs seconds}; shift 2 ;;
    --keep-workdir) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "mesh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$ONLY" in ""|swarm|shoal) ;; *) echo "mesh: --only takes shoal or swarm" >&2; exit 2 ;; esac
for v in DURATION ROUNDS CONNS THREADS STEP_TIMEOUT; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "mesh: ${v,,} must be a positive whole number" >&2; exit 2; }
done

if [[ $(id -u) -ne 0 ]]; then
  echo "mesh: run as root (it makes network namespaces and starts containerd and shoald)" >&2
  exit 1
fi

DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker || true)}
SHOALD=${SHOALD:-$REPO/target/release/shoald}
SHOAL=${SHOAL:-$REPO/target/release/shoal}

for tool in wrk nsenter ip containerd ctr runc python3 dbus-daemon; do
  command -v "$tool" >/dev/null || {
    echo "mesh: $tool is missing; run: bash scripts/install-deps.sh --bench" >&2; exit 1; }
done
if [[ $ONLY != swarm ]] && { [[ ! -x $SHOALD ]] || [[ ! -x $SHOAL ]]; }; then
  echo "mesh: $SHOALD or $SHOAL not found; build them with:" >&2
  echo "  cargo build --release -p shoald -p shoal" >&2
  if [[ $ONLY == shoal ]]; then exit 1; fi
  echo "mesh: running the Swarm half only" >&2
  ONLY=swarm
fi
if [[ $ONLY != shoal ]] && { [[ -z $DOCKER ]] || ! command -v dockerd >/dev/null; }; then
  if [[ $ONLY == swarm ]]; then
    echo "mesh: docker.io is missing (bash scripts/install-deps.sh --bench)" >&2; exit 1
  fi
  echo "mesh: docker.io is missing; running the shoal half only" >&2
  ONLY=shoal
fi

bench_enter_netns "${ARGS[@]}"
# The namespaces made below are named in a /run/netns of this run's own mount namespace, so the
# host's `ip netns` never lists them, even if the run is killed.
mkdir -p /run/netns
mount -t tmpfs -o size=1m,mode=755 shoal-mesh-netns /run/netns

# ---------------------------------------------------------------- the LAN

T0=$(now)
WORK=$(mktemp -d /tmp/shoal-mesh.XXXXXX)
chmod 755 "$WORK"
NS=$SHOAL_BENCH_NETNS           # this run's outer namespace; every inner one is named after it
LAN_NS=$NS-lan
PREFIX=10.235.$(($$ % 250 + 1)) # the LAN's /24 (only inside this run's namespaces)
declare -a HOST_NS=()           # every host namespace made, for the cleanup
declare -A ADDR=()              # ADDR[n1]=10.235.x.2 ...
declare -A NSOF=()              # NSOF[n1]=shoal-mesh-123-n1 ...
declare -a NOTES=()             # lines printed under the table

note() { NOTES+=("$*"); log "note: $*"; }

make_lan() {
  ip netns add "$LAN_NS"
  HOST_NS+=("$LAN_NS")
  ip -n "$LAN_NS" link add br0 type bridge
  ip -n "$LAN_NS" link set br0 up
  ip -n "$LAN_NS" link set lo up
}

# make_host NAME INDEX: a namespace with eth0 on the LAN bridge at PREFIX.INDEX/24
make_host() {
  local name=$1 i=$2 ns=$NS-$1
  ip netns add "$ns"
  HOST_NS+=("$ns")
  ip -n "$LAN_NS" link add "h$i" type veth peer name eth0 netns "$ns"
  ip -n "$LAN_NS" link set "h$i" master br0 up
  ip -n "$ns" addr add "$PREFIX.$i/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  ADDR[$name]=$PREFIX.$i
  NSOF[$name]=$ns
}

in_host() { local h=$1; shift; nsenter --net="/run/netns/${NSOF[$h]}" -- "$@"; }

# ---------------------------------------------------------------- HTTP checks and wrk

# http_ok NETNS_FILE ADDR PORT: one HTTP/1.0 GET from inside the namespace answers 200.
http_ok() {
  # shellcheck disable=SC2016 # the inner script's $0 and $1 are its own arguments
  nsenter --net="$1" -- timeout 3 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    printf "GET / HTTP/1.0\r\nHost: x\r\n\r\n" >&3
    head -1 <&3 | grep -q " 200 "' "$2" "$3" 2>/dev/null
}

# tcpext NETNS_FILE: the namespace's TCP counters "SYN-retransmits listen-drops". A dropped
# SYN costs its connection a 1 s retransmit timeout, which wrk's latencies do not show (they
# start at the request) but its requests/s do.
tcpext() {
  nsenter --net="$1" -- cat /proc/net/netstat 2>/dev/null | awk '
    $1 == "TcpExt:" && !h { for (i = 2; i <= NF; i++) n[$i] = i; h = 1; next }
    $1 == "TcpExt:" { print $n["TCPSynRetrans"] + 0, $n["ListenDrops"] + 0 }'
}

# run_wrk KEY NETNS_FILE URL: one wrk run of DURATION seconds from inside the namespace; the
# output goes to WORK/wrk/KEY.ROUND.txt and its numbers to R[KEY.ROUND.*]. SERVER_NS[ORCH] is
# the web container's namespace, whose listen drops are counted.
declare -A R=() SERVER_NS=()
DROPS=0
run_wrk() {
  local key=$1 nsf=$2 url=$3 out c0 c1 s0 s1 srv=${SERVER_NS[${1%%.*}]:-}
  mkdir -p "$WORK/wrk"
  out=$WORK/wrk/$key.$ROUND.txt
  log "  $key: wrk -t$THREADS -c$CONNS -d${DURATION}s $url"
  c0=$(tcpext "$nsf"); [[ -z $srv ]] || s0=$(tcpext "$srv")
  if ! timeout $((DURATION + 30)) nsenter --net="$nsf" -- \
      wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --timeout 5s --latency "$url" >"$out" 2>&1; then
    log "  $key: wrk failed: $(tail -3 "$out" | tr '\n' ' ')"
    return 0
  fi
  c1=$(tcpext "$nsf"); [[ -z $srv ]] || s1=$(tcpext "$srv")
  R[$key.$ROUND.synrt]=$((${c1%% *} - ${c0%% *}))
  [[ -z $srv ]] || R[$key.$ROUND.ldrop]=$((${s1#* } - ${s0#* }))
  if [[ ${R[$key.$ROUND.synrt]} != 0 || ${R[$key.$ROUND.ldrop]:-0} != 0 ]]; then
    DROPS=1
    note "$key, round $ROUND: ${R[$key.$ROUND.synrt]} SYN retransmits at the client, ${R[$key.$ROUND.ldrop]:-?} listen drops at the server"
  fi
  # Latencies in ms; wrk prints us, ms or s.
  awk -v k="$key.$ROUND" '
    function ms(v) {
      if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
      if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
      if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
      if (v ~ /m$/) return substr(v, 1, length(v) - 1) * 60000
      return v + 0
    }
    $1 == "Requests/sec:" { print k ".rps", $2 }
    $1 == "50%" { print k ".p50", ms($2) }
    $1 == "90%" { print k ".p90", ms($2) }
    $1 == "99%" { print k ".p99", ms($2) }
    $1 == "Socket" && $2 == "errors:" {
      gsub(",", ""); print k ".err", $4 + $6 + $8 + $10 }
    $1 == "Non-2xx" { print k ".non2xx", $5 }
  ' "$out" >"$out.parsed"
  local name value
  R[$key.$ROUND.err]=0
  R[$key.$ROUND.non2xx]=0
  while read -r name value; do R[$name]=$value; done <"$out.parsed"
  if [[ ${R[$key.$ROUND.err]} != 0 || ${R[$key.$ROUND.non2xx]} != 0 ]]; then
    note "$key, round $ROUND: ${R[$key.$ROUND.err]} socket errors, ${R[$key.$ROUND.non2xx]} non-2xx answers (see wrk/$key.$ROUND.txt)"
  fi
}

# median KEY FIELD: the median over the rounds of R[KEY.ROUND.FIELD] (empty when none).
median() {
  local key=$1 f=$2 r vals=()
  for ((r = 1; r <= ROUNDS; r++)); do
    [[ -n ${R[$key.$r.$f]:-} ]] && vals+=("${R[$key.$r.$f]}")
  done
  [[ ${#vals[@]} -gt 0 ]] || return 0
  printf '%s\n' "${vals[@]}" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2
    print m }'
}

# ---------------------------------------------------------------- shoal half

SHOAL_NS=shoal-mesh       # containerd namespace
SECRET=mesh-bench-provisioning-secret-$$
WEB_PORT=18080
WEB_CMD='mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www'

S() { # NODE ARGS...: the CLI against node NODE's bus
  local n=$1; shift
  DBUS_SYSTEM_BUS_ADDRESS="unix:path=$WORK/n$n/bus/bus.sock" timeout 60 "$SHOAL" "$@"
}

# start_system_bus DIR: a dbus-daemon configured like Debian's system bus (default deny) with the
# shipped policy of systemd/ included, as the end-to-end tests run it; socket DIR/bus.sock.
start_system_bus() {
  local dir=$1
  mkdir -p "$dir/policy"
  cp "$REPO/systemd/org.shoal.Shoal1.conf" "$dir/policy/"
  cat >"$dir/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path=$dir/bus.sock</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <includedir>$dir/policy</includedir>
</busconfig>
EOF
  dbus-daemon --config-file="$dir/bus.conf" --nofork --nopidfile >"$dir/dbus.log" 2>&1 &
  echo $! >"$dir/dbus.pid"
  STARTED_PIDS+=("$!")
  wait_for 20 test -S "$dir/bus.sock"
}

# start_node N HOST ROLE_TOML CLUSTER_TOML
start_node() {
  local n=$1 host=$2 node_extra=$3 cluster=$4 dir=$WORK/n$1
  mkdir -p "$dir/state" "$dir/stacks" "$dir/run"
  start_containerd "$dir/containerd"
  start_system_bus "$dir/bus"
  cat >"$dir/cluster.toml" <<EOF
[node]
name = "mesh-$n"
$node_extra

[network]
listen = "${ADDR[$host]}:4600"
bridge = "shm$n"
subnet = "10.236.$n.0/24"

[cluster]
$cluster
token_file = "$WORK/token"

[containerd]
address = "$dir/containerd/containerd.sock"
namespace = "$SHOAL_NS"

[paths]
state_dir = "$dir/state"
stacks_dir = "$dir/stacks"
run_dir = "$dir/run"

[images]
preload = ["oci-archive:$WORK/busybox-oci.tar"]
EOF
  # nsenter enters only the host's network namespace and execs shoald (same pid); the mount
  # namespace stays the one containerd sees, as the end-to-end tests do it.
  DBUS_SYSTEM_BUS_ADDRESS="unix:path=$dir/bus/bus.sock" \
    nsenter --net="/run/netns/${NSOF[$host]}" -- "$SHOALD" --config "$dir/cluster.toml" \
    >"$dir/shoald.log" 2>&1 &
  echo $! >"$dir/shoald.pid"
  STARTED_PIDS+=("$!")
  if ! wait_for "$STEP_TIMEOUT" S "$n" info >/dev/null 2>&1; then
    echo "mesh: shoald of node $n did not answer 'shoal info' within ${STEP_TIMEOUT}s; see $dir/shoald.log" >&2
    return 1
  fi
}

stop_node() { # N
  local dir=$WORK/n$1 pid
  if [[ -f $dir/shoald.pid ]]; then
    pid=$(cat "$dir/shoald.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      wait_for 30 bash -c "! kill -0 $pid 2>/dev/null" || kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/shoald.pid"
  fi
  # Tasks outlive shoald by design: stop_containerd kills whatever is left.
  stop_containerd "$dir/containerd" "$SHOAL_NS"
  stop_bus "$dir/bus"
}

two_ready_nodes() {
  S 1 node ls --format json 2>/dev/null | python3 -c '
import json, sys
rows = json.load(sys.stdin)
sys.exit(0 if len(rows) == 2 and all(r.get("status") == "ready" for r in rows) else 1)'
}

# running_count SERVICE: tasks of SERVICE running (observed and desired), from node 1.
running_count() {
  S 1 service ps "$1" --format json 2>/dev/null | python3 -c '
import json, sys
print(sum(1 for t in json.load(sys.stdin) if t["state"] == "running" and t["desired"] == "running"))' \
    2>/dev/null || echo 0
}
service_runs() { [[ $(running_count "$1") -eq $2 ]]; }

# task_pid N PATTERN: the pid of the running container task on node N whose command line
# matches PATTERN (httpd, or the probe's sleep loop).
task_pid() {
  local n=$1 pat=$2 id pid st
  while read -r id pid st; do
    [[ $st == RUNNING ]] || continue
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pat"; then
      echo "$pid"; return 0
    fi
  done < <(ctr -a "$WORK/n$n/containerd/containerd.sock" -n "$SHOAL_NS" tasks ls 2>/dev/null | tail -n +2)
  return 1
}
task_pids_ready() {
  task_pid 2 httpd >/dev/null && task_pid 1 'while true' >/dev/null && task_pid 2 'while true' >/dev/null
}

# addr_of PID IFNAME: the IPv4 address of IFNAME in the container of PID.
addr_of() {
  nsenter --net="/proc/$1/ns/net" -- ip -o -4 addr show "$2" 2>/dev/null |
    awk '{ for (i = 1; i < NF; i++) if ($i == "inet") { split($(i + 1), a, "/"); print a[1]; exit } }'
}

# vip_of PID NAME: the A record the node's DNS server gives for NAME to the container of PID
# (asked from inside its network namespace, at the nameserver of its resolv.conf): the VIP.
# (`shoal service inspect` does not show VIPs.)
vip_of() {
  local server
  server=$(awk '$1 == "nameserver" { print $2; exit }' "/proc/$1/root/etc/resolv.conf" 2>/dev/null)
  [[ -n $server ]] || return 1
  nsenter --net="/proc/$1/ns/net" -- timeout 5 python3 -c '
import socket, struct, sys
server, name = sys.argv[1], sys.argv[2]
q = struct.pack(">HHHHHH", 0x5348, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
q += struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(q, (server, 53))
m = s.recv(2048)
an = struct.unpack(">H", m[6:8])[0]
i = len(q)
for _ in range(an):
    if m[i] & 0xC0 == 0xC0:
        i += 2
    else:
        while m[i]:
            i += m[i] + 1
        i += 1
    typ, _, _, rdlen = struct.unpack(">HHIH", m[i:i + 10])
    i += 10
    if typ == 1 and rdlen == 4:
        print(socket.inet_ntoa(m[i:i + 4]))
        break
    i += rdlen' "$server" "$2"
}

OVERLAY_SUBNET=10.97.0.0/24

# The measured paths: PATHS lists ORCH.KEY as they were found to answer; PATH_NS and PATH_URL say where
# wrk runs and what it asks; NA[ORCH.KEY] says why a path is not measured.
declare -A PATH_NS=() PATH_URL=() NA=()
declare -a PATHS=()

# add_path ORCH.KEY NETNS_FILE ADDR PORT [WAIT [WHY]]: measured if it answers within WAIT
# seconds (default 30); else n/a, saying WHY when given.
#
# The namespace wrk runs in gets TCP timestamps without a random offset per destination
# (net.ipv4.tcp_timestamps = 2, a per-namespace setting): the rows reach the same server
# socket through different destination addresses (the container's own, a node's published port,
# the VIP), and with the default offsets a new connection whose 4-tuple matches one of the
# server's TIME_WAIT sockets from the row before carries an older timestamp, is dropped by
# PAWS and retried only after a 1 s SYN timeout, which costs a row up to half its requests/s.
add_path() {
  local wait=${5:-30}
  nsenter --net="$2" -- sysctl -q -w net.ipv4.tcp_timestamps=2 || true
  if WAIT_POLL=0.3 wait_for "$wait" http_ok "$2" "$3" "$4"; then
    PATH_NS[$1]=$2
    PATH_URL[$1]=http://$3:$4/
    PATHS+=("$1")
  else
    if [[ -n ${6:-} ]]; then NA[$1]="no answer within $wait s: $6"; else NA[$1]="http://$3:$4/ did not answer within $wait s"; fi
    log "$1: ${NA[$1]}"
  fi
}

setup_shoal() {
  log "shoal: two nodes on the LAN (node 1 bootstraps, node 2 joins as a worker)"
  make_host n1 2
  make_host n2 3
  echo "$SECRET" >"$WORK/token"
  build_busybox_oci "$WORK/busybox-oci.tar"
  start_node 1 n1 "" "bootstrap = true"
  start_node 2 n2 'role = "worker"' "join = [\"${ADDR[n1]}:4600\"]"
  if ! wait_for "$STEP_TIMEOUT" two_ready_nodes; then
    echo "mesh: the two nodes did not form a cluster within ${STEP_TIMEOUT}s; see $WORK/n*/shoald.log" >&2
    return 1
  fi
  local image="oci-archive:$WORK/busybox-oci.tar"
  S 1 network create --subnet "$OVERLAY_SUBNET" meshnet >/dev/null
  log "shoal: service web (httpd on node 2, port $WEB_PORT, $((WEB_PORT + 1)) in host mode) and probe (global)"
  S 1 service create --detach --name web --constraint node.role==worker --network meshnet \
    --publish "$WEB_PORT:8080" --publish "published=$((WEB_PORT + 1)),target=8080,mode=host" \
    "$image" sh -c "$WEB_CMD" >/dev/null
  S 1 service create --detach --name probe --mode global --network meshnet \
    "$image" "${TASK_CMD[@]}" >/dev/null
  if ! wait_for "$STEP_TIMEOUT" service_runs web 1 || ! wait_for "$STEP_TIMEOUT" service_runs probe 2 ||
     ! WAIT_POLL=0.5 wait_for "$STEP_TIMEOUT" task_pids_ready; then
    echo "mesh: the shoal services did not run within ${STEP_TIMEOUT}s" >&2
    S 1 service ps web >&2 || true
    S 1 service ps probe >&2 || true
    return 1
  fi
  local web probe1 probe2 web_eth0 web_ovl vip
  web=$(task_pid 2 httpd)
  probe1=$(task_pid 1 'while true')
  probe2=$(task_pid 2 'while true')
  web_eth0=$(addr_of "$web" eth0)
  web_ovl=$(addr_of "$web" eth1)
  vip=$(vip_of "$probe1" web || true)
  log "shoal: web task pid $web, bridge address $web_eth0, overlay $web_ovl, VIP ${vip:-?}"
  SERVER_NS[shoal]=/proc/$web/ns/net
  # Direct from the client host: a route to node 2's task subnet through node 2 (as a router
  # on the LAN would have it), so the client reaches the container without the mesh.
  in_host client ip route add 10.236.2.0/24 via "${ADDR[n2]}"
  local client=/run/netns/${NSOF[client]}
  add_path shoal.mesh_remote "$client" "${ADDR[n1]}" "$WEB_PORT"
  add_path shoal.mesh_local "$client" "${ADDR[n2]}" "$WEB_PORT"
  add_path shoal.hostport "$client" "${ADDR[n2]}" "$((WEB_PORT + 1))"
  if [[ -n $vip ]]; then
    add_path shoal.vip_remote "/proc/$probe1/ns/net" "$vip" 8080
    add_path shoal.vip_local "/proc/$probe2/ns/net" "$vip" 8080
  else
    NA[shoal.vip_remote]="the node's DNS server gave no address for web"
    NA[shoal.vip_local]=${NA[shoal.vip_remote]}
  fi
  add_path shoal.overlay_remote "/proc/$probe1/ns/net" "$web_ovl" 8080
  add_path shoal.overlay_local "/proc/$probe2/ns/net" "$web_ovl" 8080
  add_path shoal.direct_client "$client" "$web_eth0" 8080
  # The mesh's two hops without its NAT: a second client host whose route to node 2's task
  # subnet goes through node 1, and node 2's route back to it through node 1 too (as the
  # mesh's masquerade makes the answers go); it ignores node 1's ICMP redirects.
  make_host client2 10
  in_host client2 sysctl -q -w net.ipv4.conf.all.accept_redirects=0 net.ipv4.conf.eth0.accept_redirects=0
  in_host client2 ip route add 10.236.2.0/24 via "${ADDR[n1]}"
  in_host n1 ip route add 10.236.2.0/24 via "${ADDR[n2]}"
  in_host n2 ip route add "${ADDR[client2]}/32" via "${ADDR[n1]}"
  add_path shoal.routed_2hop "/run/netns/${NSOF[client2]}" "$web_eth0" 8080
  add_path shoal.direct_node "/run/netns/${NSOF[n2]}" "$web_eth0" 8080
  local n
  for n in 1 2; do
    { in_host "n$n" ip -d addr; in_host "n$n" ip route; in_host "n$n" nft list ruleset; } \
      >"$WORK/n$n/network.txt" 2>&1 || true
  done
}

stop_shoal() {
  stop_node 2 2>/dev/null || true
  stop_node 1 2>/dev/null || true
}

# ---------------------------------------------------------------- Swarm half

DOCKER_IMAGE=shoal-bench/busybox:latest
SWARM_SUBNET=10.98.0.0/24

D() { timeout 60 "$DOCKER" -H "unix://$WORK/swarm/docker.sock" "$@"; }

swarm_runs() { # SERVICE N
  local n
  n=$(D service ps "$1" --filter desired-state=running --format '{{.CurrentState}}' 2>/dev/null |
    grep -c '^Running' || true)
  [[ $n -eq $2 ]]
}

# swarm_pid SERVICE: the pid of the service's (one) running container.
swarm_pid() {
  local id
  id=$(D ps -q --filter "label=com.docker.swarm.service.name=$1" 2>/dev/null | head -1)
  [[ -n $id ]] && D inspect --format '{{.State.Pid}}' "$id"
}

# addr_in PID CIDR: the container's IPv4 address inside CIDR.
addr_in() {
  nsenter --net="/proc/$1/ns/net" -- ip -o -4 addr show 2>/dev/null |
    awk '{ for (i = 1; i < NF; i++) if ($i == "inet") print $(i + 1) }' |
    python3 -c '
import ipaddress, sys
net = ipaddress.ip_network(sys.argv[1])
for line in sys.stdin:
    a = ipaddress.ip_interface(line.strip())
    if a.ip in net:
        print(a.ip); break' "$2"
}

setup_swarm() {
  local dir=$WORK/swarm
  log "swarm: dockerd on its own host of the LAN, single-node swarm"
  make_host sw 5
  mkdir -p "$dir/data" "$dir/exec"
  start_containerd "$dir/containerd"
  # As bench/swarm-vs-shoal.sh: Docker's defaults (iptables on), here inside the host's network
  # namespace; the agent uses the loaded image instead of trying Docker Hub.
  DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 nsenter --net="/run/netns/${NSOF[sw]}" -- \
    dockerd --containerd="$dir/containerd/containerd.sock" --data-root="$dir/data" \
    --exec-root="$dir/exec" --pidfile="$dir/dockerd.pid" -H "unix://$dir/docker.sock" \
    >"$dir/dockerd.log" 2>&1 &
  echo $! >"$dir/dockerd.main"
  STARTED_PIDS+=("$!")
  if ! wait_for 60 D version >/dev/null 2>&1; then
    echo "mesh: dockerd did not answer within 60s; see $dir/dockerd.log" >&2
    return 1
  fi
  D swarm init --advertise-addr "${ADDR[sw]}" >/dev/null
  python3 "$REPO/scripts/mkimage.py" --format docker --name "$DOCKER_IMAGE" -o "$WORK/busybox-docker.tar"
  D load -i "$WORK/busybox-docker.tar" >/dev/null
  D network create --driver overlay --subnet "$SWARM_SUBNET" meshnet >/dev/null
  log "swarm: service web (httpd, port $WEB_PORT via ingress, $((WEB_PORT + 1)) in host mode) and probe"
  D service create --detach --quiet --no-resolve-image --name web --network meshnet \
    --publish "published=$WEB_PORT,target=8080" \
    --publish "published=$((WEB_PORT + 1)),target=8080,mode=host" \
    "$DOCKER_IMAGE" sh -c "$WEB_CMD" >/dev/null
  D service create --detach --quiet --no-resolve-image --name probe --network meshnet \
    "$DOCKER_IMAGE" "${TASK_CMD[@]}" >/dev/null
  local why=""
  if ! wait_for "$STEP_TIMEOUT" swarm_runs web 1 || ! wait_for "$STEP_TIMEOUT" swarm_runs probe 1; then
    why="the Swarm services did not run within ${STEP_TIMEOUT}s: $(D service ps --no-trunc \
      --format '{{.Name}} {{.CurrentState}} {{.Error}}' web probe 2>&1 | head -4 | tr '\n' ';')"
  fi
  local web="" probe="" web_gw web_ovl vip=""
  [[ -n $why ]] || web=$(swarm_pid web) || true
  [[ -n $why ]] || probe=$(swarm_pid probe) || true
  if [[ -z $why && ( -z $web || -z $probe ) ]]; then why="no container of web or probe found"; fi
  if [[ -n $why ]]; then
    local k
    for k in "${ROWS[@]}"; do
      NA[swarm.$k]=$why
    done
    note "swarm: $why"
    return 0
  fi
  web_gw=$(addr_in "$web" 172.16.0.0/12)
  web_ovl=$(addr_in "$web" "$SWARM_SUBNET")
  vip=$(vip_of "$probe" web || true)
  log "swarm: web container pid $web, docker_gwbridge address $web_gw, overlay $web_ovl, VIP ${vip:-?}"
  SERVER_NS[swarm]=/proc/$web/ns/net
  local one="one swarm node (no node without a task)"
  NA[swarm.mesh_remote]=$one
  NA[swarm.vip_remote]=$one
  NA[swarm.overlay_remote]=$one
  NA[swarm.routed_2hop]=$one
  in_host client ip route add 172.16.0.0/12 via "${ADDR[sw]}"
  local client=/run/netns/${NSOF[client]}
  # Without IPVS, Swarm's ingress and VIPs cannot answer: a short try, to show it.
  local wait=30 why=""
  if [[ ! -e /proc/net/ip_vs ]]; then
    wait=5 why="this kernel has no IPVS (CONFIG_IP_VS), which Swarm's ingress and VIPs need"
  fi
  add_path swarm.mesh_local "$client" "${ADDR[sw]}" "$WEB_PORT" "$wait" "$why"
  add_path swarm.hostport "$client" "${ADDR[sw]}" "$((WEB_PORT + 1))"
  if [[ -n $vip ]]; then
    add_path swarm.vip_local "/proc/$probe/ns/net" "$vip" 8080 "$wait" "$why"
  else
    NA[swarm.vip_local]="Docker's DNS gave no address for web"
  fi
  add_path swarm.overlay_local "/proc/$probe/ns/net" "$web_ovl" 8080
  add_path swarm.direct_client "$client" "$web_gw" 8080
  add_path swarm.direct_node "/run/netns/${NSOF[sw]}" "$web_gw" 8080
  { in_host sw ip -d addr; in_host sw ip route; in_host sw iptables-save; } >"$dir/network.txt" 2>&1 || true
}

# ---------------------------------------------------------------- cleanup and report

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  stop_swarm "$WORK/swarm" "$WORK/swarm/containerd" 2>/dev/null
  stop_shoal 2>/dev/null
  local p
  for p in "${STARTED_PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  # Host namespaces first, the LAN (whose bridge holds their veths) last.
  for ((p = ${#HOST_NS[@]} - 1; p >= 0; p--)); do ip netns delete "${HOST_NS[p]}" 2>/dev/null; done
  unmount_under "$WORK"
  if [[ $KEEP -eq 1 ]]; then
    log "logs, wrk outputs and state kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ROWS=(mesh_remote mesh_local hostport vip_remote vip_local overlay_remote overlay_local
  direct_client routed_2hop direct_node)
REF=direct_client   # the ratio column divides by this row's requests/s

label() {
  case $1 in
    mesh_remote) echo "mesh: client -> node without task" ;;
    mesh_local) echo "mesh: client -> node with task" ;;
    hostport) echo "mode=host port: client -> node" ;;
    vip_remote) echo "VIP: task on other node -> VIP" ;;
    vip_local) echo "VIP: task on same node -> VIP" ;;
    overlay_remote) echo "overlay: other node's task -> task" ;;
    overlay_local) echo "overlay: same node's task -> task" ;;
    direct_client) echo "direct: client -> container" ;;
    routed_2hop) echo "routed: client -> node 1 -> container" ;;
    direct_node) echo "direct: node -> container" ;;
    *) echo "$1" ;;
  esac
}

# cells ORCH ROW: requests/s, p50, p90, p99 and the ratio to REF, or n/a with a footnote mark.
declare -a FOOT=()
cells() {
  local o=$1 k=$2 rps ref ratio=-
  rps=$(median "$o.$k" rps)
  if [[ -z $rps ]]; then
    local why=${NA[$o.$k]:-not run}
    local i mark=""
    for i in "${!FOOT[@]}"; do [[ ${FOOT[i]} == "$why" ]] && mark=$((i + 1)); done
    if [[ -z $mark ]]; then FOOT+=("$why"); mark=${#FOOT[@]}; fi
    printf ' %9s %6s %6s %6s %6s' "n/a($mark)" "" "" "" ""
    return
  fi
  ref=$(median "$o.$REF" rps)
  [[ -n $ref ]] && ratio=$(awk -v a="$rps" -v b="$ref" 'BEGIN { printf "%.2f", a / b }')
  printf ' %9.0f %6.2f %6.2f %6.2f %6s' "$rps" "$(median "$o.$k" p50)" "$(median "$o.$k" p90)" \
    "$(median "$o.$k" p99)" "$ratio"
}

# paired A B: "MEDIAN R1 R2 ..." of A's requests/s over B's, round by round; 1 when no round has both.
paired() {
  local r x ratios=()
  for ((r = 1; r <= ROUNDS; r++)); do
    if [[ -n ${R[$1.$r.rps]:-} && -n ${R[$2.$r.rps]:-} ]]; then
      ratios+=("$(awk -v a="${R[$1.$r.rps]}" -v b="${R[$2.$r.rps]}" 'BEGIN { printf "%.3f", a / b }')")
    fi
  done
  [[ ${#ratios[@]} -gt 0 ]] || return 1
  printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) printf "%s", v[(NR + 1) / 2]; else printf "%s", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
  for x in "${ratios[@]}"; do awk -v x="$x" 'BEGIN { printf " %.0f%%", 100 * x }'; done
  echo
}

report() {
  echo
  echo "HTTP through the routing mesh, a VIP and direct; $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "shoal: $([[ $ONLY != swarm ]] && "$SHOALD" --version 2>/dev/null | head -1 || echo "not run")"
  echo "swarm: $([[ $ONLY != shoal ]] && dockerd --version 2>/dev/null | head -1 || echo "not run")"
  echo "wrk -t$THREADS -c$CONNS -d${DURATION}s, median of $ROUNDS round(s); busybox httpd (a process per connection)"
  echo "latencies in ms; ratio: requests/s over the same orchestrator's '$(label $REF)'"
  echo
  printf '%-38s %9s %6s %6s %6s %6s %9s %6s %6s %6s %6s\n' "" "shoal" "" "" "" "" "swarm" "" "" "" ""
  printf '%-38s %9s %6s %6s %6s %6s %9s %6s %6s %6s %6s\n' path req/s p50 p90 p99 ratio req/s p50 p90 p99 ratio
  local k
  for k in "${ROWS[@]}"; do
    printf '%-38s' "$(label "$k")"
    if [[ $ONLY == swarm ]]; then NA[shoal.$k]="--only swarm"; fi
    if [[ $ONLY == shoal ]]; then NA[swarm.$k]="--only shoal"; fi
    cells shoal "$k"
    cells swarm "$k"
    echo
  done
  echo
  local i
  for i in "${!FOOT[@]}"; do echo "n/a($((i + 1))): ${FOOT[i]}"; done
  for i in "${NOTES[@]}"; do echo "note: $i"; done
  [[ $DROPS -eq 1 ]] || echo "no SYN retransmits at the clients and no listen drops at the servers in any run"
  # The goal: per round, the mesh row over the direct row measured next to it; the verdict on
  # the median of those paired ratios (steadier than a ratio of medians on a busy machine).
  local g
  if g=$(paired shoal.mesh_remote "shoal.$REF"); then
    awk -v m="${g%% *}" -v per="${g#* }" 'BEGIN {
      printf "goal: the mesh from a node without a task keeps %.0f%% of the direct throughput (median of the rounds: %s); goal >= 80%%: %s\n",
        100 * m, per, (m >= 0.8 ? "met" : "NOT met") }'
  fi
  if g=$(paired shoal.mesh_remote shoal.routed_2hop); then
    awk -v m="${g%% *}" -v per="${g#* }" 'BEGIN {
      printf "the mesh against the same two hops without NAT (routed row): %.0f%% (rounds: %s)\n", 100 * m, per }'
  fi
}

make_lan
make_host client 9

[[ $ONLY == swarm ]] || setup_shoal
if [[ $ONLY != shoal ]]; then
  setup_swarm
fi
log "setup done after $(since "$T0") s; measuring ${#PATHS[@]} paths, $ROUNDS round(s) of ${DURATION}s each"
if [[ -n ${MESH_HOLD:-} ]]; then   # debugging: keep the setup up for a look from outside
  log "holding for ${MESH_HOLD}s (rm $WORK/hold to go on); namespaces: ${HOST_NS[*]}"
  declare -p PATH_NS PATH_URL >"$WORK/paths"
  touch "$WORK/hold"
  WAIT_POLL=1 wait_for "$MESH_HOLD" test ! -e "$WORK/hold" || true
fi

# Every round measures every path, so that the machine's load drifts over all of them alike;
# rows that are compared run next to each other (direct then mesh, overlay then VIP, shoal then
# swarm), and every other round runs in reverse order.
ORDER=(routed_2hop direct_client mesh_remote mesh_local hostport direct_node overlay_local
  vip_local overlay_remote vip_remote)
ORDERED=()
for k in "${ORDER[@]}"; do
  for o in shoal swarm; do [[ -z ${PATH_NS[$o.$k]:-} ]] || ORDERED+=("$o.$k"); done
done
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
  log "round $ROUND of $ROUNDS"
  for ((i = 0; i < ${#ORDERED[@]}; i++)); do
    if ((ROUND % 2)); then key=${ORDERED[i]}; else key=${ORDERED[${#ORDERED[@]} - 1 - i]}; fi
    run_wrk "$key" "${PATH_NS[$key]}" "${PATH_URL[$key]}"
  done
done

report
log "total $(since "$T0") s"
