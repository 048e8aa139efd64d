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
# The stack's service (declared in a file by the module, serving MESSAGE on
# 8080) is copied from the CLI as SERVICE, which the test scales: a stack
# file's service is changed in its file only.
SERVICE = "web"
MESSAGE = "hello from the cluster"


def running_outside(observer: Node, down: list[str], expected: int) -> Callable[[], tuple[bool, Any]]:
    """Probe: `expected` running tasks, none of them on a node in `down`."""

    def probe() -> tuple[bool, Any]:
        counts = running_tasks(observer, SERVICE, HOSTNAMES)
        alive = sum(n for name, n in counts.items() if name not in down)
        return alive == expected and all(counts[name] == 0 for name in down), counts

    return probe


def reported_down(observer: Node, name: str) -> Callable[[], tuple[bool, Any]]:
    """Probe: `observer` lists node `name` as Down."""

    def probe() -> tuple[bool, Any]:
        row = node(observer, name)
        return is_down(row), row

    return probe


# No start order: joining nodes retry until manager1 answers. Wait for the
# whole cluster and for the stack instead.
start_all()
for m in by_name.values():
    m.wait_for_unit("shoald.service")
for m in by_name.values():
    wait_for_ready_nodes(m, HOSTNAMES)
wait_for_leader(manager1, MANAGERS)
wait_for_replicas(manager1, "demo_web", "4/4")
cli_copy_of(manager1, "demo_web", SERVICE, 4)
wait_for(f"4 {SERVICE} tasks", running_outside(manager1, [], 4))

with subtest("a crashed worker is reported Down and its tasks come back on the other nodes"):
    counts = running_tasks(manager1, SERVICE, HOSTNAMES)
    # 4 tasks spread over 5 nodes: at least one worker runs one.
    victim = max(["worker1", "worker2"], key=lambda name: counts[name])
    t.assertGreater(counts[victim], 0, counts)
    by_name[victim].crash()
    wait_for(f"{victim} to be reported Down", reported_down(manager1, victim))
    wait_for(f"4 tasks on the nodes other than {victim}", running_outside(manager2, [victim], 4))
    survivor_worker = "worker2" if victim == "worker1" else "worker1"
    wait_for_http(by_name[survivor_worker], "http://127.0.0.1:8080/", MESSAGE)

with subtest("the leader crashes: a new leader keeps acknowledged changes and accepts new ones"):
    old_leader = wait_for_leader(manager1, MANAGERS)
    followers = [name for name in MANAGERS if name != old_leader]
    # An acknowledged write, made through the leader just before it dies.
    by_name[old_leader].succeed(f"shoal service scale {SERVICE}=5")
    wait_for("5 tasks", running_outside(by_name[followers[0]], [victim], 5))
    by_name[old_leader].crash()
    # Both survivors must agree on a new leader; neither is read only once
    # (right after an election a follower may not know the winner yet).
    new_leader = wait_for_leader(by_name[followers[0]], followers)
    t.assertEqual(wait_for_leader(by_name[followers[1]], followers), new_leader)
    observer = by_name[new_leader]
    wait_for(f"{old_leader} to be reported Down", reported_down(observer, old_leader))
    wait_for(
        f"{old_leader} to be Unreachable as a manager",
        lambda: (lambda row: (manager_status(row) == "Unreachable", row))(node(observer, old_leader)),
    )
    # No acknowledged write is lost: the new leader still wants 5 replicas,
    # and the dead leader's tasks are replaced on the nodes still up.
    wait_for(
        "the new leader to report 5 desired replicas",
        lambda: (lambda r: (r is not None and r.split("/")[1] == "5", r))(replicas_column(observer, SERVICE)),
    )
    wait_for("5 tasks on the nodes still up", running_outside(observer, [victim, old_leader], 5))
    # The new leader accepts changes, through either remaining manager and a worker.
    by_name[followers[1]].succeed(f"shoal service scale {SERVICE}=3")
    wait_for("3 tasks", running_outside(observer, [victim, old_leader], 3))
    by_name[survivor_worker].succeed(f"shoal service scale {SERVICE}=4")
    wait_for("4 tasks", running_outside(by_name[followers[0]], [victim, old_leader], 4))
    wait_for_replicas(by_name[survivor_worker], SERVICE, "4/4")

with subtest("the crashed leader comes back and rejoins as a manager"):
    by_name[old_leader].start()
    by_name[old_leader].wait_for_unit("shoald.service")
    wait_for(
        f"{old_leader} to be Ready and Reachable again",
        lambda: (lambda row: (row is not None and is_ready(row) and manager_status(row) in ["Reachable", "Leader"], row))(
            node(observer, old_leader)
        ),
    )
    t.assertIn(wait_for_leader(by_name[old_leader], MANAGERS), MANAGERS)
    wait_for_replicas(by_name[old_leader], SERVICE, "4/4")
