#!/usr/bin/env bash
# Stops what scripts/up.sh and scripts/start-services.sh started on a machine without systemd as
# PID 1: shoald (/run/shoald.pid), then containerd and the system bus if start-services.sh
# started them (/run/shoal-dev/*.pid). Services it did not start are left alone. Where systemd
# is PID 1 it runs `systemctl stop shoald.service` and leaves containerd and dbus to systemd.
#
# usage: scripts/stop-services.sh [--tasks]
#   --tasks   also kill and delete every task in containerd namespace "shoal" (by default tasks
#             keep running: containers outlive shoald, and even containerd, under their shims)
set -euo pipefail

KILL_TASKS=0
for arg in "$@"; do
  case "$arg" in
    --tasks) KILL_TASKS=1 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "stop-services: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf 'stop-services: %s\n' "$*" >&2; }
# alive PID: the process exists and is not a zombie (where PID 1 does not reap, e.g. a container
# whose init is a shell, a stopped daemon stays a zombie).
alive() { [[ -r /proc/$1/stat && $(sed -n 's/^[0-9]* (.*) \(.\) .*/\1/p' "/proc/$1/stat") != Z ]]; }

# stop_pid NAME PIDFILE: SIGTERM, wait up to 30 s, then SIGKILL.
stop_pid() {
  local name=$1 file=$2 pid i
  [[ -s $file ]] || return 0
  pid=$(cat "$file")
  if alive "$pid"; then
    say "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
      alive "$pid" || break
      sleep 0.2
    done
    if alive "$pid"; then
      say "$name did not stop within 30s; killing it"
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$file"
}

if [[ $(id -u) -ne 0 ]]; then
  say "run as root"
  exit 1
fi

if [[ -d /run/systemd/system ]]; then
  systemctl stop shoald.service || true
  if [[ $KILL_TASKS -eq 1 ]]; then
    say "--tasks is not applied where systemd runs containerd; remove services with shoal service rm"
  fi
  exit 0
fi

stop_pid shoald /run/shoald.pid

if [[ $KILL_TASKS -eq 1 && -S /run/containerd/containerd.sock ]] && ctr --connect-timeout 5s version >/dev/null 2>&1; then
  for t in $(ctr -n shoal tasks ls -q); do
    say "killing task $t"
    ctr -n shoal tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
  done
  for t in $(ctr -n shoal tasks ls -q); do
    ctr -n shoal tasks delete -f "$t" >/dev/null 2>&1 || true
  done
  for c in $(ctr -n shoal containers ls -q); do
    ctr -n shoal containers delete "$c" >/dev/null 2>&1 || true
  done
fi
stop_pid containerd /run/shoal-dev/containerd.pid
stop_pid dbus-daemon /run/shoal-dev/dbus.pid
