# Stand-ins for the NixOS options that services.shoal sets, with the types
# NixOS gives them, so that `lib.evalModules` can run the module without
# nixpkgs. Only what the module touches is declared: a typo or a wrong type in
# the module fails the evaluation as it would on NixOS.
{ lib, ... }:
let
  inherit (lib) mkOption types;

  # systemd's unit options accept booleans, numbers, strings and lists of them.
  unitValue = types.oneOf [
    types.bool
    types.int
    types.str
    types.path
    (types.listOf (
      types.oneOf [
        types.bool
        types.int
        types.str
      ]
    ))
  ];

  serviceModule = {
    options = {
      description = mkOption {
        type = types.str;
        default = "";
      };
      wantedBy = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      wants = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      requires = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      bindsTo = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      after = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      path = mkOption {
        type = types.listOf (types.either types.package types.str);
        default = [ ];
      };
      environment = mkOption {
        type = types.attrsOf (types.nullOr (types.either types.str types.path));
        default = { };
      };
      reloadTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      restartTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      stopIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      startLimitIntervalSec = mkOption {
        type = types.nullOr types.ints.unsigned;
        default = null;
      };
      startLimitBurst = mkOption {
        type = types.nullOr types.ints.unsigned;
        default = null;
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      reloadIfChanged = mkOption {
        type = types.bool;
        default = false;
      };
      unitConfig = mkOption {
        type = types.attrsOf unitValue;
        default = { };
      };
      serviceConfig = mkOption {
        type = types.attrsOf unitValue;
        default = { };
      };
    };
  };

  etcModule =
    { name, config, ... }:
    {
      # NixOS writes `text` to the store and uses that as the source.
      config.source = lib.mkIf (config.text != null) (
        lib.mkDefault "/nix/store/00000000000000000000000000000000-etc-${baseNameOf name}"
      );
      options = {
        source = mkOption { type = types.path; };
        text = mkOption {
          type = types.nullOr types.lines;
          default = null;
        };
        mode = mkOption {
          type = types.str;
          default = "symlink";
        };
        target = mkOption {
          type = types.str;
          default = name;
        };
      };
    };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    environment.etc = mkOption {
      type = types.attrsOf (types.submodule etcModule);
      default = { };
    };
    users.groups = mkOption {
      type = types.attrsOf (
        types.submodule {
          options.gid = mkOption {
            type = types.nullOr types.int;
            default = null;
          };
          options.members = mkOption {
            type = types.listOf types.str;
            default = [ ];
          };
        }
      );
      default = { };
    };
    networking.firewall.allowedTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
    };
    networking.firewall.allowedUDPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
    };
    # As nixpkgs declares it: per-interface openings.
    networking.firewall.interfaces = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            allowedTCPPorts = mkOption {
              type = types.listOf types.port;
              default = [ ];
            };
            allowedUDPPorts = mkOption {
              type = types.listOf types.port;
              default = [ ];
            };
          };
        }
      );
      default = { };
    };
    networking.firewall.checkReversePath = mkOption {
      type = types.either types.bool (
        types.enum [
          "strict"
          "loose"
        ]
      );
      default = true;
    };
    services.dbus.packages = mkOption {
      type = types.listOf types.path;
      default = [ ];
    };
    virtualisation.containerd.enable = mkOption {
      type = types.bool;
      default = false;
    };
    boot.kernel.sysctl = mkOption {
      type = types.attrsOf (
        types.nullOr (
          types.oneOf [
            types.bool
            types.str
            types.int
          ]
        )
      );
      default = { };
    };
    systemd.tmpfiles.rules = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    systemd.services = mkOption {
      type = types.attrsOf (types.submodule serviceModule);
      default = { };
    };
  };
}
