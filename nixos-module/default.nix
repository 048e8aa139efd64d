# NixOS module for shoal: `services.shoal`.
#
# The same module runs on every host of a cluster; `role`, `bootstrap` and
# `join` say what each host does. The cluster file is rendered to
# /etc/shoal/cluster.toml (a change restarts shoald once, containers keep
# running), stacks to /etc/shoal/stacks/<name>.toml (a change reloads shoald:
# `shoal reload` applies the difference, or fails the switch when a stack is bad).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    attrNames
    concatStringsSep
    filterAttrs
    hasPrefix
    literalExpression
    mapAttrs'
    mkDefault
    mkIf
    mkMerge
    mkOption
    nameValuePair
    optional
    optionalAttrs
    types
    ;

  cfg = config.services.shoal;

  settingsFormat = pkgs.formats.toml { };

  # Fixed paths: the daemon reads these, the unit does not change when they do.
  configPath = "/etc/shoal/cluster.toml";
  stacksDir = "/etc/shoal/stacks";
  stateDir = "/var/lib/shoal";
  clusterPort = 4600;
  vxlanPort = 4789;

  # The cluster file as rendered from `settings`, then checked with the
  # daemon's own parser (`shoald --check-config`) when the system is built, as
  # the stacks are: an unknown key or a bad address fails `nixos-rebuild build`
  # instead of a restart of shoald into a configuration it refuses. The file
  # is checked under its real name, so problems read `cluster.toml:LINE:COL`.
  # The check does not read the token file (it is not in the build sandbox).
  renderedClusterFile = settingsFormat.generate "shoal-cluster.toml" cfg.settings;
  clusterFile =
    if cfg.checkConfig then
      pkgs.runCommand "shoal-cluster.toml"
        {
          nativeBuildInputs = [ cfg.package ];
          preferLocalBuild = true;
        }
        ''
          cp ${renderedClusterFile} cluster.toml
          shoald --check-config cluster.toml
          cp cluster.toml "$out"
        ''
    else
      renderedClusterFile;

  # The node-to-node port, from `settings.network.listen` ("IP:PORT", "[IPv6]:PORT"
  # or a bare IP, which keeps the default port).
  listenPort =
    let
      listen = cfg.settings.network.listen or "";
      parts = lib.splitString ":" listen;
      last = lib.last parts;
      hasPort =
        (lib.hasPrefix "[" listen || lib.length parts == 2) && builtins.match "[0-9]+" last != null;
    in
    if hasPort then lib.toInt last else clusterPort;

  # Whether a string is an IP address with an optional port, as the daemon
  # accepts for `network.advertise` (host names are refused there).
  isIpWithOptionalPort =
    addr:
    builtins.match "[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+(:[0-9]+)?" addr != null
    || builtins.match "\\[[0-9A-Fa-f:.]+](:[0-9]+)?" addr != null
    # a bare IPv6 address has at least two colons ("fd00::1", "::")
    || builtins.match "[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*" addr != null;

  # A stack's `source` must be something Nix copies into the store: a path
  # literal (./stacks/web.toml), a package, or a string that already names a
  # store path. A plain string such as "/srv/web.toml" type-checks as a path,
  # but the build sandbox cannot read it and its edits would never reload.
  isNixPath =
    source:
    builtins.isPath source
    || lib.isDerivation source
    || hasPrefix "${builtins.storeDir}/" (toString source);

  enabledStacks = filterAttrs (_: stack: stack.enable) cfg.stacks;

  # The file that ends up in /etc/shoal/stacks/<name>.toml: either the rendered
  # `settings` or `source`, checked with the daemon's own validator unless the
  # stack opts out. The stack name is the file stem, so the validator sees the
  # file under its real name and reports `<name>.toml:line:col`.
  #
  # A Compose `source` (a name ending in .yml or .yaml) is converted to the stack
  # file when the system is built, by `shoal stack convert`, which validates it
  # too (so it is converted even with `validate = false`): the daemon only reads
  # TOML. Variables are interpolated from the build's environment, which holds
  # none of yours, so give them defaults (`${TAG:-1.27}`) or write the values;
  # and write host paths of bind mounts as absolute paths.
  isCompose =
    source:
    source != null
    && (lib.hasSuffix ".yml" (toString source) || lib.hasSuffix ".yaml" (toString source));

  stackFile =
    name: stack:
    let
      file = lib.escapeShellArg "stacks/${name}.toml";
      raw =
        if stack.source != null then
          stack.source
        else
          settingsFormat.generate "shoal-stack-${name}.toml" stack.settings;
    in
    if isCompose stack.source then
      pkgs.runCommand "shoal-stack-${name}.toml"
        {
          nativeBuildInputs = [ cfg.package ];
          preferLocalBuild = true;
        }
        ''
          shoal stack convert --name ${lib.escapeShellArg name} ${raw} -o "$out"
        ''
    else if stack.validate then
      pkgs.runCommand "shoal-stack-${name}.toml"
        {
          nativeBuildInputs = [ cfg.package ];
          preferLocalBuild = true;
        }
        ''
          mkdir stacks
          cp ${raw} ${file}
          shoal stack validate ${file}
          cp ${file} "$out"
        ''
    else
      raw;

  stackFiles = lib.mapAttrs stackFile enabledStacks;

  # The one reload trigger: the list of the stack files. NixOS writes
  # X-Reload-Triggers only when the list is not empty, and
  # switch-to-configuration ignores a key that disappears, so a list of the
  # files themselves would not reload shoald when the last stack is removed
  # (the stack would keep running). This file always exists and changes
  # whenever a stack is added, changed or removed, down to "{}".
  stacksManifest = pkgs.writeText "shoal-stacks.json" (
    builtins.toJSON (lib.mapAttrs (_: toString) stackFiles)
  );

  stackNamePattern = "[A-Za-z0-9][A-Za-z0-9_.-]*";

  stackModule =
    { name, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
          description = ''
            Whether to deploy this stack. A stack that is disabled or removed
            from the configuration is removed from the cluster at the next
            reload.
          '';
        };

        settings = mkOption {
          type = settingsFormat.type;
          default = { };
          example = literalExpression ''
            {
              services.web = {
                image = "docker.io/library/nginx:1.27";
                replicas = 3;
                ports = [ "8080:80" ];
              };
            }
          '';
          description = ''
            The stack file as a Nix value, rendered to TOML at
            `/etc/shoal/stacks/${name}.toml`. See the stack file format in the
            shoal documentation (`[services.NAME]` with `image`, `replicas`,
            `mode`, `command`, `env`, `ports`, ...). Never put secrets here:
            the file is world-readable in the Nix store. A secret goes in
            `secrets.NAME.file` as the string path of a file outside the store
            (agenix's `/run/agenix/NAME`, sops-nix's `/run/secrets/NAME`),
            which shoald reads at every reload; a service names it in its
            `secrets`. Rotating the file does not reload shoald by itself: run
            `systemctl reload shoald` (for example from the secret manager's
            restart hook) to roll the services to the new content.
          '';
        };

        source = mkOption {
          type = types.nullOr types.path;
          default = null;
          example = literalExpression "./stacks/shop.toml";
          description = ''
            A hand-written stack file to use instead of `settings`: shoal's
            TOML, or a Compose file (a name ending in `.yml` or `.yaml`), which
            is converted to TOML with `shoal stack convert` when the system is
            built (variables come from the build, which has none of yours:
            give them defaults; write bind-mount host paths as absolute
            paths). It
            must be a Nix path such as `./stacks/shop.toml` (or a package or
            store path), which Nix copies into the store: a string such as
            `"/srv/shop.toml"` is refused, because the build cannot read it
            and editing it would never reload shoald.
          '';
        };

        validate = mkOption {
          type = types.bool;
          default = true;
          description = ''
            Whether to check the stack file with `shoal stack validate` when
            the system is built, so that a broken stack fails
            `nixos-rebuild build` instead of the switch. Only turn this off to
            test how a running cluster handles a bad file.
          '';
        };
      };
    };
in
{
  options.services.shoal = {
    enable = lib.mkEnableOption ''
      shoal, a Docker-Swarm-like container orchestrator (the `shoald` daemon and
      the `shoal` CLI). On its own this gives a single-node cluster: the host
      bootstraps as a manager that also runs tasks'';

    package = mkOption {
      type = types.package;
      default = pkgs.shoal or (pkgs.callPackage ./package.nix { });
      defaultText = literalExpression "pkgs.shoal or (pkgs.callPackage ./package.nix { })";
      description = ''
        The shoal package (daemon, CLI, D-Bus policy). Defaults to `pkgs.shoal`
        when the shoal flake's `overlays.default` is applied, and otherwise to
        a build of the source tree this module comes from.
      '';
    };

    role = mkOption {
      type = types.enum [
        "manager"
        "worker"
      ];
      default = "manager";
      description = ''
        The node's role. Managers keep the cluster state (Raft) and also run
        tasks unless drained; workers only run tasks. Run an odd number of
        managers (3 or 5) for fault tolerance.
      '';
    };

    bootstrap = mkOption {
      type = types.bool;
      default = cfg.role == "manager" && cfg.join == [ ];
      defaultText = literalExpression ''config.services.shoal.role == "manager" && config.services.shoal.join == [ ]'';
      description = ''
        Whether this node forms a new cluster when it has no state yet.
        Exactly one manager of a cluster may set this, and it has an empty
        `join`; every other node lists that manager (or any manager already
        in the cluster) in `join`. One
        host's configuration cannot see the others, so the module cannot check
        that only one host bootstraps: keep the cluster's hosts in one flake
        and set `bootstrap` on one of them. Ignored once the node has state
        in /var/lib/shoal.
      '';
    };

    join = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "192.168.1.10:4600"
        "192.168.1.11:4600"
      ];
      description = ''
        Managers (`host:port`) this node joins through when it has no state
        yet. Required on workers and on every manager but the bootstrapping
        one. Listing several managers lets a node join while one is down.
      '';
    };

    advertiseAddress = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "192.168.1.10:4600";
      description = ''
        The address other nodes use to reach this node: an IP address with
        an optional port (`192.168.1.10:4600`, `[fd00::1]:4600`,
        `192.168.1.10`; a bare IP gets the listen port). Host names are not
        accepted. Defaults (in the daemon) to the first non-loopback
        address: set it on hosts with several interfaces.
      '';
    };

    labels = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        zone = "a";
        disk = "ssd";
      };
      description = "Node labels, for placement constraints.";
    };

    tokenFile = mkOption {
      # lib since 2025-11 has externalPath (absolute, outside the store, not a
      # path literal); the assertions below say the same for older lib.
      type = types.nullOr (types.externalPath or types.str);
      default = null;
      example = "/run/keys/shoal-token";
      description = ''
        Absolute path of a file holding the cluster's join secret, read by
        shoald at start. It must live outside the Nix store (which is
        world-readable): use a secret manager (agenix, sops-nix) or copy the
        file there yourself, and give it as a string, not a Nix path literal
        (which would be copied into the store). Required on every node that
        joins. On the bootstrapping manager it holds the cluster's
        provisioning secret (any string of at least 16 characters); nodes
        whose token file holds the same secret join with their own `role`.
        A token printed by `shoal cluster join-token worker|manager` is also
        accepted on a joining node (a worker token only yields a worker).
        Changing the file's content does not restart shoald.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Whether to open the cluster ports: the node-to-node port
        (${toString clusterPort}/tcp, or the port of `settings.network.listen`;
        mutual TLS) and ${toString vxlanPort}/udp (overlay networks). It also
        sets `networking.firewall.checkReversePath` to `"loose"` (with
        `mkDefault`): VXLAN traffic decapsulated on the overlay interfaces
        fails the strict reverse-path check. Ports published by services are
        not opened.
      '';
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Whether to check the cluster file with `shoald --check-config` when
        the system is built, so that an unknown key or a bad value fails
        `nixos-rebuild build` rather than the restart of shoald during the
        switch (which would take the node out of the cluster's control
        plane until fixed). The token file is not read by the check.
      '';
    };

    settings = mkOption {
      type = types.submodule { freeformType = settingsFormat.type; };
      default = { };
      example = literalExpression ''
        {
          node.availability = "drain";
          cluster.settings.heartbeat_period = "1s";
          registries."registry.lan:5000".insecure = true;
        }
      '';
      description = ''
        The cluster file, `/etc/shoal/cluster.toml`, as a Nix value. `role`,
        `bootstrap`, `join`, `advertiseAddress`, `labels`, `tokenFile` and
        `images` are merged into it (`node.role`, `cluster.join`, ...); set
        them through those options. Unknown keys are errors, found at build
        time by `checkConfig`. A change restarts shoald (running containers
        are kept); so does a change of `images`, which are listed here.
      '';
    };

    stacks = mkOption {
      type = types.attrsOf (types.submodule stackModule);
      default = { };
      example = literalExpression ''
        {
          shop.settings.services.web = {
            image = "docker.io/library/nginx:1.27";
            replicas = 3;
            ports = [ "8080:80" ];
          };
          monitoring.source = ./stacks/monitoring.toml;
        }
      '';
      description = ''
        Stacks deployed from files, one `/etc/shoal/stacks/<name>.toml` each.
        Declare them on the managers (the same on all of them); workers do
        not read stack files. A change is applied with `systemctl reload
        shoald` during the switch, without restarting the daemon; a stack
        that shoal rejects fails the switch and the running stacks stay as
        they were.
      '';
    };

    images = mkOption {
      type = types.listOf types.package;
      default = [ ];
      example = literalExpression ''
        [
          (pkgs.dockerTools.buildImage {
            name = "hello";
            tag = "latest";
            copyToRoot = [ pkgs.hello ];
            config.Cmd = [ "/bin/hello" ];
          })
        ]
      '';
      description = ''
        Docker archive images (from `dockerTools.buildImage`,
        `buildLayeredImage` or `pullImage`; not the `stream*` variants) that
        shoald imports into containerd when it starts, so that hosts without
        registry access can run them. They are listed in the cluster file as
        `images.preload = [ "docker-archive:/nix/store/..." ]`. Stacks can
        also refer to an archive directly with
        `image = "docker-archive:''${image}"`.
      '';
    };

    extraPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      description = "Extra packages on shoald's `PATH`.";
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      services.shoal.settings = mkMerge [
        {
          node = {
            inherit (cfg) role;
          }
          // optionalAttrs (cfg.labels != { }) { inherit (cfg) labels; };
          cluster = {
            inherit (cfg) bootstrap;
          }
          // optionalAttrs (cfg.join != [ ]) { inherit (cfg) join; }
          // optionalAttrs (cfg.tokenFile != null) { token_file = cfg.tokenFile; };
          # The unit's StateDirectory and the stacks option rely on these.
          paths = {
            state_dir = stateDir;
            stacks_dir = stacksDir;
          };
          containerd.address = mkDefault "/run/containerd/containerd.sock";
        }
        (mkIf (cfg.advertiseAddress != null) { network.advertise = cfg.advertiseAddress; })
        (mkIf (cfg.images != [ ]) {
          images.preload = map (image: "docker-archive:${image}") cfg.images;
        })
      ];

      assertions = [
        {
          assertion = cfg.role == "worker" -> cfg.join != [ ];
          message = ''services.shoal: a worker needs at least one manager address in services.shoal.join (for example [ "192.168.1.10:4600" ])'';
        }
        {
          assertion = cfg.role == "worker" -> cfg.tokenFile != null;
          message = "services.shoal: a worker needs services.shoal.tokenFile, the path of a file holding the cluster's join token";
        }
        {
          assertion = cfg.role == "worker" -> !cfg.bootstrap;
          message = ''services.shoal: bootstrap cannot be set on a worker; set it on one manager (role = "manager")'';
        }
        {
          assertion = cfg.role == "manager" && cfg.bootstrap -> cfg.join == [ ];
          message = "services.shoal: a node either bootstraps a new cluster or joins one; remove services.shoal.join on the bootstrapping manager, or set services.shoal.bootstrap = false";
        }
        {
          assertion = cfg.role == "manager" && cfg.join != [ ] -> cfg.tokenFile != null;
          message = "services.shoal: a manager that joins a cluster needs services.shoal.tokenFile, the path of a file holding the cluster's join token";
        }
        {
          assertion = cfg.role == "manager" && !cfg.bootstrap -> cfg.join != [ ];
          message = ''services.shoal: a manager that does not bootstrap has nothing to do: list the managers to join through in services.shoal.join, or set services.shoal.bootstrap = true on the one manager that forms the cluster'';
        }
        {
          assertion = cfg.advertiseAddress != null -> isIpWithOptionalPort cfg.advertiseAddress;
          message = "services.shoal: advertiseAddress must be an IP address with an optional port (for example 192.168.1.10:4600), not '${toString cfg.advertiseAddress}': shoald does not resolve host names for it";
        }
        {
          assertion = cfg.tokenFile != null -> hasPrefix "/" cfg.tokenFile;
          message = "services.shoal: tokenFile must be an absolute path, got '${toString cfg.tokenFile}'";
        }
        {
          assertion = cfg.tokenFile != null -> !hasPrefix "${builtins.storeDir}/" cfg.tokenFile;
          message = "services.shoal: tokenFile points into the Nix store, which is world-readable; keep the join token in a file outside the store (for example with agenix or sops-nix)";
        }
      ]
      ++ lib.mapAttrsToList (name: stack: {
        assertion = builtins.match stackNamePattern name != null;
        message = "services.shoal.stacks.${name}: a stack name must start with a letter or digit and contain only letters, digits, '_', '.' and '-'";
      }) cfg.stacks
      ++ lib.mapAttrsToList (name: stack: {
        assertion = !(stack.source != null && stack.settings != { });
        message = "services.shoal.stacks.${name}: set either settings or source, not both";
      }) cfg.stacks
      ++ lib.concatLists (
        lib.mapAttrsToList (
          name: stack:
          lib.mapAttrsToList (secret: s: {
            # A secret's file is read by shoald at reload time, from the node: a path
            # outside the store that a secret manager (agenix, sops-nix) writes.
            assertion =
              !(builtins.isAttrs s && s ? file)
              || (
                builtins.isString s.file
                && hasPrefix "/" s.file
                && !hasPrefix "${builtins.storeDir}/" s.file
              );
            message = "services.shoal.stacks.${name}.settings.secrets.${secret}.file must be an absolute path outside the Nix store, given as a string (for example \"/run/agenix/${secret}\" from agenix or sops-nix): the store is world-readable, and a Nix path literal would be copied into it";
          }) (stack.settings.secrets or { })
        ) cfg.stacks
      )
      ++ lib.mapAttrsToList (name: stack: {
        assertion = stack.source != null -> isNixPath stack.source;
        message = "services.shoal.stacks.${name}.source must be a Nix path such as ./stacks/${name}.toml (or a package or store path), not the string '${toString stack.source}': the build cannot read files outside the Nix store, and edits to that file would never reload shoald";
      }) cfg.stacks;

      warnings = optional (
        cfg.role == "worker" && enabledStacks != { }
      ) "services.shoal.stacks (${concatStringsSep ", " (attrNames enabledStacks)}) is set on a worker, which does not read stack files; declare stacks on the managers";

      virtualisation.containerd.enable = mkDefault true;

      environment.systemPackages = [ cfg.package ];

      environment.etc = {
        "shoal/cluster.toml".source = clusterFile;
      }
      // mapAttrs' (
        name: file: nameValuePair "shoal/stacks/${name}.toml" { source = file; }
      ) stackFiles;

      # Keep the stacks directory when no stack is declared, so that a reload
      # after the last stack is removed sees an empty directory.
      systemd.tmpfiles.rules = [ "d ${stacksDir} 0755 root root -" ];

      services.dbus.packages = [ cfg.package ];

      # Members may change the cluster through the D-Bus API (see the policy
      # file org.shoal.Shoal1.conf); reading is open to every local user.
      users.groups.shoal = { };

      # Service IPs, published ports and overlay networks route through the host.
      boot.kernel.sysctl = {
        "net.ipv4.conf.all.forwarding" = mkDefault true;
        "net.ipv4.conf.default.forwarding" = mkDefault true;
      };

      systemd.services.shoald = {
        description = "shoal container orchestrator";
        wantedBy = [ "multi-user.target" ];
        # Wants, not Requires: restarting or upgrading containerd must not
        # restart shoald.
        wants = [
          "containerd.service"
          "network-online.target"
        ];
        after = [
          "containerd.service"
          "network-online.target"
          "dbus.service"
        ];
        # The external commands shoald runs: nft (service IPs, published
        # ports) and iptables (cleanup of legacy rules).
        path = [
          cfg.package
          pkgs.nftables
          pkgs.iptables
        ]
        ++ cfg.extraPackages;

        # Stacks change: `systemctl reload` (shoal reload), including when the
        # last stack is removed (see stacksManifest). The cluster file or the
        # binary change: one restart at the end of the switch
        # (stopIfChanged = false); containers keep running either way.
        reloadTriggers = [ stacksManifest ];
        restartTriggers = [
          clusterFile
          cfg.package
        ];
        stopIfChanged = false;

        # Give up after 5 failed starts in a minute instead of restarting forever.
        startLimitIntervalSec = 60;
        startLimitBurst = 5;

        serviceConfig = {
          Type = "notify";
          NotifyAccess = "main";
          BusName = "org.shoal.Shoal1";
          ExecStart = "${cfg.package}/bin/shoald --config ${configPath}";
          # Synchronous: validates every stack file and applies the changes,
          # or fails and leaves the running state untouched.
          ExecReload = "${cfg.package}/bin/shoal reload";
          WatchdogSec = "30s";
          Restart = "on-failure";
          RestartSec = "2s";
          # Joining, image preloading: more than the default 90 s on a slow
          # host. systemd applies it to reloads too.
          TimeoutStartSec = "5min";
          # Time to finish in-flight requests and flush the store. A stop is
          # not a leave: a stopped manager stays a Raft member, and its tasks
          # keep running (see KillMode below).
          TimeoutStopSec = "60s";
          # Raft log and snapshots, node identity, certificates.
          StateDirectory = "shoal";
          StateDirectoryMode = "0700";
          # Network namespace bind mounts of running tasks: kept across restarts.
          RuntimeDirectory = "shoal";
          RuntimeDirectoryPreserve = "yes";
          # Containers outlive the daemon: their shims live in containerd's
          # cgroup; only shoald itself is stopped.
          KillMode = "process";
          Delegate = false;
          LimitNOFILE = 1048576;
          # Keep the control plane alive under memory pressure (containerd: -999).
          OOMScoreAdjust = -500;
          # No sandboxing (ProtectSystem=, PrivateTmp=, ...), like the
          # containerd, docker and k3s units: shoald runs as root, creates
          # network namespaces and bind mounts under /run/shoal, edits
          # nftables, and hands paths on the host to containerd, which a
          # private mount namespace would hide from it.
        };
      };
    }

    {
      # Tasks on overlay networks ask the node's DNS server for service names, on
      # the node bridge's gateway address: the firewall must let them in there
      # (that interface only; nothing opens to the network).
      networking.firewall.interfaces.${cfg.settings.network.bridge or "shoal0"}.allowedUDPPorts = [
        53
      ];
    }

    (mkIf cfg.openFirewall {
      networking.firewall.allowedTCPPorts = [ listenPort ];
      networking.firewall.allowedUDPPorts = [ vxlanPort ];
      # VXLAN traffic decapsulated on the overlay interfaces arrives on an
      # interface the strict check does not route back through.
      networking.firewall.checkReversePath = mkDefault "loose";
    })
  ]);
}
