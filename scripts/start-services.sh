#!/usr/bin/env bash
# Makes sure the services shoald needs are up: containerd on /run/containerd/containerd.sock and
# the D-Bus system bus on /run/dbus/system_bus_socket, with shoal's D-Bus policy installed.
#
# usage: eval "$(scripts/start-services.sh)"     or     source scripts/start-services.sh
#
# Where systemd is PID 1 it asks systemd (systemctl start containerd dbus). Elsewhere (containers,
# CI machines without an init system) it starts what does not answer yet, in the background:
#   containerd    log /var/log/shoal-dev/containerd.log, pid /run/shoal-dev/containerd.pid
#   dbus-daemon   --system --fork, pid /run/shoal-dev/dbus.pid
# A service that already answers is left alone. scripts/stop-services.sh stops only what this
# script started. Progress goes to stderr; stdout carries only `export` lines for eval.
# Run as root.

_shoal_start_services() {
  local repo containerd_sock=/run/containerd/containerd.sock
  local bus_sock=/run/dbus/system_bus_socket bus_addr=unix:path=/run/dbus/system_bus_socket
  local log_dir=/var/log/shoal-dev run_dir=/run/shoal-dev
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || return 1

  _say() { printf 'start-services: %s\n' "$*" >&2; }
  # _wait SECONDS COMMAND...: retries COMMAND every 0.2 s
  _wait() {
    local tries=$(($1 * 5)); shift
    while ((tries-- > 0)); do
      "$@" >/dev/null 2>&1 && return 0
      sleep 0.2
    done
    return 1
  }
  # ctr waits 10 s for a socket that does not exist; check for the socket first.
  _containerd_up() {
    [[ -S $containerd_sock ]] && ctr --connect-timeout 5s --address "$containerd_sock" version
  }
  _bus_up() {
    DBUS_SYSTEM_BUS_ADDRESS=$bus_addr dbus-send --system --print-reply \
      --dest=org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus.GetId
  }

  if [[ $(id -u) -ne 0 ]]; then
    _say "run as root (it starts containerd and the system bus)"
    return 1
  fi
  local tool
  for tool in containerd ctr dbus-daemon dbus-send dbus-uuidgen; do
    if ! command -v "$tool" >/dev/null; then
      _say "$tool is missing; run scripts/install-deps.sh first"
      return 1
    fi
  done

  # The policy lets shoald own org.shoal.Shoal1; it must be in place before the bus (re)reads
  # its configuration.
  local policy=$repo/systemd/org.shoal.Shoal1.conf policy_changed=0
  local policy_dst=/usr/share/dbus-1/system.d/org.shoal.Shoal1.conf
  if [[ -f $policy ]]; then
    if ! cmp -s "$policy" "$policy_dst"; then
      install -D -m 0644 "$policy" "$policy_dst" || return 1
      policy_changed=1
      _say "installed D-Bus policy $policy_dst"
    fi
  else
    _say "warning: $policy not found; shoald will not be allowed to own org.shoal.Shoal1"
  fi

  if [[ -d /run/systemd/system ]]; then
    # systemd is PID 1: it owns these services.
    if ! _containerd_up >/dev/null 2>&1 || ! _bus_up >/dev/null 2>&1; then
      _say "systemctl start containerd.service dbus.service"
      systemctl start containerd.service dbus.service || return 1
    fi
  else
    mkdir -p "$log_dir" "$run_dir" || return 1
    if _containerd_up >/dev/null 2>&1; then
      _say "containerd answers on $containerd_sock"
    else
      _say "starting containerd (log $log_dir/containerd.log)"
      # setsid: the daemon must not die with this shell or get its terminal's signals.
      # shellcheck disable=SC2016 # $$, $1, $2 belong to the inner shell
      setsid bash -c 'echo $$ >"$1"; exec containerd >>"$2" 2>&1' _ \
        "$run_dir/containerd.pid" "$log_dir/containerd.log" </dev/null >/dev/null 2>&1 &
      if ! _wait 60 _containerd_up; then
        _say "containerd did not answer on $containerd_sock within 60s; see $log_dir/containerd.log"
        return 1
      fi
    fi

    if _bus_up >/dev/null 2>&1; then
      _say "system bus answers on $bus_sock"
      if [[ $policy_changed -eq 1 ]]; then
        DBUS_SYSTEM_BUS_ADDRESS=$bus_addr dbus-send --system --type=method_call \
          --dest=org.freedesktop.DBus / org.freedesktop.DBus.ReloadConfig >/dev/null 2>&1 ||
          { [[ -s /run/dbus/pid ]] && kill -HUP "$(cat /run/dbus/pid)"; } ||
          _say "warning: could not make the system bus reload its configuration"
      fi
    else
      _say "starting the system bus (dbus-daemon --system)"
      mkdir -p /run/dbus || return 1
      dbus-uuidgen --ensure || return 1
      # A bus that died leaves its pid file and socket behind; dbus-daemon refuses to start then.
      local old
      old=$(cat /run/dbus/pid 2>/dev/null)
      if [[ -n $old && ! -r /proc/$old/stat ]] ||
        [[ -n $old && $(sed -n 's/^[0-9]* (.*) \(.\) .*/\1/p' "/proc/$old/stat") == Z ]]; then
        rm -f /run/dbus/pid
      fi
      rm -f "$bus_sock"
      dbus-daemon --system --fork </dev/null >/dev/null || return 1
      if ! _wait 20 _bus_up; then
        _say "the system bus did not answer on $bus_sock within 20s"
        return 1
      fi
      cp /run/dbus/pid "$run_dir/dbus.pid"
    fi
  fi

  # When systemd runs the bus, reload it through the bus itself (dbus-broker needs that too).
  if [[ -d /run/systemd/system && $policy_changed -eq 1 ]]; then
    DBUS_SYSTEM_BUS_ADDRESS=$bus_addr dbus-send --system --type=method_call \
      --dest=org.freedesktop.DBus / org.freedesktop.DBus.ReloadConfig >/dev/null 2>&1 ||
      systemctl reload dbus.service || _say "warning: could not reload the system bus configuration"
  fi

  printf 'export DBUS_SYSTEM_BUS_ADDRESS=%s\n' "$bus_addr"
  printf 'export CONTAINERD_ADDRESS=%s\n' "$containerd_sock"
}

# Sourced: run in the caller's shell without changing its options, and export the variables.
# Executed: print the export lines for eval.
if (return 0 2>/dev/null); then
  _shoal_rc=0
  if _shoal_exports=$(_shoal_start_services); then
    eval "$_shoal_exports"
  else
    _shoal_rc=1
  fi
  unset _shoal_exports
  unset -f _shoal_start_services _say _wait _containerd_up _bus_up
  return "$_shoal_rc"
else
  set -uo pipefail
  _shoal_start_services
fi
