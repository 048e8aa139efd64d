# Shared by the real-systemd suites (tests/systemd/run.sh, tests/systemd/cluster.sh): the cached
# Debian rootfs, the private containerd, and the TAP-like output. Sourced, never run.
#
# The caller sets (before calling the functions that use them):
#   CACHE  the cached debootstrap rootfs     WORK  this run's work directory
#   PASSED FAILED  the counters ok/not_ok/check update

SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,containerd,runc,iproute2,nftables,containernetworking-plugins,curl,ca-certificates
# Written into the cached rootfs once debootstrap succeeded; a different value means rebuild.
STAMP_VALUE="suite=$SUITE variant=minbase include=$PACKAGES"
STAMP_FILE=.shoal-test-rootfs
GUEST_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { printf '# %s\n' "$*"; }
# indent FILE-OR-STDIN: prints text as diagnostics.
indent() { sed 's/^/#   /'; }
ok() {
  PASSED=$((PASSED + 1))
  printf 'ok - %s\n' "$*"
}
not_ok() {
  FAILED=$((FAILED + 1))
  printf 'not ok - %s\n' "$*"
}
# check NAME CONDITION-STATUS [DETAIL]: ok when the status is 0.
check() {
  local name=$1 status=$2 detail=${3:-}
  if [[ $status -eq 0 ]]; then
    ok "$name"
  else
    not_ok "$name"
    if [[ -n $detail ]]; then printf '%s\n' "$detail" | indent; fi
  fi
}

# wait_for SECONDS CMD...: retries CMD every second until it succeeds.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  while ((SECONDS < deadline)); do
    "$@" && return 0
    sleep 1
  done
  "$@"
}

# ---------------------------------------------------------------------------------------------
# The Debian rootfs (cached)

# The Debian archive apt uses on this machine (first bookworm entry with main that is not the
# security archive), so a local mirror or proxy is honoured.
debian_mirror() {
  if [[ -n ${SHOAL_DEBIAN_MIRROR:-} ]]; then
    echo "$SHOAL_DEBIAN_MIRROR"
    return
  fi
  python3 - "$SUITE" <<'EOF'
import glob, re, sys
suite = sys.argv[1]
codenames = {suite, "bullseye", "bookworm", "trixie", "forky", "sid", "stable", "testing", "unstable"}
entries = []  # (uri, suites, components)
files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
for path in files:
    try:
        lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        continue
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line[4:])
        parts = line.split()
        if len(parts) >= 3:
            entries.append((parts[0], [parts[1]], parts[2:]))
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except OSError:
        continue
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.split()
        if "deb" not in fields.get("types", []) or fields.get("enabled", ["yes"])[0] == "no":
            continue
        for uri in fields.get("uris", []):
            entries.append((uri, fields.get("suites", []), fields.get("components", [])))
def usable(e, wanted):
    uri, suites, comps = e
    return "security" not in uri and "main" in comps and any(s in wanted for s in suites)
for wanted in ({suite}, codenames):
    for e in entries:
        if usable(e, wanted):
            print(e[0].rstrip("/"))
            sys.exit(0)
print("http://deb.debian.org/debian")
EOF
}

rootfs_ready() { [[ -f $CACHE/$STAMP_FILE && $(cat "$CACHE/$STAMP_FILE") == "$STAMP_VALUE" ]]; }

ensure_rootfs() {
  if rootfs_ready; then
    say "using the cached rootfs $CACHE"
    return 0
  fi
  mkdir -p "$(dirname "$CACHE")" || return 1
  exec 9>"$CACHE.lock"
  if ! flock -w 1200 9; then
    say "another run holds $CACHE.lock"
    return 1
  fi
  if rootfs_ready; then
    exec 9>&-
    return 0
  fi
  local mirror proxy="" tmp="$CACHE.new.$$" t0=$SECONDS
  mirror=$(debian_mirror)
  eval "$(apt-config shell proxy Acquire::http::Proxy 2>/dev/null)"
  say "building the rootfs with debootstrap from $mirror${proxy:+ through $proxy} (about a minute)"
  rm -rf "$tmp"
  if ! http_proxy=${proxy:-${http_proxy:-}} timeout 1200 debootstrap --variant=minbase \
    --include="$PACKAGES" "$SUITE" "$tmp" "$mirror" >"$WORK/debootstrap.log" 2>&1 </dev/null; then
    say "debootstrap failed; last lines of its log:"
    tail -n 30 "$WORK/debootstrap.log" | indent
    tail -n 30 "$tmp/debootstrap/debootstrap.log" 2>/dev/null | indent
    rm -rf "$tmp"
    exec 9>&-
    return 1
  fi
  # Package files are not needed at run time; each run regenerates its machine id.
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*_Packages
  : >"$tmp/etc/machine-id"
  echo "$STAMP_VALUE" >"$tmp/$STAMP_FILE"
  rm -rf "$CACHE"
  mv "$tmp" "$CACHE"
  exec 9>&-
  say "rootfs built in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------------------------------------
# A private containerd on the host

# write_containerd_config DIR SOCK: a containerd config with its root, state and sockets in DIR.
write_containerd_config() {
  local dir=$1 sock=$2
  cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$dir/containerd-root"
state = "$dir/containerd-state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd-opt"
EOF
}
