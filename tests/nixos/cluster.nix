# Three managers and two workers form a cluster from their configuration alone
# (one Leader, Reachable managers); a stack declared on the managers spreads
# over every node and scales through a follower and a worker; drain, promote
# and demote work. The routing mesh is routing-mesh.nix (not in `checks` yet).
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
in
{
  name = "shoal-cluster";

  nodes = common.clusterNodes {
    stack = common.webStack {
      message = "hello from the cluster";
      replicas = 5;
    };
  };

  testScript = common.helpers + builtins.readFile ./cluster.py;
}
