#!/usr/bin/env bash
# shoald under a real systemd: boots a Debian 12 rootfs with systemd as PID 1 in a privileged
# container run by a private containerd, installs shoald, shoal, the unit, the D-Bus policy and the
# tmpfiles snippet from systemd/ into it, and checks through real systemctl and journalctl:
# readiness (Type=notify), the status line, reload of an added/changed/broken/removed stack file,
# restart and watchdog restarts that leave the tasks running, structured journal fields, a file
# secret that reaches its task and never the journal (at SHOAL_LOG=debug), and
# `systemd-analyze verify`.
#
# usage: tests/systemd/run.sh          (as root; never prompts)
#
# Environment:
#   SHOAL_SYSTEMD_ROOTFS_CACHE  the cached debootstrap rootfs, rebuilt when missing or stale
#                               (default /var/cache/shoal-test/rootfs-bookworm)
#   SHOAL_BIN_DIR               where shoald and shoal are (default target/debug; built with
#                               `cargo build -p shoald -p shoal` when missing)
#   SHOAL_DEBIAN_MIRROR         the Debian mirror for debootstrap (default: the bookworm
#                               mirror apt is configured with, from /etc/apt/sources.list{,.d})
#   SHOAL_SYSTEMD_KEEP_LOGS     a directory to copy the systemd host's journal and the private
#                               containerd's log into at the end
#
# Prints one line per check (`ok - ...` / `not ok - ...`), diagnostics as `# ...`, and a final
#   systemd tests: N passed, M failed
# Exits non-zero when anything failed. Everything it starts (containerd, the systemd host and the
# containers inside it) is stopped and its mounts removed on exit, failure or Ctrl-C.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# The rootfs (debootstrap, cache), the private containerd's config, ok/not_ok/check, wait_for.
# shellcheck source=tests/systemd/lib.sh
source "$HERE/lib.sh"
CACHE=${SHOAL_SYSTEMD_ROOTFS_CACHE:-/var/cache/shoal-test/rootfs-bookworm}
BIN_DIR=${SHOAL_BIN_DIR:-$REPO/target/debug}

NS=shoal-systemd-test
CNAME=sdhost-$$
STACK=/etc/shoal/stacks/web.toml

PASSED=0
FAILED=0
WORK=
SOCK=
CTD_PID=
GUEST_UP=0
GUEST_PID=
INTERRUPTED=0
EXEC_N=0
declare -A NESTED_IDS=()
START_TIME=$SECONDS

summary() {
  say "took $((SECONDS - START_TIME))s"
  echo "systemd tests: $PASSED passed, $FAILED failed"
}

# fatal MESSAGE: a setup step failed; nothing more can be checked.
fatal() {
  not_ok "$*"
  exit 1
}

# ---------------------------------------------------------------------------------------------
# Host side: containerd, cleanup

ctr_host() { ctr --address "$SOCK" -n "$NS" "$@"; }

# gx [-t SECONDS] CMD...: runs CMD inside the systemd host (stdin closed), with a timeout.
gx() {
  local t=60
  if [[ ${1:-} == -t ]]; then
    t=$2
    shift 2
  fi
  # gx mostly runs in a subshell ($(...)), so the id takes the subshell's pid and a random part.
  EXEC_N=$((EXEC_N + 1))
  timeout --kill-after=5 "$t" ctr --address "$SOCK" -n "$NS" tasks exec \
    --exec-id "x$BASHPID-$EXEC_N-$RANDOM" \
    "$CNAME" /usr/bin/env PATH="$GUEST_PATH" SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 LC_ALL=C.UTF-8 \
    "$@" </dev/null
}

# Remembers the containerd task ids inside the systemd host, so their cgroups (created by the
# inner runc at the host's cgroup root, /shoal/<id>) can be removed after the host is gone.
remember_nested() {
  local id
  while read -r id; do
    [[ -n $id ]] && NESTED_IDS[$id]=1
  done < <(gx -t "${1:-20}" ctr -n shoal containers list -q 2>/dev/null)
}

cleanup() {
  local status=$?
  # Finish the cleanup even when Ctrl-C is pressed again.
  trap '' INT TERM
  trap - EXIT
  if [[ $GUEST_UP -eq 1 ]] && ctr --address "$SOCK" version >/dev/null 2>&1; then
    if [[ $FAILED -gt 0 && $INTERRUPTED -eq 0 ]]; then
      say "last journal lines of shoald.service in the systemd host:"
      gx -t 10 journalctl --no-pager -n 60 -u shoald 2>&1 | indent
    fi
    if [[ -n ${SHOAL_SYSTEMD_KEEP_LOGS:-} ]]; then
      mkdir -p "$SHOAL_SYSTEMD_KEEP_LOGS"
      gx -t 30 journalctl --no-pager -o short-precise >"$SHOAL_SYSTEMD_KEEP_LOGS/journal.txt" 2>&1
      cp "$WORK/containerd.log" "$SHOAL_SYSTEMD_KEEP_LOGS/host-containerd.log" 2>/dev/null
      say "logs kept in $SHOAL_SYSTEMD_KEEP_LOGS"
    fi
    remember_nested 10
  fi
  if [[ -n $SOCK && -S $SOCK ]]; then
    # Killing the systemd host's PID 1 kills every process of its PID namespace, which holds
    # the inner containerd, its shims and the containers they run.
    ctr_host tasks kill --all --signal SIGKILL "$CNAME" >/dev/null 2>&1
    local i
    for ((i = 0; i < 100; i++)); do
      ctr_host tasks list -q 2>/dev/null | grep -qx "$CNAME" || break
      ctr_host tasks delete --force "$CNAME" >/dev/null 2>&1 && break
      sleep 0.2
    done
    ctr_host containers delete "$CNAME" >/dev/null 2>&1
  fi
  # Should containerd have gone away first, the host's PID 1 is killed directly (it is ours when
  # it still sits in this run's cgroup).
  if [[ -n $GUEST_PID ]] && grep -q "/$NS/$CNAME" "/proc/$GUEST_PID/cgroup" 2>/dev/null; then
    kill -KILL "$GUEST_PID" 2>/dev/null
    for ((i = 0; i < 50; i++)); do
      [[ -d /proc/$GUEST_PID ]] || break
      sleep 0.2
    done
  fi
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
    local pid cmd
    for pid in $(pgrep -f -- "-address $SOCK" 2>/dev/null); do
      cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)
      [[ $cmd == *"containerd-shim"*"-address $SOCK"* ]] && kill -KILL "$pid" 2>/dev/null
    done
    # Unmount everything below the work directory, deepest first.
    local m
    while read -r m; do
      umount -l "$m" 2>/dev/null
    done < <(awk -v w="$WORK" '$5 == w || index($5, w "/") == 1 { print length($5), $5 }' \
      /proc/self/mountinfo | sort -rn | cut -d' ' -f2-)
  fi
  # Empty cgroups left by the inner runc and by this run's container.
  local id d
  for id in "${!NESTED_IDS[@]}"; do
    for d in /sys/fs/cgroup/*/shoal/"$id" /sys/fs/cgroup/shoal/"$id"; do
      [[ -d $d ]] && rmdir "$d" 2>/dev/null
    done
  done
  for d in /sys/fs/cgroup/*/"$NS"/"$CNAME" /sys/fs/cgroup/"$NS"/"$CNAME" /sys/fs/cgroup/*/"$NS" \
    /sys/fs/cgroup/"$NS"; do
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
  fatal "setup: must run as root (it mounts an overlay and runs a privileged container)"
fi
missing=()
for tool in containerd ctr runc debootstrap python3 flock timeout setsid; do
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

# ---------------------------------------------------------------------------------------------
# The Debian rootfs (cached)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shoal-systemd.XXXXXX") || fatal "setup: mktemp failed"
ensure_rootfs || fatal "setup: build the Debian rootfs with debootstrap (see the log above)"

# ---------------------------------------------------------------------------------------------
# This run's copy of the rootfs, with shoal installed

ROOT=$WORK/root
mkdir -p "$ROOT" "$WORK/upper" "$WORK/ovlwork"
if mount -t overlay overlay -o "lowerdir=$CACHE,upperdir=$WORK/upper,workdir=$WORK/ovlwork" \
  "$ROOT" 2>"$WORK/overlay.err"; then
  say "rootfs: overlay on $CACHE"
else
  say "overlay mount failed ($(cat "$WORK/overlay.err")); copying the rootfs instead"
  rmdir "$ROOT"
  cp -a "$CACHE" "$ROOT" || fatal "setup: copy $CACHE to $ROOT"
fi

install_shoal() {
  install -m 0755 "$BIN_DIR/shoald" "$BIN_DIR/shoal" "$ROOT/usr/local/bin/" &&
    install -D -m 0644 "$REPO/systemd/shoald.service" "$ROOT/etc/systemd/system/shoald.service" &&
    install -D -m 0644 "$REPO/systemd/org.shoal.Shoal1.conf" \
      "$ROOT/usr/share/dbus-1/system.d/org.shoal.Shoal1.conf" &&
    install -D -m 0644 "$REPO/systemd/shoal.tmpfiles" "$ROOT/usr/local/lib/tmpfiles.d/shoal.conf" &&
    mkdir -p "$ROOT/etc/shoal/stacks" "$ROOT/var/lib/shoal/images" &&
    python3 "$REPO/scripts/mkimage.py" -o "$ROOT/var/lib/shoal/images/busybox.tar" >/dev/null &&
    mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants" &&
    ln -sf /etc/systemd/system/shoald.service \
      "$ROOT/etc/systemd/system/multi-user.target.wants/shoald.service" &&
    ln -sf /lib/systemd/system/containerd.service \
      "$ROOT/etc/systemd/system/multi-user.target.wants/containerd.service" &&
    echo shoal-systemd >"$ROOT/etc/hostname" &&
    : >"$ROOT/etc/machine-id"
}
install_shoal || fatal "setup: install shoal into the rootfs"

# ---------------------------------------------------------------------------------------------
# A private containerd on the host, and the systemd host in it

SOCK=$WORK/containerd.sock
write_containerd_config "$WORK" "$SOCK"
# In its own session, so that a Ctrl-C in the terminal reaches the script (which then cleans up)
# but not the containerd the cleanup needs. (No job control here: setsid does not fork.)
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
# /sys/fs/cgroup is the host's, bound with rbind: runc inside needs every v1 hierarchy (without
# it, joining the cpu cgroup fails). /var/lib/containerd is a tmpfs because the inner
# overlayfs snapshotter cannot put its upper directories on the overlay rootfs.
if ! ctr_host run -d --rootfs --privileged \
  --env container=containerd --env PATH="$GUEST_PATH" \
  --mount type=tmpfs,src=tmpfs,dst=/run,options=rw:nosuid:nodev:mode=755 \
  --mount type=tmpfs,src=tmpfs,dst=/tmp,options=rw:nosuid:nodev \
  --mount type=tmpfs,src=tmpfs,dst=/var/lib/containerd,options=rw:mode=711 \
  --mount type=bind,src=/sys/fs/cgroup,dst=/sys/fs/cgroup,options=rbind:rw \
  --log-uri "file://$WORK/console.log" \
  "$ROOT" "$CNAME" /sbin/init >"$WORK/run.log" 2>&1; then
  indent <"$WORK/run.log"
  fatal "setup: start the systemd host container (ctr run --rootfs --privileged)"
fi
GUEST_UP=1
GUEST_PID=$(ctr_host tasks list 2>/dev/null | awk -v c="$CNAME" '$1 == c { print $2 }')

# Wait for systemd to finish booting (degraded is fine: failed units are listed).
state=
for ((i = 0; i < 120; i++)); do
  state=$(gx -t 120 systemctl is-system-running --wait 2>/dev/null)
  case $state in
    running | degraded) break ;;
  esac
  sleep 1
done
case $state in
  running | degraded)
    ok "systemd booted as PID 1 (system $state after $((SECONDS - t_boot))s)"
    failed_units=$(gx systemctl --failed --no-legend --plain 2>&1)
    if [[ -n $failed_units ]]; then
      say "failed units in the systemd host:"
      printf '%s\n' "$failed_units" | indent
    fi
    ;;
  *)
    not_ok "systemd booted as PID 1 (is-system-running: '${state:-no answer}')"
    gx -t 20 systemctl list-jobs --no-pager 2>&1 | indent
    indent <"$WORK/console.log"
    exit 1
    ;;
esac

# ---------------------------------------------------------------------------------------------
# Helpers for the checks

# prop NAME: one property of shoald.service.
prop() { gx systemctl show -p "$1" --value shoald 2>/dev/null; }

# running_tasks SERVICE: sorted ids of the tasks of SERVICE that run and should run.
running_tasks() {
  gx shoal service ps "$1" --format json 2>/dev/null | python3 -c '
import json, sys
try:
    tasks = json.load(sys.stdin)
except ValueError:
    sys.exit(1)
print(" ".join(sorted(t["id"] for t in tasks
                      if t.get("state") == "running" and t.get("desired") == "running")))'
}

# container_pids: "task=pid" of the running containerd tasks inside, sorted.
container_pids() {
  gx ctr -n shoal tasks list 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING" { print $1 "=" $2 }' |
    sort | tr '\n' ' '
}

count_is() { # count_is N SERVICE
  local ids
  ids=$(running_tasks "$2") || return 1
  [[ $(wc -w <<<"$ids") -eq $1 ]]
}
curl_ok() { [[ $(gx -t 15 curl -sS -m 5 http://localhost:8080/ 2>/dev/null) == hi ]]; }
curl_fails() { ! gx -t 15 curl -sS -m 3 http://localhost:8080/ >/dev/null 2>&1; }
active() { [[ $(prop ActiveState) == active && $(prop SubState) == running ]]; }
no_containers() { [[ -z $(gx ctr -n shoal tasks list -q 2>/dev/null) ]]; }

write_stack() { # write_stack REPLICAS
  cat >"$ROOT$STACK" <<EOF
# written by tests/systemd/run.sh
[services.httpd]
image = "oci-archive:/var/lib/shoal/images/busybox.tar"
replicas = $1
command = ["sh", "-c", "mkdir -p /www && echo hi > /www/index.html && echo serving-httpd-on-80 && exec httpd -f -p 80 -h /www"]
ports = ["8080:80"]
stop_grace_period = "2s"
EOF
}

# ---------------------------------------------------------------------------------------------
# The checks

out=$(gx systemd-analyze verify /etc/systemd/system/shoald.service 2>&1)
r=$?
check "systemd-analyze verify /etc/systemd/system/shoald.service" $r "$out"

st=$(gx systemctl is-enabled shoald 2>&1)
act=$(gx systemctl is-active shoald 2>&1)
[[ $st == enabled && $act == active ]]
r=$?
check "shoald.service is enabled and started at boot (is-enabled: $st, is-active: $act)" $r \
  "$(gx journalctl -b --no-pager -u shoald 2>&1 | tail -n 20)"

# Readiness: `systemctl start` of a Type=notify unit returns once READY=1 arrived, so the unit is
# active and the daemon answers right away, without any retry.
gx systemctl stop shoald >/dev/null 2>&1
stopped=$(prop ActiveState)
out=$(gx -t 120 systemctl start shoald 2>&1)
start_status=$?
props=$(gx systemctl show -p Type,ActiveState,SubState,StatusText,MainPID,ExecMainStartTimestampMonotonic,ActiveEnterTimestampMonotonic shoald 2>&1)
info=$(gx -t 20 shoal info 2>&1)
info_status=$?
getp() { sed -n "s/^$1=//p" <<<"$props"; }
status_text=$(getp StatusText)
ready_ms=$((($(getp ActiveEnterTimestampMonotonic) + 0 - $(getp ExecMainStartTimestampMonotonic) - 0) / 1000))
[[ $stopped == inactive && $start_status -eq 0 && $(getp Type) == notify &&
  $(getp ActiveState) == active && $(getp SubState) == running && -n $status_text &&
  $info_status -eq 0 ]]
r=$?
check "systemctl start shoald returns once ready: active/running, StatusText \"$status_text\", shoal info answers at once (READY after ${ready_ms}ms)" $r \
  "stopped state: $stopped; start: $start_status $out
$props
shoal info ($info_status): $info"

status_out=$(gx systemctl status --no-pager --lines=0 shoald 2>&1)
line=$(grep -E '^\s*Status: "' <<<"$status_out" | head -n 1)
[[ -n $status_text && $line == *"\"$status_text\""* ]]
r=$?
check "systemctl status shows the status line:${line#*Status:}" $r "$status_out"

# Reload: an added stack file.
pid_before=$(prop MainPID)
write_stack 1
out=$(gx -t 120 systemctl reload shoald 2>&1)
reload_status=$?
[[ $reload_status -eq 0 ]] && wait_for 90 count_is 1 web_httpd && wait_for 60 curl_ok
applied=$?
pid_after=$(prop MainPID)
[[ $reload_status -eq 0 && $applied -eq 0 && $pid_before == "$pid_after" ]]
r=$?
check "systemctl reload applies an added stack file (web_httpd 1/1, curl localhost:8080 answers, same MainPID)" $r \
  "reload: $reload_status $out
MainPID $pid_before -> $pid_after
$(gx shoal service ps web_httpd 2>&1)
curl: $(gx -t 15 curl -sS -m 5 http://localhost:8080/ 2>&1)"
remember_nested

# Reload: a changed stack file (replicas 1 -> 2).
write_stack 2
out=$(gx -t 120 systemctl reload shoald 2>&1)
reload_status=$?
[[ $reload_status -eq 0 ]] && wait_for 90 count_is 2 web_httpd && curl_ok
applied=$?
[[ $reload_status -eq 0 && $applied -eq 0 ]]
r=$?
check "systemctl reload applies a changed stack file (replicas 1 -> 2: two tasks running)" $r \
  "reload: $reload_status $out
$(gx shoal service ps web_httpd 2>&1)"
say "StatusText with two tasks running: $(prop StatusText)"
remember_nested

# Reload: a broken stack file fails the reload, the error (file:line:col) is in the journal, and
# the running stack is left alone.
tasks_before=$(running_tasks web_httpd)
cursor=$(gx journalctl -n 0 --show-cursor --no-pager 2>/dev/null | sed -n 's/^-- cursor: //p')
cat >"$ROOT$STACK" <<'EOF'
# written by tests/systemd/run.sh: a broken stack file
[services.httpd]
image = "oci-archive:/var/lib/shoal/images/busybox.tar"
replicas = 2
ports = ["8080:80"
EOF
out=$(gx -t 120 systemctl reload shoald 2>&1)
reload_status=$?
sleep 1
journal=$(gx journalctl --no-pager -u shoald ${cursor:+--after-cursor="$cursor"} 2>&1)
err_line=$(grep -E 'web\.toml:[0-9]+:[0-9]+' <<<"$journal" | head -n 1)
tasks_after=$(running_tasks web_httpd)
[[ $reload_status -ne 0 && -n $err_line && -n $tasks_before && $tasks_before == "$tasks_after" ]] &&
  active && curl_ok
r=$?
check "a broken stack file fails systemctl reload (exit $reload_status), the journal has the error, the stack keeps running (same task ids)" $r \
  "reload: $reload_status $out
tasks before: $tasks_before
tasks after:  $tasks_after
journal since the reload:
$journal"
[[ -n $err_line ]] && say "journal: ${err_line#*]: }"
say "StatusText after the failed reload: $(prop StatusText)"

# Fixing the file again makes the next reload succeed without touching the tasks.
write_stack 2
out=$(gx -t 120 systemctl reload shoald 2>&1)
reload_status=$?
tasks_after=$(running_tasks web_httpd)
[[ $reload_status -eq 0 && $tasks_before == "$tasks_after" ]]
r=$?
check "after the file is fixed, systemctl reload succeeds and keeps the same tasks" $r \
  "reload: $reload_status $out
tasks before: $tasks_before
tasks after:  $tasks_after"

# Restart: the tasks keep running (same shoal task ids, same container PIDs).
tasks_before=$(running_tasks web_httpd)
pids_before=$(container_pids)
pid_before=$(prop MainPID)
out=$(gx -t 180 systemctl restart shoald 2>&1)
restart_status=$?
sleep 3
tasks_after=$(running_tasks web_httpd)
pids_after=$(container_pids)
pid_after=$(prop MainPID)
[[ $restart_status -eq 0 && $pid_before != "$pid_after" && -n $tasks_before &&
  $tasks_before == "$tasks_after" && -n $pids_before && $pids_before == "$pids_after" ]] &&
  active && curl_ok
r=$?
check "systemctl restart shoald leaves the tasks running (same task ids and container PIDs)" $r \
  "restart: $restart_status $out
MainPID $pid_before -> $pid_after
tasks before: $tasks_before
tasks after:  $tasks_after
pids before: $pids_before
pids after:  $pids_after"

# Watchdog: with WatchdogSec=4s, a stopped daemon is killed and restarted by systemd.
mkdir -p "$ROOT/etc/systemd/system/shoald.service.d"
printf '# written by tests/systemd/run.sh\n[Service]\nWatchdogSec=4s\n' \
  >"$ROOT/etc/systemd/system/shoald.service.d/wd.conf"
gx systemctl daemon-reload >/dev/null 2>&1
gx systemctl reset-failed shoald >/dev/null 2>&1 # restarts so far count against StartLimitBurst
gx -t 180 systemctl restart shoald >/dev/null 2>&1
wd=$(prop WatchdogUSec)
sleep 2
tasks_before=$(running_tasks web_httpd)
pids_before=$(container_pids)
nr_before=$(prop NRestarts)
pid_before=$(prop MainPID)
cursor=$(gx journalctl -n 0 --show-cursor --no-pager 2>/dev/null | sed -n 's/^-- cursor: //p')
t_wd=$SECONDS
gx sh -c "kill -STOP $pid_before"
restarted() {
  local nr pid
  nr=$(prop NRestarts)
  pid=$(prop MainPID)
  [[ -n $nr && $nr -gt $nr_before && -n $pid && $pid != 0 && $pid != "$pid_before" ]] && active
}
[[ $pid_before -gt 0 ]] && wait_for 90 restarted
wd_status=$?
wd_secs=$((SECONDS - t_wd))
sleep 2
journal=$(gx journalctl --no-pager -u shoald ${cursor:+--after-cursor="$cursor"} 2>&1)
# systemd logs "Watchdog timeout (limit 4s)!" and "Failed with result 'watchdog'"; under load the
# journal may drop the first, so either says the watchdog did it.
wd_line=$(grep -m 1 -e 'Watchdog timeout' -e "Failed with result 'watchdog'" <<<"$journal")
[[ $wd == 4s && $wd_status -eq 0 && -n $wd_line ]]
r=$?
check "the watchdog restarts a stopped shoald (WatchdogSec=$wd, NRestarts $nr_before -> $(prop NRestarts), MainPID $pid_before -> $(prop MainPID) after ${wd_secs}s)" $r \
  "journal since SIGSTOP:
$journal"
[[ -n $wd_line ]] && say "journal: ${wd_line#*]: }"
tasks_after=$(running_tasks web_httpd)
pids_after=$(container_pids)
[[ $wd_status -eq 0 && -n $tasks_before && $tasks_before == "$tasks_after" &&
  $pids_before == "$pids_after" ]] && curl_ok
r=$?
check "the tasks keep running across the watchdog restart (same task ids and container PIDs)" $r \
  "tasks before: $tasks_before
tasks after:  $tasks_after
pids before: $pids_before
pids after:  $pids_after"
rm -f "$ROOT/etc/systemd/system/shoald.service.d/wd.conf"
gx systemctl daemon-reload >/dev/null 2>&1
gx systemctl reset-failed shoald >/dev/null 2>&1
gx -t 180 systemctl restart shoald >/dev/null 2>&1
wait_for 30 active

# Structured journal fields: shoald's own entries (tracing-journald) and the task output the log
# driver forwards.
gx journalctl -u shoald -o json --no-pager >"$WORK/shoald.json" 2>/dev/null
out=$(python3 - "$WORK/shoald.json" <<'EOF'
import json, sys
standard = {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "SYSLOG_FACILITY", "SYSLOG_PID",
            "SYSLOG_TIMESTAMP", "SYSLOG_RAW"}
entries, extra = 0, set()
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("_COMM") != "shoald" or e.get("_TRANSPORT") != "journal":
        continue
    entries += 1
    extra |= {k for k in e if not k.startswith("_") and k not in standard}
print(f"{entries} native entries from shoald; fields: {' '.join(sorted(extra))}")
sys.exit(0 if entries and ({"CODE_FILE", "CODE_LINE", "TARGET"} & extra) else 1)
EOF
)
r=$?
check "journalctl -u shoald -o json: shoald logs natively with structured fields ($out)" $r \
  "$(tail -n 3 "$WORK/shoald.json")"

gx journalctl SHOAL_SERVICE=web_httpd -o json --no-pager >"$WORK/tasks.json" 2>/dev/null
out=$(python3 - "$WORK/tasks.json" <<'EOF'
import json, sys
names, n = set(), 0
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("MESSAGE") == "serving-httpd-on-80" and e.get("CONTAINER_NAME", "").startswith("web_httpd."):
        n += 1
        names.add(e["CONTAINER_NAME"])
print(f"{n} lines from {' '.join(sorted(names))}")
sys.exit(0 if len(names) >= 2 else 1)
EOF
)
r=$?
check "journalctl SHOAL_SERVICE=web_httpd has the tasks' output with CONTAINER_NAME ($out)" $r \
  "$(tail -n 3 "$WORK/tasks.json")"

# A secret from a file outside the stacks directory (as agenix or sops-nix give it), with shoald
# logging at debug level: the task reads it, and its value is nowhere in the journal (any unit,
# any field), nor in what `secret inspect`, `secret ls` and `service inspect` print.
VAULT=/etc/shoal/stacks/vault.toml
secret_value="systemd-secret-$$-$RANDOM$RANDOM$RANDOM"
secret_sum=$(printf '%s' "$secret_value" | sha256sum | cut -d' ' -f1)
mkdir -p "$ROOT/etc/systemd/system/shoald.service.d" "$ROOT/var/lib/keys"
printf '# written by tests/systemd/run.sh\n[Service]\nEnvironment=SHOAL_LOG=debug\n' \
  >"$ROOT/etc/systemd/system/shoald.service.d/debug.conf"
(umask 077 && printf '%s' "$secret_value" >"$ROOT/var/lib/keys/db_password")
cat >"$ROOT$VAULT" <<'EOF'
# written by tests/systemd/run.sh
[secrets.db_password]
file = "/var/lib/keys/db_password"

[services.app]
image = "oci-archive:/var/lib/shoal/images/busybox.tar"
command = ["sh", "-c", "echo sum=$(sha256sum < /run/secrets/db_password | cut -d' ' -f1); trap 'exit 0' TERM; while :; do sleep 1; done"]
secrets = ["db_password"]
stop_grace_period = "2s"
EOF
gx systemctl daemon-reload >/dev/null 2>&1
cursor=$(gx journalctl -n 0 --show-cursor --no-pager 2>/dev/null | sed -n 's/^-- cursor: //p')
gx -t 180 systemctl restart shoald >/dev/null 2>&1
wait_for 30 active
out=$(gx -t 120 systemctl reload shoald 2>&1)
reload_status=$?
secret_read() {
  count_is 1 vault_app &&
    gx journalctl SHOAL_SERVICE=vault_app --no-pager -o cat 2>/dev/null | grep -qx "sum=$secret_sum"
}
[[ $reload_status -eq 0 ]] && wait_for 90 secret_read
read_status=$?
gx journalctl --no-pager -o json >"$WORK/journal-all.json" 2>/dev/null
# tracing-journald writes tracing's DEBUG at journald priority 6 (info), its INFO at 5 (notice).
debug_lines=$(gx journalctl --no-pager -u shoald -p info..info ${cursor:+--after-cursor="$cursor"} 2>/dev/null |
  grep -c .)
shown=$(
  gx shoal secret inspect vault_db_password 2>&1
  gx shoal secret ls --format json 2>&1
  gx shoal service inspect vault_app 2>&1
  gx shoal service inspect vault_app --format json 2>&1
)
leaks=$(grep -c -F -e "$secret_value" "$WORK/journal-all.json")
shown_leaks=$(grep -c -F -e "$secret_value" <<<"$shown")
[[ $reload_status -eq 0 && $read_status -eq 0 && $debug_lines -gt 10 && $leaks -eq 0 &&
  $shown_leaks -eq 0 ]] && grep -q vault_db_password <<<"$shown"
r=$?
check "a file secret reaches its task (sha256 in the task's journal), and at SHOAL_LOG=debug ($debug_lines debug lines) its value is in none of the journal's $(wc -l <"$WORK/journal-all.json") entries nor in secret/service inspect" $r \
  "reload: $reload_status $out
entries holding the value: $leaks; CLI lines holding it: $shown_leaks
$(gx journalctl SHOAL_SERVICE=vault_app --no-pager -o cat 2>&1 | tail -n 5)
$(gx shoal service ps vault_app 2>&1)
$shown"
rm -f "$ROOT/etc/systemd/system/shoald.service.d/debug.conf"
gx systemctl daemon-reload >/dev/null 2>&1

# Reload: a removed stack file removes its services and tasks.
rm -f "$ROOT$VAULT"
remember_nested
rm -f "$ROOT$STACK"
out=$(gx -t 120 systemctl reload shoald 2>&1)
reload_status=$?
gone() { [[ -z $(gx shoal service ls -q 2>/dev/null) ]] && no_containers; }
[[ $reload_status -eq 0 ]] && wait_for 90 gone
applied=$?
[[ $reload_status -eq 0 && $applied -eq 0 ]] && curl_fails && active
r=$?
check "systemctl reload applies a removed stack file (no services, no containers, port closed)" $r \
  "reload: $reload_status $out
$(gx shoal service ls 2>&1)
$(gx ctr -n shoal tasks list 2>&1)"

exit 0
