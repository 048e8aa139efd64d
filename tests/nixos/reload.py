# Test script for tests/nixos/reload.nix (helpers.py is prepended).
# Never name a variable `log`: that is the driver's logger (a global).
URL = "http://127.0.0.1:8080/"
STOP_OR_START = ["Stopping", "Stopped", "Starting", "Started"]


def now() -> str:
    return machine.succeed("date +%s").strip()


def unit_state() -> str:
    return machine.succeed(
        "systemctl show --property=MainPID --property=NRestarts --property=ActiveState shoald"
    ).strip()


def main_pid() -> str:
    return machine.succeed("systemctl show --property=MainPID --value shoald").strip()


def unit_journal(since: str) -> str:
    return machine.succeed(f"journalctl --no-pager --output=cat --since=@{since} --unit=shoald.service")


def systemd_said(journal: str, verb: str) -> bool:
    """Whether systemd logged `verb` ("Stopping", "Reloaded", "Reload failed
    for", ...) for the unit: "Reloading shoald.service - shoal container
    orchestrator..." (or, on older systemd, only the description)."""
    return re.search(rf"(?m)^{verb} (shoald\.service|shoal container orchestrator)", journal) is not None


def switch(specialisation: Optional[str] = None) -> str:
    if specialisation is None:
        return "/run/booted-system/bin/switch-to-configuration test"
    return f"/run/booted-system/specialisation/{specialisation}/bin/switch-to-configuration test"


def mark() -> str:
    """A journal position to read from, a second before the next change."""
    since = now()
    machine.sleep(1)
    return since


def assert_reloaded_only(since: str) -> None:
    journal = unit_journal(since)
    t.assertTrue(systemd_said(journal, "Reloading"), journal)
    t.assertTrue(systemd_said(journal, "Reloaded"), journal)
    for verb in STOP_OR_START:
        t.assertFalse(systemd_said(journal, verb), journal)


machine.start()
machine.wait_for_unit("shoald.service")
wait_for_http(machine, URL, "version one")
state = unit_state()

with subtest("a stack change is applied by a reload, not a restart"):
    since = mark()
    machine.succeed(switch("v2"))
    wait_for_http(machine, URL, "version two")
    assert_reloaded_only(since)
    t.assertEqual(unit_state(), state)

with subtest("a bad stack fails the switch and the running stack stays"):
    since = mark()
    machine.fail(switch("broken"))
    t.assertEqual(unit_state(), state)
    journal = unit_journal(since)
    t.assertTrue(systemd_said(journal, "Reload failed for"), journal)
    for verb in STOP_OR_START:
        t.assertFalse(systemd_said(journal, verb), journal)
    # shoal reload names the file it rejected.
    t.assertIn("demo.toml", journal)
    for _ in range(5):
        t.assertEqual(http_get(machine, URL), "version two")
        machine.sleep(2)
    t.assertEqual(replicas_column(machine, "demo_web"), "1/1")

with subtest("switching back to a good configuration reloads again"):
    since = mark()
    machine.succeed(switch())
    wait_for_http(machine, URL, "version one")
    assert_reloaded_only(since)
    t.assertEqual(unit_state(), state)

with subtest("removing the last stack reloads and removes the stack"):
    since = mark()
    machine.succeed(switch("empty"))
    machine.fail("test -e /etc/shoal/stacks/demo.toml")
    assert_reloaded_only(since)
    t.assertEqual(unit_state(), state)
    wait_for(
        "the demo stack to be gone",
        lambda: (lambda out: ("demo" not in out.split(), out))(machine.succeed("shoal stack ls")),
    )
    wait_for("its containers to stop", containers_probe(machine, 0))
    machine.fail(f"curl --silent --fail --max-time 5 {URL}")

with subtest("adding it back reloads and deploys it"):
    since = mark()
    machine.succeed(switch())
    wait_for_http(machine, URL, "version one")
    assert_reloaded_only(since)
    t.assertEqual(unit_state(), state)

with subtest("a cluster file change restarts shoald once and keeps the containers"):
    containers = wait_for("one running container", containers_probe(machine, 1))
    pid = main_pid()
    since = mark()
    machine.succeed(switch("relabelled"))
    machine.wait_for_unit("shoald.service")
    t.assertNotEqual(main_pid(), pid)
    journal = unit_journal(since)
    t.assertFalse(systemd_said(journal, "Reloading"), journal)
    t.assertTrue(systemd_said(journal, "Started"), journal)
    wait_for_ready_nodes(machine, ["machine"])
    # The restarted daemon adopts the task it finds instead of replacing it.
    machine.sleep(10)
    t.assertEqual(containerd_running(machine), containers)
    t.assertEqual(http_get(machine, URL), "version one")
