# The shoal package: the `shoald` daemon, the `shoal` CLI and the small
# `shoal-log-driver` (containerd's log driver for shoal's tasks; without it
# shoald serves as its own log driver, at about five times the memory per
# task), built from this repository. Used by the flake (packages.<system>.default, overlays.default) and
# as the fallback default of `services.shoal.package`.
{
  lib,
  rustPlatform,
  protobuf,
  pkg-config,
}:
let
  root = ../.;
  cargoToml = lib.importTOML ../Cargo.toml;
  fs = lib.fileset;

  # Everything Cargo needs, and nothing that only concerns Nix: editing the
  # module, the flake or a VM test must not rebuild the binaries.
  src = fs.toSource {
    inherit root;
    fileset = fs.difference root (
      fs.unions [
        (fs.maybeMissing ../flake.nix)
        (fs.maybeMissing ../flake.lock)
        (fs.maybeMissing ../target)
        (fs.maybeMissing ../result)
        (fs.maybeMissing ../.ci)
        (fs.maybeMissing ../.git)
        ../nixos-module
        (fs.maybeMissing ../tests/nixos)
        (fs.maybeMissing ../tests/nix-eval)
      ]
    );
  };
in
rustPlatform.buildRustPackage {
  pname = "shoal";
  version = cargoToml.workspace.package.version;
  inherit src;

  cargoLock.lockFile = ../Cargo.lock;

  # containerd-client generates its gRPC code with protoc at build time.
  nativeBuildInputs = [
    protobuf
    pkg-config
  ];

  # shoal-log-driver is a [[bin]] of the shoal-containerd crate; shoald looks
  # for it next to its own binary, in $out/bin.
  cargoBuildFlags = [
    "--package"
    "shoald"
    "--package"
    "shoal"
    "--package"
    "shoal-containerd"
  ];

  # The test suite drives a real containerd, runc and dbus-daemon and creates
  # network namespaces: none of that exists in the build sandbox. The NixOS VM
  # tests (checks.<system>.*) exercise the built binaries instead.
  doCheck = false;

  postInstall = ''
    test -x $out/bin/shoal-log-driver
    install -Dm644 systemd/shoald.service $out/lib/systemd/system/shoald.service
    sed -i "s|/usr/bin/|$out/bin/|g; s|/usr/local/bin/|$out/bin/|g; s|/usr/local/share/|$out/share/|g" \
      $out/lib/systemd/system/shoald.service
    install -Dm644 systemd/org.shoal.Shoal1.conf \
      $out/share/dbus-1/system.d/org.shoal.Shoal1.conf
    install -Dm644 systemd/shoal.tmpfiles $out/lib/tmpfiles.d/shoal.conf
    # The unit's Documentation= points here.
    install -Dm644 README.md $out/share/doc/shoal/README.md
  '';

  meta = {
    description = "Docker-Swarm-like container orchestrator for systemd and NixOS hosts";
    license = lib.licenses.asl20;
    mainProgram = "shoal";
    platforms = lib.platforms.linux;
  };
}
