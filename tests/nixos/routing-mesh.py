# Test script for tests/nixos/routing-mesh.nix (helpers.py is prepended).
by_name = {
    "manager1": manager1,
    "manager2": manager2,
    "manager3": manager3,
    "worker1": worker1,
    "worker2": worker2,
}
HOSTNAMES = sorted(by_name)
MANAGERS = ["manager1", "manager2", "manager3"]
SERVICE = "demo_web"
MESSAGE = "hello from the mesh"


def cluster_address(m: Node) -> str:
    """The node's address on the test network (eth1). Not its host name: NixOS
    maps a host's own name to 127.0.0.2, which would test loopback DNAT rather
    than the mesh when a node asks itself."""
    out = m.succeed("ip -4 -o addr show dev eth1 | awk '{print $4}' | cut -d/ -f1")
    return out.strip()


start_all()
for m in by_name.values():
    m.wait_for_unit("shoald.service")
for m in by_name.values():
    wait_for_ready_nodes(m, HOSTNAMES)
wait_for_leader(manager1, MANAGERS)


def two_tasks() -> tuple[bool, Any]:
    counts = running_tasks(manager1, SERVICE, HOSTNAMES)
    return sum(counts.values()) == 2, counts


counts: dict[str, int] = wait_for("2 demo_web tasks", two_tasks)
addresses = {name: cluster_address(m) for name, m in by_name.items()}

with subtest("the published port answers on every node, also on those without a task"):
    idle = [name for name in HOSTNAMES if counts[name] == 0]
    t.assertEqual(len(idle), 3, counts)
    for name in idle:
        m = by_name[name]
        wait_for(f"{name} to run no container", containers_probe(m, 0))
        # From every node, the idle one included.
        for client in by_name.values():
            wait_for_http(client, f"http://{addresses[name]}:8080/", MESSAGE)
