# Helpers shared by the shoal VM test scripts. The NixOS test driver prepends
# this file to each script; `machines` and `t` are driver globals there.
import re
import time

# Generous: the VMs share a CI machine and may be slow.
TIMEOUT = 600


def wait_for(description, probe, timeout=TIMEOUT, interval=2):
    """Call probe() until it returns (True, info); fail with the last info.

    A probe whose command fails (no leader during an election, a node still
    starting) is retried like one that returned False.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            ok, info = probe()
        except Exception as error:  # the driver raises Exception on failed commands
            ok, info = False, f"probe failed: {error}"
        if ok:
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {description}; last seen: {info}")
        time.sleep(interval)


def table_rows(output):
    """The rows of a CLI table, without its header, as lists of words."""
    lines = [line for line in output.splitlines() if line.strip()]
    return [line.split() for line in lines[1:]]


def node_rows(machine):
    """`shoal node ls` rows (ID HOSTNAME STATUS AVAILABILITY MANAGER STATUS)."""
    return table_rows(machine.succeed("shoal node ls"))


def row_of(rows, hostname):
    for row in rows:
        if hostname in row:
            return row
    return None


def ready_count(machine):
    return sum(1 for row in node_rows(machine) if "Ready" in row)


def wait_for_ready_nodes(machine, count, timeout=TIMEOUT):
    machine.wait_until_succeeds(
        f'test "$(shoal node ls | grep -cw Ready)" -eq {count}', timeout=timeout
    )


def leader(machine, hostnames):
    """The hostname `machine` reports as the Raft leader, or None."""
    for row in node_rows(machine):
        if "Leader" in row:
            for name in hostnames:
                if name in row:
                    return name
    return None


def running_tasks(machine, service, hostnames):
    """Running tasks of `service` per node, from `shoal service ps`.

    A running task's row says Running twice: DESIRED STATE and CURRENT STATE
    ("Running 5 seconds ago"). Rows of tasks being replaced or shut down say it
    at most once.
    """
    counts = {name: 0 for name in hostnames}
    for row in table_rows(machine.succeed(f"shoal service ps {service}")):
        if sum(1 for word in row if word.lower() == "running") < 2:
            continue
        for name in hostnames:
            if name in row:
                counts[name] += 1
    return counts


def containerd_running(machine, namespace="shoal"):
    """(task id, pid) of the containers running in containerd's namespace."""
    out = machine.succeed(f"ctr --namespace {namespace} tasks ls")
    return sorted((row[0], row[1]) for row in table_rows(out) if "RUNNING" in row)


def http_get(machine, url):
    return machine.succeed(f"curl --silent --fail --max-time 10 {url}").strip()


def wait_for_http(machine, url, expected, timeout=TIMEOUT):
    machine.wait_until_succeeds(
        f"test \"$(curl --silent --fail --max-time 10 {url})\" = '{expected}'",
        timeout=timeout,
    )


def replicas_column(machine, service):
    """The REPLICAS column ("2/3") of `service` in `shoal service ls`."""
    for row in table_rows(machine.succeed("shoal service ls")):
        if service in row:
            for word in row:
                if re.fullmatch(r"\d+/\d+", word):
                    return word
    return None
