# Test script for tests/nixos/failover.nix (helpers.py is prepended).
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
MESSAGE = "hello from the cluster"


def running_outside(observer, down, expected):
    """Probe: `expected` running tasks, none of them on a node in `down`."""

    def probe():
        counts = running_tasks(observer, SERVICE, HOSTNAMES)
        alive = sum(n for name, n in counts.items() if name not in down)
        return alive == expected and all(counts[name] == 0 for name in down), counts

    return probe


start_all()
for m in by_name.values():
    m.wait_for_unit("shoald.service")
for m in by_name.values():
    wait_for_ready_nodes(m, 5)
wait_for("4 demo_web tasks", running_outside(manager1, [], 4))

with subtest("a crashed worker's tasks come back on the other nodes"):
    counts = running_tasks(manager1, SERVICE, HOSTNAMES)
    # 4 tasks spread over 5 nodes: at least one worker runs one.
    victim = max(["worker1", "worker2"], key=lambda name: counts[name])
    t.assertGreater(counts[victim], 0, counts)
    by_name[victim].crash()
    wait_for(
        f"{victim} to be reported down",
        lambda: (lambda row: (row is not None and "Down" in row, row))(row_of(node_rows(manager1), victim)),
    )
    wait_for(f"4 tasks on the nodes other than {victim}", running_outside(manager2, [victim], 4))
    survivor_worker = "worker2" if victim == "worker1" else "worker1"
    wait_for_http(by_name[survivor_worker], "http://127.0.0.1:8080/", MESSAGE)

with subtest("the leader crashes: a new leader keeps acknowledged changes and accepts new ones"):
    old_leader = leader(manager1, HOSTNAMES)
    t.assertIn(old_leader, MANAGERS)
    followers = [name for name in MANAGERS if name != old_leader]
    # An acknowledged write, made through the leader just before it dies.
    by_name[old_leader].succeed(f"shoal service scale {SERVICE}=5")
    wait_for("5 tasks", running_outside(by_name[followers[0]], [victim], 5))
    by_name[old_leader].crash()
    observer = by_name[followers[0]]
    new_leader = wait_for(
        "a new leader",
        lambda: (lambda name: (name in followers, name))(leader(observer, HOSTNAMES)),
    )
    t.assertEqual(leader(by_name[followers[1]], HOSTNAMES), new_leader)
    wait_for(
        f"{old_leader} to be reported unreachable",
        lambda: (
            lambda row: (row is not None and ("Down" in row or "Unreachable" in row), row)
        )(row_of(node_rows(observer), old_leader)),
    )
    # No acknowledged write is lost.
    t.assertEqual(replicas_column(observer, SERVICE).split("/")[1], "5")
    wait_for("5 tasks on the nodes still up", running_outside(observer, [victim, old_leader], 5))
    # The new leader accepts changes, through either remaining manager.
    by_name[followers[1]].succeed(f"shoal service scale {SERVICE}=3")
    wait_for("3 tasks", running_outside(observer, [victim, old_leader], 3))
    wait_for(
        f"{survivor_worker} to report 3/3 replicas",
        lambda: (lambda r: (r == "3/3", r))(replicas_column(by_name[survivor_worker], SERVICE)),
    )
