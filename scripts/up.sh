#!/usr/bin/env bash
# Brings a fresh Debian 12 machine to a running single-node shoal cluster with the example stack
# (configs/stacks/demo.toml: busybox httpd published on port 8080). Run as root from the
# repository; running it again is fine (it rebuilds, reinstalls and restarts what changed).
#
# usage: scripts/up.sh [--debug] [--no-build]
#   --debug      build and install the dev profile instead of --release (faster to build)
#   --no-build   install the binaries already in target/ instead of building them
#
# Steps: scripts/install-deps.sh; cargo build; install shoald and shoal to /usr/local/bin, the
# unit, tmpfiles and D-Bus policy; build the busybox image to /var/lib/shoal/images/busybox.tar;
# copy the demo stack to /etc/shoal/stacks/; start shoald (systemctl where systemd is PID 1, else
# in the background with its log in /var/log/shoald.log and pid in /run/shoald.pid); reload;
# wait until http://localhost:8080 answers.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
PROFILE=release
BUILD=1
for arg in "$@"; do
  case "$arg" in
    --debug) PROFILE=debug ;;
    --no-build) BUILD=0 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "up: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

URL=${SHOAL_UP_URL:-http://localhost:8080/}
BIN=/usr/local/bin
UNIT_DIR=/usr/local/lib/systemd/system
TMPFILES_DIR=/usr/local/lib/tmpfiles.d
POLICY_DIR=/usr/share/dbus-1/system.d
DOC_DIR=/usr/local/share/doc/shoal
IMAGE=/var/lib/shoal/images/busybox.tar
STACK_SRC=configs/stacks/demo.toml
LOG=/var/log/shoald.log
PIDFILE=/run/shoald.pid

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'up: %s\n' "$*" >&2; exit 1; }
have_systemd() { [[ -d /run/systemd/system ]]; }
# alive PID: the process exists and is not a zombie (where PID 1 does not reap, e.g. a container
# whose init is a shell, a stopped daemon stays a zombie).
alive() { [[ -r /proc/$1/stat && $(sed -n 's/^[0-9]* (.*) \(.\) .*/\1/p' "/proc/$1/stat") != Z ]]; }

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages, binaries and a system service)"

step "installing dependencies"
if [[ $BUILD -eq 1 ]]; then
  bash scripts/install-deps.sh </dev/null
else
  bash scripts/install-deps.sh --no-rust </dev/null
fi
if [[ -x $HOME/.cargo/bin/cargo ]]; then PATH=$HOME/.cargo/bin:$PATH; fi

if [[ $BUILD -eq 1 ]]; then
  step "building shoald and shoal ($PROFILE)"
  if [[ $PROFILE == release ]]; then
    cargo build --release -p shoald -p shoal -p shoal-containerd --bin shoald --bin shoal --bin shoal-log-driver </dev/null
  else
    cargo build -p shoald -p shoal -p shoal-containerd --bin shoald --bin shoal --bin shoal-log-driver </dev/null
  fi
fi
target_dir=${CARGO_TARGET_DIR:-$REPO/target}
for b in shoald shoal; do
  [[ -x $target_dir/$PROFILE/$b ]] ||
    die "$target_dir/$PROFILE/$b is missing; build it with: cargo build $([[ $PROFILE == release ]] && echo --release) -p shoald -p shoal"
done

step "installing to $BIN and system directories"
changed=0
# shoal-log-driver is optional (shoald falls back to its own log-driver mode), but smaller.
for b in shoald shoal shoal-log-driver; do
  [[ -x $target_dir/$PROFILE/$b ]] || continue
  if ! cmp -s "$target_dir/$PROFILE/$b" "$BIN/$b"; then
    # install(1) replaces the file instead of writing into it, so a running shoald is unharmed.
    install -m 0755 "$target_dir/$PROFILE/$b" "$BIN/$b"
    echo "installed $BIN/$b"
    if [[ $b == shoald ]]; then changed=1; fi
  fi
done
install -D -m 0644 systemd/shoald.service "$UNIT_DIR/shoald.service"
install -D -m 0644 systemd/shoal.tmpfiles "$TMPFILES_DIR/shoal.conf"
if [[ -f systemd/org.shoal.Shoal1.conf ]]; then
  install -D -m 0644 systemd/org.shoal.Shoal1.conf "$POLICY_DIR/org.shoal.Shoal1.conf"
else
  echo "warning: systemd/org.shoal.Shoal1.conf is missing; shoald cannot own its bus name" >&2
fi
for doc in README.md ARCHITECTURE.md; do
  if [[ -f $doc ]]; then install -D -m 0644 "$doc" "$DOC_DIR/$doc"; fi
done
# Members of the group "shoal" may change the cluster through the D-Bus API (see the policy).
if ! getent group shoal >/dev/null; then
  groupadd --system shoal
  echo "created the system group shoal"
fi
if command -v systemd-tmpfiles >/dev/null; then
  systemd-tmpfiles --create "$TMPFILES_DIR/shoal.conf"
else
  install -d -m 0755 /etc/shoal /etc/shoal/stacks /run/shoal
  install -d -m 0700 /var/lib/shoal
  install -d -m 0755 /var/lib/shoal/images
fi

step "building the busybox image $IMAGE"
python3 scripts/mkimage.py --format oci --name docker.io/library/busybox:latest -o "$IMAGE"

step "installing the example stack"
if [[ -f $STACK_SRC ]]; then
  install -m 0644 "$STACK_SRC" /etc/shoal/stacks/demo.toml
  echo "/etc/shoal/stacks/demo.toml"
else
  echo "warning: $STACK_SRC is missing; no example stack is deployed" >&2
fi

step "starting containerd, the system bus and shoald"
exports=$(bash scripts/start-services.sh </dev/null) || die "could not start containerd and the system bus"
eval "$exports"

# wait_for SECONDS COMMAND...: retries every 0.5 s
wait_for() {
  local tries=$(($1 * 2)); shift
  while ((tries-- > 0)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  return 1
}

if have_systemd; then
  systemctl daemon-reload
  systemctl enable shoald.service
  if systemctl is-active --quiet shoald.service; then
    if [[ $changed -eq 1 ]]; then
      echo "restarting shoald (new binary)"
      systemctl restart shoald.service
    else
      systemctl reload shoald.service
    fi
  else
    systemctl start shoald.service
  fi
  logs_hint="journalctl -u shoald"
  reload_hint="systemctl reload shoald"
else
  running=0
  if [[ -s $PIDFILE ]] && alive "$(cat "$PIDFILE")"; then
    running=1
    if [[ $changed -eq 1 ]]; then
      echo "restarting shoald (new binary); its tasks keep running"
      pid=$(cat "$PIDFILE")
      kill "$pid"
      wait_for 60 eval "! alive $pid" || die "shoald (pid $pid) did not stop within 60s"
      running=0
    fi
  fi
  if [[ $running -eq 0 ]]; then
    mkdir -p "$(dirname "$LOG")"
    # shellcheck disable=SC2016 # $$ and $1 belong to the inner shell
    setsid bash -c 'echo $$ >"$1"; exec "$2"' _ "$PIDFILE" "$BIN/shoald" \
      </dev/null >>"$LOG" 2>&1 &
    echo "shoald started (pid file $PIDFILE, log $LOG)"
  fi
  logs_hint="tail -f $LOG"
  reload_hint="shoal reload"
fi

if ! wait_for 90 "$BIN/shoal" info; then
  echo "up: shoald does not answer 'shoal info' after 90s; last log lines:" >&2
  if have_systemd; then journalctl -u shoald -n 30 --no-pager >&2 || true; else tail -n 30 "$LOG" >&2 || true; fi
  exit 1
fi
if ! have_systemd; then
  "$BIN/shoal" reload
fi

step "waiting for $URL (up to 120s)"
if ! wait_for 120 curl -fsS --max-time 5 "$URL"; then
  echo "up: $URL did not answer within 120s" >&2
  "$BIN/shoal" service ls >&2 || true
  if have_systemd; then journalctl -u shoald -n 30 --no-pager >&2 || true; else tail -n 30 "$LOG" >&2 || true; fi
  exit 1
fi
curl -fsS --max-time 5 "$URL"
# The front end asks the api by name over the stack's overlay network.
if wait_for 60 curl -fsS --max-time 5 "${URL%/}/cgi-bin/api"; then
  curl -fsS --max-time 5 "${URL%/}/cgi-bin/api"
else
  echo "up: ${URL%/}/cgi-bin/api did not answer within 60s (the api service)" >&2
fi

service=$(sed -n 's/^\[services\.\([A-Za-z0-9_-]*\)\]$/\1/p' /etc/shoal/stacks/demo.toml 2>/dev/null | head -1)
service=demo_${service:-web}
printf '\nshoal is up: a single-node cluster with the stack "demo" answering on %s\n\nNext steps:\n' "$URL"
printf '  %-36s %s\n' \
  "shoal info" "this node and the cluster" \
  "shoal service ls" "services and their replicas" \
  "shoal service ps $service" "the tasks of one service" \
  "shoal stack ls" "stacks and their status" \
  "$reload_hint" "apply edits of /etc/shoal/stacks/*.toml (replicas = 3, ...)" \
  "$logs_hint" "the daemon's log" \
  "bash scripts/test.sh" "run the test suite"
