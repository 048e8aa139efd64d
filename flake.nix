{
  description = "shoal: a Docker-Swarm-like container orchestrator for systemd and NixOS";

  # Rust >= 1.89 (edition 2024) is needed: nixos-unstable has it.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: {
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.shoal;
        shoal = pkgs.callPackage ./nixos-module/package.nix { };
      });

      overlays.default = final: prev: {
        shoal = final.callPackage ./nixos-module/package.nix { };
      };

      # `services.shoal.package` defaults to `pkgs.shoal` when the overlay is
      # applied, and otherwise to this flake's own build (packages.<system>),
      # whose nixpkgs has a new enough rustc (the module alone falls back to
      # building this tree with the host's nixpkgs).
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nixos-module ];
          services.shoal.package = lib.mkDefault (
            pkgs.shoal or self.packages.${pkgs.stdenv.hostPlatform.system}.default
              or (pkgs.callPackage ./nixos-module/package.nix { })
          );
        };
      nixosModules.shoal = self.nixosModules.default;

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.shoal ];
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            protobuf
            pkg-config
            containerd
            runc
            cni-plugins
            dbus
            skopeo
            iproute2
            nftables
            python3
          ];
        };
      });

      # VM tests (need KVM: `nix flake check`, or one at a time with
      # `nix build .#checks.x86_64-linux.cluster`; add `.driverInteractive`
      # for a Python shell driving the VMs) and the module evaluation check.
      checks = forAllSystems (
        pkgs:
        let
          vmTest = file: pkgs.testers.runNixOSTest (import file { inherit pkgs; });
        in
        {
          single-node = vmTest ./tests/nixos/single-node.nix;
          cluster = vmTest ./tests/nixos/cluster.nix;
          reload = vmTest ./tests/nixos/reload.nix;
          failover = vmTest ./tests/nixos/failover.nix;
          module-eval = import ./tests/nixos/module-eval.nix {
            inherit pkgs;
            inherit (lib) nixosSystem;
          };
        }
      );

      # VM tests of features that have not landed yet, kept out of `checks`
      # so that `nix flake check` stays meaningful: routing-mesh needs cluster
      # networking (overlay, routing mesh across nodes). Build one with
      # `nix build .#pendingChecks.routing-mesh`; it moves into `checks` with
      # the networking work. See docs/nixos.md.
      legacyPackages = forAllSystems (pkgs: {
        pendingChecks = {
          routing-mesh = pkgs.testers.runNixOSTest (import ./tests/nixos/routing-mesh.nix { inherit pkgs; });
        };
      });
    };
}
