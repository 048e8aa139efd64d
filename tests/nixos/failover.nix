# Failover: a crashed worker's tasks come back on other nodes; when the leader
# crashes, the remaining managers elect a new one that keeps every acknowledged
# change and accepts new ones, and the dead nodes are reported Down and their
# tasks replaced; the crashed leader then restarts and rejoins as a manager.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
in
{
  name = "shoal-failover";

  nodes = common.clusterNodes {
    stack = common.webStack {
      message = "hello from the cluster";
      replicas = 4;
    };
  };

  testScript = common.helpers + builtins.readFile ./failover.py;
}
