# checks.<system>.module-eval: the module evaluated as part of real NixOS
# systems (the real option declarations, systemd unit generation and
# assertions), plus tests/nix-eval/eval.nix run with the flake's nixpkgs lib.
# Pure evaluation: the resulting derivation only records what was checked, so
# the check does not build shoal or a system.
{
  pkgs,
  nixosSystem,
}:
let
  inherit (pkgs) lib;

  standIns = import ../nix-eval/eval.nix { importedLib = lib; };
  standInFailures = lib.filter (r: !r.ok) standIns.results;

  system =
    module:
    nixosSystem {
      modules = [
        ../../nixos-module
        module
        {
          nixpkgs.hostPlatform = pkgs.stdenv.hostPlatform.system;
          boot.loader.grub.enable = false;
          fileSystems."/" = {
            device = "/dev/vda";
            fsType = "ext4";
          };
          system.stateVersion = lib.trivial.release;
        }
      ];
    };

  tokenFile = "/run/keys/shoal-token";
  stack = {
    services.web = {
      image = "docker.io/library/nginx:1.27";
      replicas = 2;
      ports = [ "8080:80" ];
    };
  };

  hosts = {
    single = system { services.shoal.enable = true; };
    manager1 = system {
      services.shoal = {
        enable = true;
        inherit tokenFile;
        advertiseAddress = "192.168.1.1:4600";
        openFirewall = true;
        stacks.shop.settings = stack;
      };
    };
    manager2 = system {
      services.shoal = {
        enable = true;
        join = [ "192.168.1.1:4600" ];
        inherit tokenFile;
        openFirewall = true;
        stacks.shop.settings = stack;
      };
    };
    worker = system {
      services.shoal = {
        enable = true;
        role = "worker";
        join = [ "192.168.1.1:4600" ];
        inherit tokenFile;
        openFirewall = true;
      };
    };
    stringSource = system {
      services.shoal = {
        enable = true;
        stacks.shop.source = "/srv/shoal/shop.toml";
      };
    };
    workerWithoutJoin = system {
      services.shoal = {
        enable = true;
        role = "worker";
        inherit tokenFile;
      };
    };
  };

  failedAssertions =
    host: map (a: a.message) (lib.filter (a: !a.assertion) hosts.${host}.config.assertions);
  unitText = host: hosts.${host}.config.systemd.units."shoald.service".text;
  hasLine = host: line: lib.elem line (lib.splitString "\n" (unitText host));

  checks = {
    "single: unit type, reload and watchdog" =
      hasLine "single" "Type=notify"
      && lib.any (lib.hasPrefix "ExecReload=") (lib.splitString "\n" (unitText "single"))
      && lib.hasInfix "/bin/shoal reload" (unitText "single")
      && hasLine "single" "WatchdogSec=30s"
      && hasLine "single" "StateDirectory=shoal"
      && hasLine "single" "KillMode=process";
    "single: wants containerd, does not require it" =
      lib.hasInfix "containerd.service" (unitText "single")
      && !(lib.hasInfix "Requires=containerd.service" (unitText "single"));
    "single: containerd enabled" = hosts.single.config.virtualisation.containerd.enable;
    "single: no failed assertion" = failedAssertions "single" == [ ];
    "manager1: stack is a reload trigger" = lib.hasInfix "X-Reload-Triggers=" (unitText "manager1");
    # NixOS omits an empty X-Reload-Triggers; the module keeps one so that
    # removing the last stack still reloads.
    "single: a reload trigger even without stacks" = lib.hasInfix "X-Reload-Triggers=" (unitText "single");
    "single: the cluster file is checked at build time" =
      lib.hasInfix "shoald --check-config" hosts.single.config.environment.etc."shoal/cluster.toml".source.buildCommand;
    "manager1: openFirewall loosens the reverse-path check" =
      hosts.manager1.config.networking.firewall.checkReversePath == "loose";
    "single: strict reverse-path check left alone" =
      hosts.single.config.networking.firewall.checkReversePath != "loose";
    "manager1: /etc/shoal/stacks/shop.toml" = hosts.manager1.config.environment.etc ? "shoal/stacks/shop.toml";
    "single: tasks reach the node's DNS server on the bridge" =
      lib.elem 53 hosts.single.config.networking.firewall.interfaces.shoal0.allowedUDPPorts;
    "manager1: firewall" =
      lib.elem 4600 hosts.manager1.config.networking.firewall.allowedTCPPorts
      && lib.elem 4789 hosts.manager1.config.networking.firewall.allowedUDPPorts;
    "manager1, manager2, worker: no failed assertion" = lib.all (h: failedAssertions h == [ ]) [
      "manager1"
      "manager2"
      "worker"
    ];
    "worker without join: assertion" = lib.any (lib.hasInfix "a worker needs at least one manager address") (
      failedAssertions "workerWithoutJoin"
    );
    "string stack source: assertion" = lib.any (lib.hasInfix "source must be a Nix path") (
      failedAssertions "stringSource"
    );
  };

  failedChecks = lib.attrNames (lib.filterAttrs (_: ok: !ok) checks);

  # Instantiating the top-level derivations evaluates every option of those
  # systems (and raises failed assertions).
  toplevels = map (host: builtins.unsafeDiscardStringContext hosts.${host}.config.system.build.toplevel.drvPath) [
    "single"
    "manager1"
    "worker"
  ];

  report = lib.concatStringsSep "\n" (
    map (r: "ok stand-in ${r.name}") standIns.results
    ++ map (name: "ok nixos ${name}") (lib.attrNames checks)
    ++ map (drv: "ok instantiated ${drv}") toplevels
  );
in
if standInFailures != [ ] then
  throw "module-eval: stand-in evaluation failed: ${
    lib.concatMapStringsSep "; " (r: "${r.name}: ${r.detail}") standInFailures
  }"
else if failedChecks != [ ] then
  throw "module-eval: failed: ${lib.concatStringsSep "; " failedChecks}"
else
  pkgs.runCommand "shoal-module-eval"
    {
      inherit report;
      passAsFile = [ "report" ];
    }
    ''
      cp "$reportPath" "$out"
    ''
