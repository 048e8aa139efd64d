# Test script for tests/nixos/reload.nix (helpers.py is prepended).
URL = "http://127.0.0.1:8080/"


def now():
    return machine.succeed("date +%s").strip()


def unit_state():
    return machine.succeed(
        "systemctl show --property=MainPID --property=NRestarts --property=ActiveState shoald"
    ).strip()


def unit_log(since):
    return machine.succeed(f"journalctl --no-pager --output=cat --since=@{since} --unit=shoald.service")


def systemd_said(log, verb):
    """Whether systemd logged `verb` ("Stopping", "Reloaded", "Reload failed
    for", ...) for the unit: "Reloading shoald.service - shoal container
    orchestrator..." (or, on older systemd, only the description)."""
    return re.search(rf"(?m)^{verb} (shoald\.service|shoal container orchestrator)", log) is not None


def switch(specialisation=None):
    if specialisation is None:
        return "/run/booted-system/bin/switch-to-configuration test"
    return f"/run/booted-system/specialisation/{specialisation}/bin/switch-to-configuration test"


machine.start()
machine.wait_for_unit("shoald.service")
wait_for_http(machine, URL, "version one")
state = unit_state()

with subtest("a stack change is applied by a reload, not a restart"):
    since = now()
    machine.sleep(1)
    machine.succeed(switch("v2"))
    wait_for_http(machine, URL, "version two")
    log = unit_log(since)
    t.assertTrue(systemd_said(log, "Reloading"), log)
    t.assertTrue(systemd_said(log, "Reloaded"), log)
    for verb in ["Stopping", "Stopped", "Starting", "Started"]:
        t.assertFalse(systemd_said(log, verb), log)
    t.assertEqual(unit_state(), state)

with subtest("a bad stack fails the switch and the running stack stays"):
    since = now()
    machine.sleep(1)
    machine.fail(switch("broken"))
    t.assertEqual(unit_state(), state)
    log = unit_log(since)
    t.assertTrue(systemd_said(log, "Reload failed for"), log)
    for verb in ["Stopping", "Stopped", "Starting", "Started"]:
        t.assertFalse(systemd_said(log, verb), log)
    # shoal reload names the file it rejected.
    t.assertIn("demo.toml", log)
    for _ in range(5):
        t.assertEqual(http_get(machine, URL), "version two")
        machine.sleep(2)
    t.assertEqual(replicas_column(machine, "demo_web"), "1/1")

with subtest("switching back to a good configuration reloads again"):
    since = now()
    machine.sleep(1)
    machine.succeed(switch())
    wait_for_http(machine, URL, "version one")
    t.assertTrue(systemd_said(unit_log(since), "Reloaded"))
    t.assertEqual(unit_state(), state)
