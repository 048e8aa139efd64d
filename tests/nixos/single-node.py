# Test script for tests/nixos/single-node.nix (helpers.py is prepended).
URL = "http://127.0.0.1:8080/"

machine.start()
machine.wait_for_unit("shoald.service")

with subtest("enable alone gives a one-node cluster"):
    t.assertEqual(machine.succeed("systemctl show --property=Type --value shoald").strip(), "notify")
    rows = wait_for_ready_nodes(machine, ["machine"])
    t.assertEqual(len(rows), 1, rows)
    t.assertEqual(wait_for_leader(machine, ["machine"]), "machine")
    t.assertEqual(field(rows[0], "role"), "manager", rows)
    machine.succeed("busctl introspect org.shoal.Shoal1 /org/shoal/Shoal1")

with subtest("the stack from the configuration serves on its published port"):
    wait_for_http(machine, URL, "hello from shoal")
    machine.succeed("shoal stack ls | grep -w hello")
    wait_for_replicas(machine, "hello_web", "1/1")

with subtest("a restart of shoald keeps the containers running"):
    before = containerd_running(machine)
    t.assertTrue(before, "no container runs in containerd's shoal namespace")
    pid = machine.succeed("systemctl show --property=MainPID --value shoald").strip()
    machine.succeed("systemctl restart shoald")
    machine.wait_for_unit("shoald.service")
    t.assertNotEqual(machine.succeed("systemctl show --property=MainPID --value shoald").strip(), pid)
    wait_for_ready_nodes(machine, ["machine"])
    # The restarted daemon adopts the task it finds instead of replacing it.
    machine.sleep(10)
    t.assertEqual(containerd_running(machine), before)
    t.assertEqual(http_get(machine, URL), "hello from shoal")

with subtest("any user reads, only root and the shoal group change"):
    machine.succeed("su -l alice -c 'shoal node ls'")
    rc, out = machine.execute("su -l alice -c 'shoal service scale hello_web=2' 2>&1")
    t.assertNotEqual(rc, 0, out)
    t.assertRegex(out, "(?i)denied|permission|not allowed|not authorized", out)
    t.assertEqual(replicas_column(machine, "hello_web"), "1/1")
    # bob (group shoal) may change things; hello_web itself is its stack file's to
    # change, so he scales a copy made from the CLI.
    rc, out = machine.execute("su -l bob -c 'shoal service scale hello_web=2' 2>&1")
    t.assertNotEqual(rc, 0, out)
    t.assertIn("/etc/shoal/stacks/hello.toml", out)
    cli_copy_of(machine, "hello_web", "copy", 1)
    machine.succeed("su -l bob -c 'shoal service scale copy=2'")
    wait_for_replicas(machine, "copy", "2/2")
