# Shared by the VM tests: a web server image built with dockerTools (the VMs
# have no registry and no internet), a stack that serves it, and the settings
# every node gets.
{ pkgs }:
rec {
  # busybox, answering HTTP on port 80 with the content of /www.
  webImage = pkgs.dockerTools.buildImage {
    name = "shoal-test-web";
    tag = "latest";
    copyToRoot = pkgs.buildEnv {
      name = "shoal-test-web-root";
      paths = [ pkgs.busybox ];
      pathsToLink = [ "/bin" ];
    };
    config = {
      Env = [ "PATH=/bin" ];
      Cmd = [
        "/bin/httpd"
        "-f"
        "-p"
        "80"
      ];
    };
  };

  # A stack with one service, `web`, that answers `message` on port 8080.
  webStack =
    {
      message,
      replicas ? 1,
    }:
    {
      services.web = {
        image = "docker-archive:${webImage}";
        inherit replicas;
        command = [
          "/bin/sh"
          "-c"
          ''mkdir -p /www && echo "$MESSAGE" > /www/index.html && exec httpd -f -p 80 -h /www''
        ];
        env.MESSAGE = message;
        ports = [ "8080:80" ];
      };
    };

  # Every node: the module, the image preloaded, the published port reachable
  # from the other VMs, tools the test scripts use.
  node =
    { ... }:
    {
      imports = [ ../../nixos-module ];
      services.shoal.enable = true;
      services.shoal.images = [ webImage ];
      networking.firewall.allowedTCPPorts = [ 8080 ];
      # curl for the published ports, ctr to look at containerd directly.
      environment.systemPackages = [
        pkgs.curl
        pkgs.containerd
      ];
      virtualisation.memorySize = 1536;
      virtualisation.diskSize = 4096;
    };

  # The cluster used by the cluster, failover and routing-mesh tests: manager1
  # bootstraps, manager2, manager3, worker1 and worker2 join through it with
  # their own role, all with the same provisioning secret in their token file
  # (a fixed one: fine in a test, never in production, where the token file
  # comes from a secret manager). The joining nodes start at the same time as
  # manager1 and retry until it answers. `stack` is declared on every manager.
  clusterNodes =
    { stack }:
    let
      token = "shoal-vm-test-join-token-6f1c0e9a4b7d2853";
      clusterNode =
        role:
        {
          config,
          nodes,
          lib,
          ...
        }:
        {
          imports = [ node ];
          environment.etc."shoal/join-token" = {
            text = token;
            mode = "0400";
          };
          services.shoal = {
            inherit role;
            join = lib.optional (config.networking.hostName != "manager1") "${nodes.manager1.networking.primaryIPAddress}:4600";
            tokenFile = "/etc/shoal/join-token";
            # eth0 is QEMU's user network, the same address on every VM.
            advertiseAddress = "${config.networking.primaryIPAddress}:4600";
            openFirewall = true;
            # Cluster-wide, taken at bootstrap: a node is down after three
            # missed heartbeats, so failover is quick.
            settings = lib.mkIf (config.networking.hostName == "manager1") {
              cluster.settings.heartbeat_period = "1s";
            };
            stacks = lib.mkIf (role == "manager") { demo.settings = stack; };
          };
          # openFirewall also loosens the reverse-path check for VXLAN
          # (networking.firewall.checkReversePath = mkDefault "loose").
        };
    in
    {
      manager1 = clusterNode "manager";
      manager2 = clusterNode "manager";
      manager3 = clusterNode "manager";
      worker1 = clusterNode "worker";
      worker2 = clusterNode "worker";
    };

  # Python helpers shared by the test scripts.
  helpers = builtins.readFile ./helpers.py;
}
