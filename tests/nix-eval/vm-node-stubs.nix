# Stand-ins for the further options that the VM test nodes (tests/nixos/*.nix)
# set, so that eval.nix can evaluate those nodes with the module and check the
# premises of the VM tests (who bootstraps, who joins, what a specialisation
# changes) without building anything.
{ lib, ... }:
let
  inherit (lib) mkOption types;
in
{
  options = {
    networking.hostName = mkOption { type = types.str; };
    networking.primaryIPAddress = mkOption { type = types.str; };
    virtualisation.memorySize = mkOption {
      type = types.ints.positive;
      default = 1024;
    };
    virtualisation.diskSize = mkOption {
      type = types.ints.positive;
      default = 1024;
    };
    users.users = mkOption {
      type = types.attrsOf (
        types.submodule {
          options.isNormalUser = mkOption {
            type = types.bool;
            default = false;
          };
          options.extraGroups = mkOption {
            type = types.listOf types.str;
            default = [ ];
          };
        }
      );
      default = { };
    };
    specialisation = mkOption {
      type = types.attrsOf (
        types.submodule {
          options.configuration = mkOption {
            type = types.deferredModule;
            default = { };
          };
        }
      );
      default = { };
    };
  };
}
