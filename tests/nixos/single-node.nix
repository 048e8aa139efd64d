# `services.shoal.enable` alone: a one-node cluster serving a stack declared in
# the configuration, D-Bus access rules, containers that outlive the daemon.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
in
{
  name = "shoal-single-node";

  nodes.machine = {
    imports = [ common.node ];
    services.shoal.stacks.hello.settings = common.webStack { message = "hello from shoal"; };
    users.users.alice.isNormalUser = true;
    users.users.bob = {
      isNormalUser = true;
      extraGroups = [ "shoal" ];
    };
  };

  testScript = common.helpers + builtins.readFile ./single-node.py;
}
