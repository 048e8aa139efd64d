# Evaluation test of the NixOS module (nixos-module/default.nix) with nixpkgs'
# lib.evalModules, against stand-ins for the NixOS options it sets
# (./stubs.nix) and for the packages it uses (./fake-pkgs.nix).
#
#   nix-instantiate --eval --strict --json tests/nix-eval/eval.nix -A results \
#     --argstr nixpkgsLib /path/to/nixpkgs.lib   # the checkout or its lib/ folder
#
# `results` is a list of { name, ok, detail }; tests/nix-eval/run.sh evaluates
# it (-A results) and prints it.
# To look at one evaluated configuration:
#   nix-instantiate --eval --strict --json tests/nix-eval/eval.nix \
#     --argstr nixpkgsLib ... -A configs.worker.services.shoal.settings
{
  # Path (a string) of a nixpkgs.lib or nixpkgs checkout, or of its lib folder.
  nixpkgsLib ? null,
  # Or nixpkgs' lib itself (the flake's module-eval check passes nixpkgs.lib).
  importedLib ? null,
}:
let
  lib =
    if importedLib != null then
      importedLib
    else if nixpkgsLib == null then
      throw "pass --argstr nixpkgsLib PATH (a checkout of nix-community/nixpkgs.lib or its lib folder)"
    else
      let
        libRoot = /. + nixpkgsLib;
      in
      if builtins.pathExists (libRoot + "/lib/default.nix") then
        import (libRoot + "/lib")
      else if builtins.pathExists (libRoot + "/default.nix") then
        import libRoot
      else
        throw "nixpkgsLib (${nixpkgsLib}) is neither a checkout of nix-community/nixpkgs.lib nor its lib folder";

  inherit (lib)
    all
    any
    attrNames
    elem
    filter
    hasInfix
    hasPrefix
    hasSuffix
    length
    sort
    ;

  pkgs = import ./fake-pkgs.nix { inherit lib; };
  pkgsWithoutShoal = removeAttrs pkgs [ "shoal" ];

  webImage = pkgs.dockerTools.buildImage {
    name = "web";
    tag = "latest";
  };

  evalWith =
    somePkgs: modules:
    (lib.evalModules {
      modules = [
        ./stubs.nix
        ../../nixos-module
        { _module.args.pkgs = somePkgs; }
      ]
      ++ modules;
    }).config;

  evalConfig = module: evalWith pkgs [ module ];

  failedAssertions = config: map (a: a.message) (filter (a: !a.assertion) config.assertions);

  unit = config: config.systemd.services.shoald;
  service = config: (unit config).serviceConfig;
  settingsOf = config: config.services.shoal.settings;
  etcSource = config: file: config.environment.etc.${file}.source;
  outPaths = map toString;
  sameSet = a: b: sort lessThan (outPaths a) == sort lessThan (outPaths b);
  lessThan = a: b: a < b;

  tokenFile = "/run/keys/shoal-token";

  stackWeb = replicas: {
    services.web = {
      image = "docker-archive:${webImage}";
      inherit replicas;
      ports = [ "8080:80" ];
      env.MESSAGE = "hello";
    };
  };

  configs = {
    disabled = evalConfig { services.shoal.enable = false; };

    single = evalConfig { services.shoal.enable = true; };

    fallbackPackage = evalWith pkgsWithoutShoal [ { services.shoal.enable = true; } ];

    bootstrapManager = evalConfig {
      services.shoal = {
        enable = true;
        advertiseAddress = "192.168.1.1:4600";
        inherit tokenFile;
        openFirewall = true;
        labels.zone = "a";
        settings.cluster.settings.heartbeat_period = "1s";
        images = [ webImage ];
      };
    };

    joiningManager = evalConfig {
      services.shoal = {
        enable = true;
        join = [ "192.168.1.1:4600" ];
        advertiseAddress = "192.168.1.2:4600";
        inherit tokenFile;
        openFirewall = true;
      };
    };

    worker = evalConfig {
      services.shoal = {
        enable = true;
        role = "worker";
        join = [
          "192.168.1.1:4600"
          "192.168.1.2:4600"
        ];
        inherit tokenFile;
        openFirewall = true;
      };
    };

    stacks = evalConfig (stacksModule 2);
    stacksScaled = evalConfig (stacksModule 3);
    # A stack secret from a secret manager's file outside the store.
    stackSecret = evalConfig {
      imports = [ (stacksModule 2) ];
      services.shoal.stacks.web.settings.secrets.db_password.file = "/run/agenix/db_password";
    };
    # A stack secret whose file is in the store: world-readable.
    stackSecretInStore = evalConfig {
      imports = [ (stacksModule 2) ];
      services.shoal.stacks.web.settings.secrets.db_password.file = "${builtins.storeDir}/0000000000000000000000000000000-pw";
    };
    # Every stack of `stacks` disabled: the last one is gone.
    stacksAllRemoved = evalConfig {
      imports = [ (stacksModule 2) ];
      services.shoal.stacks = lib.genAttrs [ "web" "db" "broken" ] (_: {
        enable = lib.mkForce false;
      });
    };
    stacksRelabelled = evalConfig {
      imports = [ (stacksModule 2) ];
      services.shoal.labels.zone = "b";
    };

    workerWithStack = evalConfig {
      services.shoal = {
        enable = true;
        role = "worker";
        join = [ "192.168.1.1:4600" ];
        inherit tokenFile;
        stacks.web.settings = stackWeb 1;
      };
    };

    workerWithoutJoin = evalConfig {
      services.shoal = {
        enable = true;
        role = "worker";
        inherit tokenFile;
      };
    };

    workerWithoutToken = evalConfig {
      services.shoal = {
        enable = true;
        role = "worker";
        join = [ "192.168.1.1:4600" ];
      };
    };

    workerBootstrap = evalConfig {
      services.shoal = {
        enable = true;
        role = "worker";
        bootstrap = true;
        join = [ "192.168.1.1:4600" ];
        inherit tokenFile;
      };
    };

    managerJoinWithoutToken = evalConfig {
      services.shoal = {
        enable = true;
        join = [ "192.168.1.1:4600" ];
      };
    };

    stringSource = evalConfig {
      services.shoal = {
        enable = true;
        stacks.db.source = "/srv/shoal/db.toml";
      };
    };

    storePathSource = evalConfig {
      services.shoal = {
        enable = true;
        stacks.db.source = "${builtins.storeDir}/00000000000000000000000000000000-db.toml";
      };
    };

    packageSource = evalConfig {
      services.shoal = {
        enable = true;
        stacks.db.source = pkgs.writeText "db.toml" "[services.db]\nimage = \"postgres:16\"\n";
      };
    };

    managerWithNothingToDo = evalConfig {
      services.shoal = {
        enable = true;
        bootstrap = false;
      };
    };

    hostnameAdvertise = evalConfig {
      services.shoal = {
        enable = true;
        advertiseAddress = "m1.example.org:4600";
      };
    };

    ipv6Advertise = evalConfig {
      services.shoal = {
        enable = true;
        advertiseAddress = "[fd00::1]:4600";
      };
    };

    hexHostnameAdvertise = evalConfig {
      services.shoal = {
        enable = true;
        advertiseAddress = "cafe:4600";
      };
    };

    bareIpv6Advertise = evalConfig {
      services.shoal = {
        enable = true;
        advertiseAddress = "fd00::1";
      };
    };

    bareIpAdvertise = evalConfig {
      services.shoal = {
        enable = true;
        advertiseAddress = "10.0.0.1";
      };
    };

    otherListenPort = evalConfig {
      services.shoal = {
        enable = true;
        openFirewall = true;
        settings.network.listen = "0.0.0.0:4700";
      };
    };

    bareListenIp = evalConfig {
      services.shoal = {
        enable = true;
        openFirewall = true;
        settings.network.listen = "10.0.0.1";
      };
    };

    strictReversePath = evalConfig {
      services.shoal = {
        enable = true;
        openFirewall = true;
      };
      networking.firewall.checkReversePath = "strict";
    };

    uncheckedConfig = evalConfig {
      services.shoal = {
        enable = true;
        checkConfig = false;
      };
    };

    pathLiteralToken = evalConfig {
      services.shoal = {
        enable = true;
        tokenFile = ./fixtures/db.toml;
      };
    };

    relativeToken = evalConfig {
      services.shoal = {
        enable = true;
        tokenFile = "keys/token";
      };
    };

    storeToken = evalConfig {
      services.shoal = {
        enable = true;
        tokenFile = "${builtins.storeDir}/0000000000000000000000000000000-token";
      };
    };

    bootstrapAndJoin = evalConfig {
      services.shoal = {
        enable = true;
        bootstrap = true;
        join = [ "192.168.1.2:4600" ];
        inherit tokenFile;
      };
    };

    composeSource = evalConfig {
      services.shoal = {
        enable = true;
        stacks.shop.source = ./fixtures/shop.yml;
      };
    };

    stackSourceAndSettings = evalConfig {
      services.shoal = {
        enable = true;
        stacks.web = {
          source = ./fixtures/db.toml;
          settings = stackWeb 1;
        };
      };
    };

    badStackName = evalConfig {
      services.shoal = {
        enable = true;
        stacks."my stack".settings = stackWeb 1;
      };
    };

    conflictingRole = evalConfig {
      services.shoal = {
        enable = true;
        role = "manager";
        settings.node.role = "worker";
      };
    };

    containerdOverride = evalConfig {
      services.shoal = {
        enable = true;
        settings.containerd.address = "/run/k3s/containerd/containerd.sock";
      };
    };
  };

  # The VM tests' nodes (tests/nixos), evaluated with the module: the premises
  # of those tests, checked without VMs. IPs as the test driver numbers nodes.
  vmTests = {
    single = import ../nixos/single-node.nix { inherit pkgs; };
    cluster = import ../nixos/cluster.nix { inherit pkgs; };
    reload = import ../nixos/reload.nix { inherit pkgs; };
    failover = import ../nixos/failover.nix { inherit pkgs; };
    routing-mesh = import ../nixos/routing-mesh.nix { inherit pkgs; };
  };

  # What the test driver type-checks and lints: the machine names it declares
  # and the test script (tests/nix-eval/run.sh runs mypy and pyflakes on it).
  vmScripts = lib.mapAttrs (_: test: {
    machines = attrNames test.nodes;
    script = test.testScript;
  }) vmTests;
  vmAddresses = {
    machine = "192.168.1.1";
    manager1 = "192.168.1.1";
    manager2 = "192.168.1.2";
    manager3 = "192.168.1.3";
    worker1 = "192.168.1.4";
    worker2 = "192.168.1.5";
  };
  vmNode =
    test: name: extraModules:
    evalWith pkgs (
      [
        ./vm-node-stubs.nix
        test.nodes.${name}
        {
          networking.hostName = name;
          networking.primaryIPAddress = vmAddresses.${name};
          _module.args.nodes = lib.mapAttrs (_: ip: { networking.primaryIPAddress = ip; }) vmAddresses;
        }
      ]
      ++ extraModules
    );
  clusterHosts = [
    "manager1"
    "manager2"
    "manager3"
    "worker1"
    "worker2"
  ];
  vm = rec {
    single = vmNode vmTests.single "machine" [ ];
    cluster = lib.genAttrs clusterHosts (name: vmNode vmTests.cluster name [ ]);
    failover = lib.genAttrs clusterHosts (name: vmNode vmTests.failover name [ ]);
    reload = vmNode vmTests.reload "machine" [ ];
    reloadV2 = vmNode vmTests.reload "machine" [ reload.specialisation.v2.configuration ];
    reloadBroken = vmNode vmTests.reload "machine" [ reload.specialisation.broken.configuration ];
    reloadEmpty = vmNode vmTests.reload "machine" [ reload.specialisation.empty.configuration ];
    reloadRelabelled = vmNode vmTests.reload "machine" [ reload.specialisation.relabelled.configuration ];
    routingMesh = lib.genAttrs clusterHosts (name: vmNode vmTests.routing-mesh name [ ]);
  };

  # The flake's outputs, with a stand-in nixpkgs input: the outputs' shape,
  # the package wiring and the checks' list (their builds need real nixpkgs).
  flake = import ../../flake.nix;
  flakeSystems = [
    "x86_64-linux"
    "aarch64-linux"
  ];
  fakeNixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs flakeSystems (
      system:
      pkgs
      // {
        stdenv.hostPlatform.system = system;
        testers.runNixOSTest = test: {
          vmTest = true;
          inherit test;
        };
        mkShell = args: pkgs.runCommand "shell" args "";
      }
    );
  };
  flakeOutputs = lib.fix (self: flake.outputs { inherit self; nixpkgs = fakeNixpkgs; });

  # nixos-module/package.nix called with a recording rustPlatform and fileset.
  packageArgs =
    import ../../nixos-module/package.nix {
      lib = lib // {
        fileset = {
          toSource =
            { root, fileset }:
            {
              root = toString root;
              inherit fileset;
            };
          difference = from: minus: {
            from = toString from;
            inherit minus;
          };
          unions = map (x: if builtins.isPath x then toString x else x);
          maybeMissing = path: { maybeMissing = toString path; };
        };
      };
      rustPlatform.buildRustPackage = args: args;
      protobuf = "protobuf";
      pkg-config = "pkg-config";
    };
  repoRoot = toString ../..;

  stacksModule = replicas: {
    services.shoal = {
      enable = true;
      stacks = {
        web.settings = stackWeb replicas;
        db.source = ./fixtures/db.toml;
        broken = {
          validate = false;
          settings.services.web.replicas = "three";
        };
        retired = {
          enable = false;
          settings = stackWeb 1;
        };
      };
    };
  };

  # Evaluates `cond`; an evaluation error counts as a failure instead of
  # aborting the whole run.
  check =
    name: cond: detail:
    let
      result = builtins.tryEval (builtins.deepSeq cond cond);
      ok = result.success && result.value == true;
    in
    {
      inherit name ok;
      detail =
        if ok then
          ""
        else if !result.success then
          "evaluation failed; rerun with --show-trace, e.g. -A configs.<case>"
        else
          let
            shown = builtins.tryEval (builtins.deepSeq detail detail);
          in
          if shown.success then shown.value else "(could not show the details)";
    };

  show = lib.generators.toPretty { };

  # The assertion with `message` fails, and no other one does.
  onlyAssertion =
    name: config: fragment:
    check name (
      let
        failed = failedAssertions config;
      in
      length failed == 1 && hasInfix fragment (builtins.head failed)
    ) "expected exactly one failed assertion containing '${fragment}', got ${show (failedAssertions config)}";

  noAssertions =
    name: config:
    check name (failedAssertions config == [ ]) "unexpected failed assertions: ${show (failedAssertions config)}";

  noWarnings =
    name: config: check name (config.warnings == [ ]) "unexpected warnings: ${show config.warnings}";

  # The configuration is refused: by a failed assertion whose message contains
  # `fragment`, or by an option type check (evaluation error), as lib's
  # types.externalPath does for tokenFile where lib has it.
  refused =
    name: config: fragment:
    check name (
      let
        result = builtins.tryEval (builtins.deepSeq (failedAssertions config) (failedAssertions config));
      in
      !result.success || any (hasInfix fragment) result.value
    ) "expected a failed assertion containing '${fragment}' or a type error, got ${show (failedAssertions config)}";

  renderedClusterOf = config: (pkgs.formats.toml { }).generate "shoal-cluster.toml" (settingsOf config);
  reloadTriggerOf = config: builtins.head (unit config).reloadTriggers;

  single = configs.single;
  singleSettings = settingsOf single;
  # The cluster file as rendered from settings (the checked file's input).
  clusterFileOf = renderedClusterOf;
  installedClusterFileOf = config: etcSource config "shoal/cluster.toml";

  results = [
    # enable alone: a single-node cluster
    (check "single: unit is Type=notify with NotifyAccess=main" (
      (service single).Type == "notify" && (service single).NotifyAccess == "main"
    ) (show (service single)))
    (check "single: ExecStart runs shoald with the fixed cluster file" (
      (service single).ExecStart == "${pkgs.shoal}/bin/shoald --config /etc/shoal/cluster.toml"
    ) (service single).ExecStart)
    (check "single: ExecReload runs the synchronous shoal reload" (
      (service single).ExecReload == "${pkgs.shoal}/bin/shoal reload"
    ) (service single).ExecReload)
    (check "single: watchdog, restart policy, limits" (
      (service single).WatchdogSec == "30s"
      && (service single).Restart == "on-failure"
      && (service single).LimitNOFILE == 1048576
    ) (show (service single)))
    (check "single: StateDirectory and RuntimeDirectory are shoal, the runtime directory survives restarts" (
      (service single).StateDirectory == "shoal"
      && (service single).StateDirectoryMode == "0700"
      && (service single).RuntimeDirectory == "shoal"
      && (service single).RuntimeDirectoryPreserve == "yes"
    ) (show (service single)))
    (check "single: as the shipped unit: BusName, stop timeout, OOM score, start limit" (
      (service single).BusName == "org.shoal.Shoal1"
      && (service single).TimeoutStopSec == "60s"
      && (service single).OOMScoreAdjust == -500
      && (unit single).startLimitBurst == 5
      && (unit single).startLimitIntervalSec == 60
    ) (show (service single)))
    (check "single: containers outlive the daemon (KillMode=process, Delegate=no)" (
      (service single).KillMode == "process" && (service single).Delegate == false
    ) (show (service single)))
    (check "single: wants and is ordered after containerd and network-online, never requires them" (
      all (u: elem u (unit single).wants && elem u (unit single).after) [
        "containerd.service"
        "network-online.target"
      ]
      && (unit single).requires == [ ]
      && (unit single).bindsTo == [ ]
    ) (show { inherit (unit single) wants after requires; }))
    (check "single: started at boot" (elem "multi-user.target" (unit single).wantedBy) (
      show (unit single).wantedBy
    ))
    (check "single: containerd is enabled" single.virtualisation.containerd.enable "containerd not enabled")
    (check "single: D-Bus policy installed through services.dbus.packages" (
      outPaths single.services.dbus.packages == [ (toString pkgs.shoal) ]
    ) (show (outPaths single.services.dbus.packages)))
    (check "single: the CLI is installed" (elem (toString pkgs.shoal) (
      outPaths single.environment.systemPackages
    )) (show (outPaths single.environment.systemPackages)))
    (check "single: a shoal group exists" (single.users.groups ? shoal) (
      show (attrNames single.users.groups)
    ))
    (check "single: bootstraps as a manager, joins nothing, needs no token" (
      singleSettings.node.role == "manager"
      && singleSettings.cluster.bootstrap == true
      && !(singleSettings.cluster ? join)
      && !(singleSettings.cluster ? token_file)
      && !(singleSettings ? images)
      && !(singleSettings ? network)
    ) (show singleSettings))
    (check "single: paths match the unit's directories" (
      singleSettings.paths == {
        state_dir = "/var/lib/shoal";
        stacks_dir = "/etc/shoal/stacks";
      }
    ) (show singleSettings.paths))
    (check "single: /etc/shoal/cluster.toml is the rendered settings" (
      (clusterFileOf single).value == singleSettings
      && hasInfix "[cluster]\nbootstrap = true\n" (clusterFileOf single).text
      && hasInfix "[node]\nrole = \"manager\"\n" (clusterFileOf single).text
    ) (clusterFileOf single).text)
    (check "single: the installed cluster file is the rendered one checked with shoald --check-config" (
      let
        installed = installedClusterFileOf single;
      in
      installed.name == "shoal-cluster.toml"
      && hasInfix "cp ${clusterFileOf single} cluster.toml\n" (installed.buildCommand or "")
      && hasInfix "shoald --check-config cluster.toml\n" (installed.buildCommand or "")
      && hasInfix "cp cluster.toml \"$out\"" (installed.buildCommand or "")
      && outPaths (installed.env.nativeBuildInputs or [ ]) == [ (toString pkgs.shoal) ]
    ) (show (installedClusterFileOf single)))
    (check "single: checkConfig = false installs the rendered cluster file unchecked" (
      (installedClusterFileOf configs.uncheckedConfig).outPath == (clusterFileOf configs.uncheckedConfig).outPath
      && !((installedClusterFileOf configs.uncheckedConfig) ? buildCommand)
    ) (show (installedClusterFileOf configs.uncheckedConfig)))
    (check "single: PATH has the commands shoald runs (nft, iptables)" (
      outPaths (unit single).path == outPaths [
        pkgs.shoal
        pkgs.nftables
        pkgs.iptables
      ]
    ) (show (outPaths (unit single).path)))
    (check "single: reverse-path filtering untouched without openFirewall" (
      single.networking.firewall.checkReversePath == true
    ) (show single.networking.firewall.checkReversePath))
    (check "single: cluster file and package restart, nothing reloads, no stop before the switch" (
      sameSet (unit single).restartTriggers [
        (installedClusterFileOf single)
        pkgs.shoal
      ]
      && length (unit single).reloadTriggers == 1
      && (reloadTriggerOf single).text == "{}"
      && (unit single).stopIfChanged == false
    ) (show { inherit (unit single) restartTriggers reloadTriggers stopIfChanged; }))
    (check "single: firewall untouched without openFirewall" (
      single.networking.firewall.allowedTCPPorts == [ ]
      && single.networking.firewall.allowedUDPPorts == [ ]
    ) (show single.networking.firewall))
    (check "single: tasks reach the node's DNS server on the bridge, and nothing else opens" (
      single.networking.firewall.interfaces.shoal0.allowedUDPPorts == [ 53 ]
      && single.networking.firewall.interfaces.shoal0.allowedTCPPorts == [ ]
    ) (show single.networking.firewall.interfaces))
    (check "single: the stacks directory exists even without stacks" (
      elem "d /etc/shoal/stacks 0755 root root -" single.systemd.tmpfiles.rules
    ) (show single.systemd.tmpfiles.rules))
    (noAssertions "single: no failed assertions" single)
    (noWarnings "single: no warnings" single)
    (check "disabled: nothing is configured" (
      configs.disabled.systemd.services == { }
      && configs.disabled.environment.etc == { }
      && !configs.disabled.virtualisation.containerd.enable
      && configs.disabled.services.dbus.packages == [ ]
    ) (show (attrNames configs.disabled.systemd.services)))
    (check "package: falls back to building this repository when pkgs has no shoal" (
      hasSuffix "/nixos-module/package.nix" configs.fallbackPackage.services.shoal.package.callPackageOf
      && hasInfix "shoal-from-source/bin/shoald" (service configs.fallbackPackage).ExecStart
    ) (service configs.fallbackPackage).ExecStart)

    # a three-host cluster: bootstrapping manager, joining manager, worker
    (check "cluster: the bootstrapping manager's cluster file" (
      let
        s = settingsOf configs.bootstrapManager;
      in
      s.node.role == "manager"
      && s.node.labels == { zone = "a"; }
      && s.cluster.bootstrap == true
      && s.cluster.token_file == tokenFile
      && !(s.cluster ? join)
      && s.network.advertise == "192.168.1.1:4600"
      && s.cluster.settings.heartbeat_period == "1s"
    ) (show (settingsOf configs.bootstrapManager)))
    (check "cluster: images are preloaded from docker archives" (
      (settingsOf configs.bootstrapManager).images.preload == [ "docker-archive:${webImage}" ]
    ) (show (settingsOf configs.bootstrapManager).images or null))
    (check "cluster: the joining manager's cluster file" (
      let
        s = settingsOf configs.joiningManager;
      in
      s.node.role == "manager"
      && s.cluster.bootstrap == false
      && s.cluster.join == [ "192.168.1.1:4600" ]
      && s.cluster.token_file == tokenFile
      && s.network.advertise == "192.168.1.2:4600"
    ) (show (settingsOf configs.joiningManager)))
    (check "cluster: the worker's cluster file" (
      let
        s = settingsOf configs.worker;
      in
      s.node.role == "worker"
      && s.cluster.bootstrap == false
      && s.cluster.join == [
        "192.168.1.1:4600"
        "192.168.1.2:4600"
      ]
      && s.cluster.token_file == tokenFile
    ) (show (settingsOf configs.worker)))
    (check "cluster: the worker's rendered TOML" (
      hasInfix "[node]\nrole = \"worker\"\n" (clusterFileOf configs.worker).text
      && hasInfix "join = [ \"192.168.1.1:4600\", \"192.168.1.2:4600\" ]\n" (clusterFileOf configs.worker).text
      && hasInfix "token_file = \"${tokenFile}\"\n" (clusterFileOf configs.worker).text
    ) (clusterFileOf configs.worker).text)
    (check "cluster: openFirewall sets a loose reverse-path check (VXLAN) on every role" (
      all (c: c.networking.firewall.checkReversePath == "loose") [
        configs.bootstrapManager
        configs.joiningManager
        configs.worker
      ]
    ) (show configs.worker.networking.firewall))
    (check "cluster: the loose reverse-path check is only a default" (
      configs.strictReversePath.networking.firewall.checkReversePath == "strict"
    ) (show configs.strictReversePath.networking.firewall))
    (check "cluster: openFirewall opens the port of settings.network.listen" (
      configs.otherListenPort.networking.firewall.allowedTCPPorts == [ 4700 ]
      && configs.bareListenIp.networking.firewall.allowedTCPPorts == [ 4600 ]
    ) (show {
      other = configs.otherListenPort.networking.firewall.allowedTCPPorts;
      bare = configs.bareListenIp.networking.firewall.allowedTCPPorts;
    }))
    (noAssertions "cluster: an IPv6 advertise address passes" configs.ipv6Advertise)
    (noAssertions "cluster: a bare IP advertise address passes" configs.bareIpAdvertise)
    (noAssertions "cluster: a bare IPv6 advertise address passes" configs.bareIpv6Advertise)
    (onlyAssertion "assertion: a host name made of hex digits is not an IPv6 address" configs.hexHostnameAdvertise "advertiseAddress must be an IP address")
    (check "cluster: openFirewall opens 4600/tcp and 4789/udp on every role" (
      all (
        c: c.networking.firewall.allowedTCPPorts == [ 4600 ] && c.networking.firewall.allowedUDPPorts == [ 4789 ]
      ) [ configs.bootstrapManager configs.joiningManager configs.worker ]
    ) (show configs.worker.networking.firewall))
    (noAssertions "cluster: bootstrapping manager passes the assertions" configs.bootstrapManager)
    (noAssertions "cluster: joining manager passes the assertions" configs.joiningManager)
    (noAssertions "cluster: worker passes the assertions" configs.worker)
    (noWarnings "cluster: joining manager has no warnings" configs.joiningManager)
    (noWarnings "cluster: worker without stacks has no warnings" configs.worker)

    # stacks
    (check "stacks: one /etc/shoal/stacks file per enabled stack" (
      sort lessThan (filter (hasPrefix "shoal/stacks/") (attrNames configs.stacks.environment.etc)) == [
        "shoal/stacks/broken.toml"
        "shoal/stacks/db.toml"
        "shoal/stacks/web.toml"
      ]
    ) (show (attrNames configs.stacks.environment.etc)))
    (check "stacks: settings are rendered, validated with shoal stack validate, and the validated file is installed" (
      let
        src = etcSource configs.stacks "shoal/stacks/web.toml";
      in
      hasInfix "shoal stack validate ${lib.escapeShellArg "stacks/web.toml"}\n" (src.buildCommand or "")
      && hasInfix "cp ${lib.escapeShellArg "stacks/web.toml"} \"$out\"" (src.buildCommand or "")
      && outPaths (src.env.nativeBuildInputs or [ ]) == [ (toString pkgs.shoal) ]
      && src.name == "shoal-stack-web.toml"
    ) (show ((etcSource configs.stacks "shoal/stacks/web.toml").buildCommand or "")))
    (check "stacks: the rendered stack file" (
      let
        generated = (pkgs.formats.toml { }).generate "shoal-stack-web.toml" (stackWeb 2);
      in
      hasInfix "cp ${generated} ${lib.escapeShellArg "stacks/web.toml"}\n" ((etcSource configs.stacks "shoal/stacks/web.toml").buildCommand or "")
      && hasInfix "[services.web]\n" generated.text
      && hasInfix "replicas = 2\n" generated.text
      && hasInfix "ports = [ \"8080:80\" ]\n" generated.text
    ) (show ((etcSource configs.stacks "shoal/stacks/web.toml").buildCommand or "")))
    (check "stacks: a source file (a Nix path) is copied to the store and validated too" (
      let
        src = etcSource configs.stacks "shoal/stacks/db.toml";
      in
      hasInfix "cp ${builtins.storeDir}/" (src.buildCommand or "")
      && hasInfix "-db.toml ${lib.escapeShellArg "stacks/db.toml"}\n" (src.buildCommand or "")
      && hasInfix "shoal stack validate ${lib.escapeShellArg "stacks/db.toml"}\n" (src.buildCommand or "")
    ) (show (etcSource configs.stacks "shoal/stacks/db.toml")))
    (check "stacks: a Compose source is converted (and so validated) by shoal stack convert into the stack file" (
      let
        src = etcSource configs.composeSource "shoal/stacks/shop.toml";
      in
      hasInfix "shoal stack convert --name ${lib.escapeShellArg "shop"} ${builtins.storeDir}/" (src.buildCommand or "")
      && hasInfix "-shop.yml -o \"$out\"" (src.buildCommand or "")
      && outPaths (src.env.nativeBuildInputs or [ ]) == [ (toString pkgs.shoal) ]
      && src.name == "shoal-stack-shop.toml"
    ) (show (etcSource configs.composeSource "shoal/stacks/shop.toml")))
    (onlyAssertion "stacks: a source given as a plain string is refused" configs.stringSource "services.shoal.stacks.db.source must be a Nix path")
    (noAssertions "stacks: a source in the store (a string) is accepted" configs.storePathSource)
    (noAssertions "stacks: a source that is a package (writeText) is accepted" configs.packageSource)
    (check "stacks: validate = false installs the rendered file as it is" (
      let
        src = etcSource configs.stacks "shoal/stacks/broken.toml";
      in
      src.format or null == "toml" && !(src ? buildCommand) && hasInfix "replicas = \"three\"" src.text
    ) (show (etcSource configs.stacks "shoal/stacks/broken.toml")))
    (check "stacks: one reload trigger lists every stack file; no stack file is a restart trigger" (
      let
        u = unit configs.stacks;
        stackSource = f: toString (etcSource configs.stacks "shoal/stacks/${f}.toml");
        stackSources = map stackSource [
          "broken"
          "db"
          "web"
        ];
      in
      length u.reloadTriggers == 1
      && (reloadTriggerOf configs.stacks).text == builtins.toJSON (lib.genAttrs [ "broken" "db" "web" ] stackSource)
      && !(any (t: elem (toString t) stackSources) u.restartTriggers)
    ) (show (unit configs.stacks).reloadTriggers))
    (check "stacks: removing the last stack changes the (still present) reload trigger" (
      let
        before = unit configs.stacks;
        after = unit configs.stacksAllRemoved;
      in
      after.reloadTriggers != [ ]
      && outPaths after.reloadTriggers != outPaths before.reloadTriggers
      && outPaths after.reloadTriggers == outPaths (unit single).reloadTriggers
      && outPaths after.restartTriggers == outPaths before.restartTriggers
      && after.serviceConfig == before.serviceConfig
      && !(any (hasPrefix "shoal/stacks/") (attrNames configs.stacksAllRemoved.environment.etc))
    ) (show (unit configs.stacksAllRemoved).reloadTriggers))
    (check "stacks: stopIfChanged is false" ((unit configs.stacks).stopIfChanged == false) "")
    (check "stacks: a stack change only changes the reload triggers" (
      let
        a = unit configs.stacks;
        b = unit configs.stacksScaled;
      in
      outPaths a.reloadTriggers != outPaths b.reloadTriggers
      && outPaths a.restartTriggers == outPaths b.restartTriggers
      && a.serviceConfig == b.serviceConfig
      && (clusterFileOf configs.stacks).outPath == (clusterFileOf configs.stacksScaled).outPath
    ) "reload triggers unchanged or restart triggers/unit changed")
    (check "stacks: a cluster setting change changes the restart triggers" (
      outPaths (unit configs.stacks).restartTriggers != outPaths (unit configs.stacksRelabelled).restartTriggers
      && outPaths (unit configs.stacks).reloadTriggers == outPaths (unit configs.stacksRelabelled).reloadTriggers
    ) "restart triggers unchanged")
    (noAssertions "stacks: no failed assertions" configs.stacks)
    (noAssertions "stacks: a secret file outside the store passes" configs.stackSecret)
    (onlyAssertion "assertion: a stack secret's file in the store is refused" configs.stackSecretInStore "settings.secrets.db_password.file must be an absolute path outside the Nix store")
    (check "stacks: declaring stacks on a worker warns" (
      length configs.workerWithStack.warnings == 1
      && hasInfix "(web) is set on a worker" (builtins.head configs.workerWithStack.warnings)
    ) (show configs.workerWithStack.warnings))
    (noAssertions "stacks: stacks on a worker are not an error" configs.workerWithStack)

    # assertions and warnings
    (onlyAssertion "assertion: a worker needs join" configs.workerWithoutJoin "a worker needs at least one manager address in services.shoal.join")
    (onlyAssertion "assertion: a worker needs a token file" configs.workerWithoutToken "a worker needs services.shoal.tokenFile")
    (onlyAssertion "assertion: bootstrap is refused on a worker" configs.workerBootstrap "bootstrap cannot be set on a worker")
    (onlyAssertion "assertion: a joining manager needs a token file" configs.managerJoinWithoutToken "a manager that joins a cluster needs services.shoal.tokenFile")
    (refused "assertion: tokenFile must be absolute" configs.relativeToken "tokenFile must be an absolute path")
    (refused "assertion: tokenFile must not be in the Nix store" configs.storeToken "tokenFile points into the Nix store")
    (refused "assertion: tokenFile must not be a Nix path literal (it would be copied into the store)" configs.pathLiteralToken "tokenFile")
    (onlyAssertion "assertion: a manager that neither bootstraps nor joins" configs.managerWithNothingToDo "a manager that does not bootstrap has nothing to do")
    (onlyAssertion "assertion: advertiseAddress must be an IP, not a host name" configs.hostnameAdvertise "advertiseAddress must be an IP address")
    (onlyAssertion "assertion: a stack has settings or source, not both" configs.stackSourceAndSettings "set either settings or source, not both")
    (onlyAssertion "assertion: stack names are file-name safe" configs.badStackName "services.shoal.stacks.my stack: a stack name")
    (onlyAssertion "assertion: bootstrap and join are exclusive" configs.bootstrapAndJoin "a node either bootstraps a new cluster or joins one")
    (check "settings: a typed option and a conflicting settings key do not silently merge" (
      !(builtins.tryEval (builtins.deepSeq (settingsOf configs.conflictingRole) true)).success
    ) "settings.node.role = \"worker\" next to role = \"manager\" evaluated without a conflict")
    (check "settings: module defaults give way to user settings" (
      (settingsOf configs.containerdOverride).containerd.address == "/run/k3s/containerd/containerd.sock"
    ) (show (settingsOf configs.containerdOverride).containerd))

    # the VM tests' own configurations
    (check "vm tests: every script starts with the helpers" (
      all (test: hasInfix "def wait_for(" test.testScript && hasInfix "wait_for_unit(\"shoald.service\")" test.testScript) (
        lib.attrValues vmTests
      )
    ) "a testScript lacks helpers.py or never waits for shoald")
    (check "vm tests: no node fails an assertion" (
      all (c: failedAssertions c == [ ]) (
        [
          vm.single
          vm.reload
          vm.reloadV2
          vm.reloadBroken
          vm.reloadEmpty
          vm.reloadRelabelled
        ]
        ++ lib.attrValues vm.cluster
        ++ lib.attrValues vm.failover
        ++ lib.attrValues vm.routingMesh
      )
    ) "failed: ${show (map failedAssertions ([ vm.single vm.reload ] ++ lib.attrValues vm.cluster))}")
    (check "vm tests: the image is preloaded and referenced by the stack" (
      let
        s = settingsOf vm.single;
        image = builtins.head s.images.preload;
      in
      length s.images.preload == 1
      && hasPrefix "docker-archive:/nix/store/" image
      && vm.single.services.shoal.stacks.hello.settings.services.web.image == image
    ) (show (settingsOf vm.single).images))
    (check "vm tests: only manager1 bootstraps; everyone else joins it with the token file" (
      all (
        name:
        let
          s = settingsOf vm.cluster.${name};
        in
        s.cluster.bootstrap == (name == "manager1")
        && (s.cluster.join or [ ]) == (if name == "manager1" then [ ] else [ "192.168.1.1:4600" ])
        && s.cluster.token_file == "/etc/shoal/join-token"
        && vm.cluster.${name}.environment.etc ? "shoal/join-token"
        && s.network.advertise == "${vmAddresses.${name}}:4600"
      ) clusterHosts
    ) (show (lib.genAttrs clusterHosts (name: (settingsOf vm.cluster.${name}).cluster))))
    (check "vm tests: roles, stacks on the managers only, cluster ports open" (
      all (
        name:
        let
          c = vm.cluster.${name};
          isManager = hasPrefix "manager" name;
        in
        c.services.shoal.role == (if isManager then "manager" else "worker")
        && (c.environment.etc ? "shoal/stacks/demo.toml") == isManager
        && c.warnings == [ ]
        && elem 4600 c.networking.firewall.allowedTCPPorts
        && elem 8080 c.networking.firewall.allowedTCPPorts
        && elem 4789 c.networking.firewall.allowedUDPPorts
        && c.networking.firewall.checkReversePath == "loose"
      ) clusterHosts
    ) (show (lib.genAttrs clusterHosts (name: vm.cluster.${name}.warnings))))
    (check "vm tests: cluster runs 5 replicas, failover 4" (
      vm.cluster.manager2.services.shoal.stacks.demo.settings.services.web.replicas == 5
      && vm.failover.manager3.services.shoal.stacks.demo.settings.services.web.replicas == 4
    ) "")
    (check "vm tests: the heartbeat setting is on the bootstrapping manager only" (
      (settingsOf vm.failover.manager1).cluster.settings.heartbeat_period == "1s"
      && !((settingsOf vm.failover.manager2).cluster ? settings)
    ) (show (settingsOf vm.failover.manager2).cluster))
    (check "vm tests: the reload specialisation changes a stack and nothing else of the unit" (
      let
        a = unit vm.reload;
        b = unit vm.reloadV2;
      in
      vm.reloadV2.services.shoal.stacks.demo.settings.services.web.env.MESSAGE == "version two"
      && vm.reload.services.shoal.stacks.demo.settings.services.web.env.MESSAGE == "version one"
      && outPaths a.reloadTriggers != outPaths b.reloadTriggers
      && outPaths a.restartTriggers == outPaths b.restartTriggers
      && a.serviceConfig == b.serviceConfig
    ) "the v2 specialisation does not differ from the base in the reload triggers only")
    (check "vm tests: the broken specialisation installs its stack unvalidated" (
      let
        src = etcSource vm.reloadBroken "shoal/stacks/demo.toml";
      in
      !(src ? buildCommand)
      && src.value.services.web.replicas == "three"
      && outPaths (unit vm.reloadBroken).restartTriggers == outPaths (unit vm.reload).restartTriggers
      && outPaths (unit vm.reloadBroken).reloadTriggers != outPaths (unit vm.reload).reloadTriggers
    ) (show (etcSource vm.reloadBroken "shoal/stacks/demo.toml")))
    (check "vm tests: the empty specialisation removes the stack and only changes the reload trigger" (
      let
        a = unit vm.reload;
        b = unit vm.reloadEmpty;
      in
      !(vm.reloadEmpty.environment.etc ? "shoal/stacks/demo.toml")
      && vm.reload.environment.etc ? "shoal/stacks/demo.toml"
      && b.reloadTriggers != [ ]
      && (reloadTriggerOf vm.reloadEmpty).text == "{}"
      && outPaths a.reloadTriggers != outPaths b.reloadTriggers
      && outPaths a.restartTriggers == outPaths b.restartTriggers
      && a.serviceConfig == b.serviceConfig
    ) (show (unit vm.reloadEmpty).reloadTriggers))
    (check "vm tests: the relabelled specialisation changes the cluster file (a restart), not the stacks" (
      let
        a = unit vm.reload;
        b = unit vm.reloadRelabelled;
      in
      (settingsOf vm.reloadRelabelled).node.labels == { zone = "b"; }
      && outPaths a.restartTriggers != outPaths b.restartTriggers
      && outPaths a.reloadTriggers == outPaths b.reloadTriggers
    ) (show (settingsOf vm.reloadRelabelled).node))
    (check "vm tests: routing-mesh uses the cluster of the cluster test with 2 replicas" (
      attrNames vmTests.routing-mesh.nodes == clusterHosts
      && vm.routingMesh.manager1.services.shoal.stacks.demo.settings.services.web.replicas == 2
      && (settingsOf vm.routingMesh.worker2).cluster.join == [ "192.168.1.1:4600" ]
    ) "")
    (check "vm tests: the driver sees every script with its machines" (
      all (name: vmScripts.${name}.machines == clusterHosts) [
        "cluster"
        "failover"
        "routing-mesh"
      ]
      && vmScripts.single.machines == [ "machine" ]
      && vmScripts.reload.machines == [ "machine" ]
      && all (v: hasPrefix "# Helpers shared by the shoal VM test scripts." v.script) (lib.attrValues vmScripts)
    ) (show (lib.mapAttrs (_: v: v.machines) vmScripts)))
    (check "vm tests: single-node users: alice outside, bob inside the shoal group" (
      vm.single.users.users.bob.extraGroups == [ "shoal" ] && vm.single.users.users.alice.extraGroups == [ ]
    ) "")

    # the package
    (check "package: shoald, shoal and shoal-log-driver, from the workspace's version and lock file" (
      packageArgs.pname == "shoal"
      && packageArgs.version == (lib.importTOML ../../Cargo.toml).workspace.package.version
      && toString packageArgs.cargoLock.lockFile == "${repoRoot}/Cargo.lock"
      && packageArgs.cargoBuildFlags == [
        "--package"
        "shoald"
        "--package"
        "shoal"
        "--package"
        "shoal-containerd"
      ]
      && hasInfix "test -x $out/bin/shoal-log-driver" packageArgs.postInstall
    ) (show (removeAttrs packageArgs [ "src" ])))
    (check "package: shoal-log-driver is a binary of the shoal-containerd crate" (
      (lib.importTOML ../../daemon/containerd/Cargo.toml).package.name == "shoal-containerd"
      && builtins.pathExists ../../daemon/containerd/src/bin/shoal-log-driver.rs
    ) "daemon/containerd/src/bin/shoal-log-driver.rs or the crate name changed")
    (check "package: the unit's Documentation= points into the package" (
      hasInfix "s|/usr/local/share/|$out/share/|g" packageArgs.postInstall
      && hasInfix "README.md $out/share/doc/shoal/README.md" packageArgs.postInstall
    ) packageArgs.postInstall)
    (check "package: protoc at build time, no tests in the sandbox" (
      elem "protobuf" packageArgs.nativeBuildInputs && packageArgs.doCheck == false
    ) "")
    (check "package: the source is the repository without the Nix files and build outputs" (
      packageArgs.src.root == repoRoot
      && packageArgs.src.fileset.from == repoRoot
      && all (p: elem p packageArgs.src.fileset.minus) [
        "${repoRoot}/nixos-module"
        { maybeMissing = "${repoRoot}/target"; }
        { maybeMissing = "${repoRoot}/tests/nixos"; }
        { maybeMissing = "${repoRoot}/tests/nix-eval"; }
        { maybeMissing = "${repoRoot}/flake.nix"; }
      ]
    ) (show packageArgs.src))
    (check "package: installs the unit, the D-Bus policy and the tmpfiles rules" (
      all (f: hasInfix f packageArgs.postInstall) [
        "systemd/shoald.service $out/lib/systemd/system/shoald.service"
        "systemd/org.shoal.Shoal1.conf"
        "$out/share/dbus-1/system.d/org.shoal.Shoal1.conf"
        "systemd/shoal.tmpfiles $out/lib/tmpfiles.d/shoal.conf"
      ]
    ) packageArgs.postInstall)
    (check "package: the files postInstall copies exist" (
      all (f: builtins.pathExists (../../systemd + "/${f}")) [
        "shoald.service"
        "org.shoal.Shoal1.conf"
        "shoal.tmpfiles"
      ]
    ) "a file under systemd/ is missing")

    # the flake
    (check "flake: inputs and description" (
      flake.inputs.nixpkgs.url == "github:NixOS/nixpkgs/nixos-unstable" && builtins.isString flake.description
    ) "")
    (check "flake: packages.<system>.default is the package built from nixos-module/package.nix" (
      all (
        system:
        let
          p = flakeOutputs.packages.${system};
        in
        hasSuffix "/nixos-module/package.nix" p.default.callPackageOf && p.default == p.shoal
      ) flakeSystems
    ) (show (attrNames flakeOutputs.packages)))
    (check "flake: overlays.default provides pkgs.shoal" (
      hasSuffix "/nixos-module/package.nix" (flakeOutputs.overlays.default pkgs pkgs).shoal.callPackageOf
    ) "")
    (check "flake: nixosModules.default is the module" (
      let
        c = evalWith pkgs [
          flakeOutputs.nixosModules.default
          { services.shoal.enable = true; }
        ];
      in
      (service c).Type == "notify"
      && (service (evalWith pkgs [
        flakeOutputs.nixosModules.shoal
        { services.shoal.enable = true; }
      ])) == service c
    ) "")
    (check "flake: the module defaults package to pkgs.shoal (overlay), else to the flake's own build" (
      let
        withOverlay = evalWith pkgs [
          flakeOutputs.nixosModules.default
          { services.shoal.enable = true; }
        ];
        withoutOverlay = evalWith (pkgsWithoutShoal // { stdenv.hostPlatform.system = "aarch64-linux"; }) [
          flakeOutputs.nixosModules.default
          { services.shoal.enable = true; }
        ];
      in
      withOverlay.services.shoal.package == pkgs.shoal
      && withoutOverlay.services.shoal.package == flakeOutputs.packages.aarch64-linux.default
    ) "")
    (check "flake: checks are the four VM tests and module-eval" (
      all (
        system:
        let
          c = flakeOutputs.checks.${system};
        in
        attrNames c == [
          "cluster"
          "failover"
          "module-eval"
          "reload"
          "single-node"
        ]
        && all (name: c.${name}.vmTest && hasPrefix "shoal-" c.${name}.test.name) [
          "cluster"
          "failover"
          "reload"
          "single-node"
        ]
        && attrNames c.cluster.test.nodes == clusterHosts
        && attrNames c.failover.test.nodes == clusterHosts
        && attrNames c.reload.test.nodes == [ "machine" ]
      ) flakeSystems
    ) (show (attrNames flakeOutputs.checks.x86_64-linux)))
    (check "flake: routing-mesh waits outside checks, in legacyPackages.<system>.pendingChecks" (
      all (
        system:
        let
          p = flakeOutputs.legacyPackages.${system}.pendingChecks;
        in
        attrNames p == [ "routing-mesh" ]
        && p.routing-mesh.vmTest
        && p.routing-mesh.test.name == "shoal-routing-mesh"
        && attrNames p.routing-mesh.test.nodes == clusterHosts
      ) flakeSystems
    ) "")
    (check "flake: a development shell" (flakeOutputs.devShells.x86_64-linux ? default) "")
  ];
in
{
  inherit
    results
    configs
    vm
    vmScripts
    ;
}
