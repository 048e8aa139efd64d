# Three managers and two workers form a cluster from their configuration alone;
# a stack declared on the managers spreads over every node, scales, and its
# published port answers on a node that runs none of its tasks.
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
