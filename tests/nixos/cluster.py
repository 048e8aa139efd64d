# Test script for tests/nixos/cluster.nix (helpers.py is prepended).
# What the multi-node issue delivers: a cluster formed from configuration, one
# Leader and Reachable managers, a service spread over the nodes, scaling
# through a follower and through a worker, drain, promote and demote. The
# routing mesh (a published port answering on a node without a task) needs
# cluster networking and is tested by routing-mesh.py, outside `checks`.
by_name = {
    "manager1": manager1,
    "manager2": manager2,
    "manager3": manager3,
    "worker1": worker1,
    "worker2": worker2,
}
HOSTNAMES = sorted(by_name)
MANAGERS = ["manager1", "manager2", "manager3"]
# The stack's service, declared in /etc/shoal/stacks/demo.toml by the module,
# and a copy of it made from the CLI, which the subtests scale and move.
STACK_SERVICE = "demo_web"
SERVICE = "web"


def spread(observer: Node, expected: dict[str, int], service: str = SERVICE) -> Callable[[], tuple[bool, Any]]:
    """Probe: the running tasks of `service` per node are exactly `expected`."""

    def probe() -> tuple[bool, Any]:
        counts = running_tasks(observer, service, HOSTNAMES)
        return counts == expected, counts

    return probe


def total(observer: Node, expected: int, excluded: list[str]) -> Callable[[], tuple[bool, Any]]:
    """Probe: `expected` running tasks of SERVICE, none on the `excluded` nodes."""

    def probe() -> tuple[bool, Any]:
        counts = running_tasks(observer, SERVICE, HOSTNAMES)
        ok = sum(counts.values()) == expected and all(counts[name] == 0 for name in excluded)
        return ok, counts

    return probe


# The joining nodes start at once and keep retrying until manager1 answers
# (their unit is active meanwhile), so there is no start order to respect;
# everything below waits for the cluster to reach the state it checks.
start_all()
for m in by_name.values():
    m.wait_for_unit("shoald.service")

with subtest("five nodes form one cluster from their configuration"):
    for m in by_name.values():
        wait_for_ready_nodes(m, HOSTNAMES)
    the_leader = wait_for_leader(manager1, MANAGERS)

    def formed() -> tuple[bool, Any]:
        rows = nodes(manager1)
        statuses = {str(row["name"]): manager_status(row) for row in rows}
        expected = {name: ("Leader" if name == the_leader else "Reachable") for name in MANAGERS}
        expected.update({"worker1": "", "worker2": ""})
        return statuses == expected, statuses

    wait_for("one Leader, two Reachable managers, workers without manager status", formed)
    for name, m in by_name.items():
        row = node(m, name)
        t.assertIsNotNone(row)
        assert row is not None
        t.assertTrue(row.get("is_self"), row)
        t.assertEqual(field(row, "role"), "manager" if name in MANAGERS else "worker", row)
    # Every node's CLI sees the same leader (followers and workers forward).
    for m in by_name.values():
        t.assertEqual(wait_for_leader(m, MANAGERS), the_leader)
    manager2.succeed("shoal info")

with subtest("the stack's service spreads over every node"):
    manager2.succeed("shoal stack ls | grep -w demo")
    wait_for(
        "one demo_web task on each of the five nodes",
        spread(manager1, {name: 1 for name in HOSTNAMES}, STACK_SERVICE),
    )
    for m in by_name.values():
        wait_for(f"one container in {m.name}'s containerd", containers_probe(m, 1))

with subtest("a stack file's service is changed in its file only"):
    rc, out = manager2.execute(f"shoal service scale {STACK_SERVICE}=2 2>&1")
    t.assertNotEqual(rc, 0, out)
    t.assertIn("/etc/shoal/stacks/demo.toml", out)
    wait_for_replicas(manager1, STACK_SERVICE, "5/5")
    cli_copy_of(manager1, STACK_SERVICE, SERVICE, 5)
    wait_for(f"one {SERVICE} task on each of the five nodes", spread(manager1, {name: 1 for name in HOSTNAMES}))

with subtest("scaling down through a follower"):
    follower = next(name for name in MANAGERS if name != the_leader)
    by_name[follower].succeed(f"shoal service scale {SERVICE}=2")
    wait_for(f"{SERVICE} to run 2 tasks", total(manager1, 2, []))
    wait_for_replicas(worker1, SERVICE, "2/2")

with subtest("scaling up through a worker"):
    worker2.succeed(f"shoal service scale {SERVICE}=5")
    wait_for(f"one {SERVICE} task on each node again", spread(manager3, {name: 1 for name in HOSTNAMES}))
    wait_for_replicas(manager1, SERVICE, "5/5")

with subtest("a drained worker runs no task; its tasks run elsewhere"):
    manager1.succeed("shoal node update --availability drain worker1")
    wait_for(
        "worker1 to be drained",
        lambda: (lambda row: (field(row, "availability") == "drain", row))(node(manager2, "worker1")),
    )
    wait_for(f"5 {SERVICE} tasks, none on worker1", total(manager1, 5, ["worker1"]))
    wait_for("worker1's containers to stop", containers_probe(worker1, 0))
    manager1.succeed("shoal node update --availability active worker1")
    wait_for(
        "worker1 to be active again",
        lambda: (lambda row: (field(row, "availability") == "active", row))(node(manager3, "worker1")),
    )

with subtest("a worker promoted to manager, then demoted"):
    manager2.succeed("shoal node promote worker2")
    wait_for(
        "worker2 to be a Reachable manager",
        lambda: (lambda row: (field(row, "role") == "manager" and manager_status(row) == "Reachable", row))(
            node(manager1, "worker2")
        ),
    )
    # The new manager answers from its own copy of the state.
    wait_for_replicas(worker2, SERVICE, "5/5")
    manager3.succeed("shoal node demote worker2")
    wait_for(
        "worker2 to be a worker again",
        lambda: (lambda row: (field(row, "role") == "worker" and manager_status(row) == "", row))(
            node(manager1, "worker2")
        ),
    )
    t.assertEqual(wait_for_leader(worker2, MANAGERS), wait_for_leader(manager1, MANAGERS))
    wait_for(f"5 {SERVICE} tasks", total(manager2, 5, []))
