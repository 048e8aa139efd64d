# Test script for tests/nixos/cluster.nix (helpers.py is prepended).
managers = [manager1, manager2, manager3]
workers = [worker1, worker2]
everyone = managers + workers
HOSTNAMES = ["manager1", "manager2", "manager3", "worker1", "worker2"]
SERVICE = "demo_web"
MESSAGE = "hello from the cluster"

start_all()
for m in everyone:
    m.wait_for_unit("shoald.service")

with subtest("five nodes form one cluster from their configuration"):
    for m in everyone:
        wait_for_ready_nodes(m, 5)
    rows = node_rows(manager1)
    t.assertEqual(sum(1 for row in rows if "Leader" in row), 1, rows)
    t.assertEqual(sum(1 for row in rows if "Reachable" in row), 2, rows)
    for name in ["worker1", "worker2"]:
        row = row_of(rows, name)
        t.assertIsNotNone(row, rows)
        t.assertNotIn("Leader", row)
        t.assertNotIn("Reachable", row)
    # Every node's CLI sees the same leader (followers and workers forward).
    leaders = {leader(m, HOSTNAMES) for m in everyone}
    t.assertEqual(len(leaders), 1, leaders)
    t.assertIn(leaders.pop(), ["manager1", "manager2", "manager3"])

with subtest("the stack's service spreads over every node"):
    manager2.succeed("shoal stack ls | grep -w demo")
    wait_for(
        "one demo_web task on each of the five nodes",
        lambda: (
            lambda counts: (counts == {name: 1 for name in HOSTNAMES}, counts)
        )(running_tasks(manager1, SERVICE, HOSTNAMES)),
    )
    for m in everyone:
        t.assertEqual(len(containerd_running(m)), 1, m.name)

with subtest("scaling down through a follower"):
    manager3.succeed(f"shoal service scale {SERVICE}=2")
    counts = wait_for(
        "demo_web to run 2 tasks",
        lambda: (lambda c: (sum(c.values()) == 2, c))(running_tasks(manager1, SERVICE, HOSTNAMES)),
    )
    wait_for(
        "a worker to report 2/2 replicas",
        lambda: (lambda r: (r == "2/2", r))(replicas_column(worker1, SERVICE)),
    )

with subtest("the routing mesh answers on a node without a task"):
    idle = [name for name in HOSTNAMES if counts[name] == 0]
    t.assertEqual(len(idle), 3, counts)
    for name in idle:
        node = everyone[HOSTNAMES.index(name)]
        wait_for(
            f"{name} to run no container",
            lambda: (lambda running: (running == [], running))(containerd_running(node)),
        )
        for client in [manager1, worker2]:
            wait_for_http(client, f"http://{name}:8080/", MESSAGE)

with subtest("scaling up again uses the free nodes"):
    manager1.succeed(f"shoal service scale {SERVICE}=5")
    wait_for(
        "one demo_web task on each of the five nodes again",
        lambda: (
            lambda counts: (counts == {name: 1 for name in HOSTNAMES}, counts)
        )(running_tasks(worker2, SERVICE, HOSTNAMES)),
    )
