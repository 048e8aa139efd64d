# A stack change through a configuration switch is a reload of shoald, never a
# stop; a stack that shoal rejects fails the switch and leaves the running
# stack alone; removing the last stack reloads too and removes it; a change of
# the cluster file restarts shoald once and keeps the containers. The switches
# go between specialisations of one machine.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
in
{
  name = "shoal-reload";

  nodes.machine =
    { lib, ... }:
    {
      imports = [ common.node ];
      services.shoal.stacks.demo.settings = common.webStack { message = "version one"; };

      specialisation.v2.configuration = {
        services.shoal.stacks.demo.settings.services.web.env.MESSAGE = lib.mkForce "version two";
      };

      # The only stack removed: NixOS drops X-Reload-Triggers when the list
      # is empty, so the module keeps one trigger that lists the stacks.
      specialisation.empty.configuration = {
        services.shoal.stacks.demo.enable = lib.mkForce false;
      };

      # A cluster setting changes: a restart, not a reload.
      specialisation.relabelled.configuration = {
        services.shoal.labels.zone = "b";
      };

      # Build-time validation would refuse this stack: skip it to see what a
      # running cluster does with a bad file.
      specialisation.broken.configuration = {
        services.shoal.stacks.demo = {
          validate = false;
          settings.services.web.replicas = lib.mkForce "three";
        };
      };
    };

  testScript = common.helpers + builtins.readFile ./reload.py;
}
