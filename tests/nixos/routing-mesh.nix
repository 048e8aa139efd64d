# The routing mesh: a service's published port answers on every node, also on
# the nodes that run none of its tasks. Needs cluster networking (overlay,
# routing mesh across nodes), a later issue than multi-node clusters: this test
# is not in the flake's `checks` yet but in `legacyPackages.<system>.pendingChecks`
# (`nix build .#pendingChecks.routing-mesh`). See docs/nixos.md.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
in
{
  name = "shoal-routing-mesh";

  nodes = common.clusterNodes {
    stack = common.webStack {
      message = "hello from the mesh";
      replicas = 2;
    };
  };

  testScript = common.helpers + builtins.readFile ./routing-mesh.py;
}
