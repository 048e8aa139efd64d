# Helpers shared by the shoal VM test scripts. Each test's testScript is this
# file followed by the test's own script. The NixOS test driver runs it with its
# globals (`start_all`, `subtest`, `t`, the machines, and `log`, its logger:
# never assign a variable of that name), after type-checking it with mypy
# against its own type hints (tests/nix-eval/run.sh does the same with a stub of
# the driver). Annotate every helper: mypy only checks the bodies of annotated
# functions.
import json
import re
import shlex
import time
import typing
from typing import Any, Callable, Optional

# Generous: the VMs share a CI machine and may be slow.
TIMEOUT = 600


class Node(typing.Protocol):
    """What the helpers use of the driver's machine objects (QemuMachine). A
    protocol rather than the driver's class: the name of that class has
    changed between driver versions (Machine, QemuMachine), this does not, and
    mypy still checks that the machines passed in have these methods.
    (`typing.Protocol`, not `from typing import Protocol`: the driver's type
    hints import Protocol from typing_extensions, and mypy refuses the clash.)"""

    name: str

    def succeed(self, *commands: str, timeout: Optional[int] = None) -> str: ...

    def wait_until_succeeds(self, command: str, timeout: int = 900) -> str: ...


def wait_for(
    description: str,
    probe: Callable[[], tuple[bool, Any]],
    timeout: int = TIMEOUT,
    interval: int = 2,
) -> Any:
    """Call probe() until it returns (True, info); return that info, or fail
    with the last info seen.

    A probe whose command fails (no leader during an election, a node still
    starting, a forwarded request while the leader changes) is retried like
    one that returned False.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            ok, info = probe()
        except Exception as error:  # the driver raises Exception subclasses on failed commands
            ok, info = False, f"probe failed: {error}"
        if ok:
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {description}; last seen: {info}")
        time.sleep(interval)


def table_rows(output: str) -> list[list[str]]:
    """The rows of a CLI table, without its header, as lists of words."""
    lines = [line for line in output.splitlines() if line.strip()]
    return [line.split() for line in lines[1:]]


def nodes(machine: Node) -> list[dict[str, Any]]:
    """`shoal node ls --format json`: id, name, role, availability, status,
    manager_status ("Leader", "Reachable", "Unreachable" or empty), addr,
    version, labels, is_self."""
    rows = json.loads(machine.succeed("shoal node ls --format json"))
    assert isinstance(rows, list), rows
    return rows


def node(machine: Node, name: str) -> Optional[dict[str, Any]]:
    """The row of node `name` as `machine` sees it, or None."""
    for row in nodes(machine):
        if row.get("name") == name:
            return row
    return None


def field(row: Optional[dict[str, Any]], key: str) -> str:
    """A field of a JSON row, lower-cased ("" when absent): "ready", "drain",
    "manager", ..."""
    return "" if row is None else str(row.get(key) or "").lower()


def is_ready(row: dict[str, Any]) -> bool:
    return field(row, "status") == "ready"


def is_down(row: Optional[dict[str, Any]]) -> bool:
    return field(row, "status") == "down"


def manager_status(row: Optional[dict[str, Any]]) -> str:
    return "" if row is None else str(row.get("manager_status") or "")


def wait_for_ready_nodes(machine: Node, names: list[str], timeout: int = TIMEOUT) -> list[dict[str, Any]]:
    """Wait until `machine` lists exactly the nodes `names`, all Ready."""

    def probe() -> tuple[bool, Any]:
        rows = nodes(machine)
        ready = sorted(str(row.get("name")) for row in rows if is_ready(row))
        return ready == sorted(names) and len(rows) == len(names), rows

    rows: list[dict[str, Any]] = wait_for(f"{machine.name} to list {names} as Ready", probe, timeout)
    return rows


def leader(machine: Node) -> Optional[str]:
    """The node `machine` reports as the Raft leader, or None."""
    for row in nodes(machine):
        if manager_status(row) == "Leader":
            return str(row.get("name"))
    return None


def wait_for_leader(
    machine: Node, candidates: list[str], timeout: int = TIMEOUT
) -> str:
    """Wait until `machine` reports a leader among `candidates`; return it."""

    def probe() -> tuple[bool, Any]:
        name = leader(machine)
        return name in candidates, name

    name: str = wait_for(f"{machine.name} to know a leader among {candidates}", probe, timeout)
    return name


def tasks(machine: Node, service: str) -> list[dict[str, Any]]:
    """`shoal service ps SERVICE --format json`: id, name, node, desired,
    state, error."""
    rows = json.loads(machine.succeed(f"shoal service ps {service} --format json"))
    assert isinstance(rows, list), rows
    return rows


def running_tasks(machine: Node, service: str, hostnames: list[str]) -> dict[str, int]:
    """Tasks of `service` that should run and do, per node."""
    counts = {name: 0 for name in hostnames}
    for row in tasks(machine, service):
        running = field(row, "state") == "running"
        wanted = field(row, "desired") == "running"
        if running and wanted and row.get("node") in counts:
            counts[str(row["node"])] += 1
    return counts


def containerd_running(machine: Node, namespace: str = "shoal") -> list[tuple[str, str]]:
    """(task id, pid) of the containers running in containerd's namespace."""
    out = machine.succeed(f"ctr --namespace {namespace} tasks ls")
    return sorted((row[0], row[1]) for row in table_rows(out) if "RUNNING" in row)


def containers_probe(machine: Node, count: int) -> Callable[[], tuple[bool, Any]]:
    """Probe: `machine`'s containerd runs exactly `count` shoal containers."""

    def probe() -> tuple[bool, Any]:
        running = containerd_running(machine)
        return len(running) == count, running

    return probe


def http_get(machine: Node, url: str) -> str:
    return machine.succeed(f"curl --silent --fail --max-time 10 {url}").strip()


def wait_for_http(machine: Node, url: str, expected: str, timeout: int = TIMEOUT) -> None:
    machine.wait_until_succeeds(
        f"test \"$(curl --silent --fail --max-time 10 {url})\" = '{expected}'",
        timeout=timeout,
    )


def replicas_column(machine: Node, service: str) -> Optional[str]:
    """The REPLICAS column ("2/3") of `service` in `shoal service ls`."""
    for row in table_rows(machine.succeed("shoal service ls")):
        if service in row:
            for word in row:
                if re.fullmatch(r"\d+/\d+", word):
                    return word
    return None


def wait_for_replicas(machine: Node, service: str, expected: str, timeout: int = TIMEOUT) -> None:
    """Wait until `machine`'s `shoal service ls` says `expected` ("2/2")."""

    def probe() -> tuple[bool, Any]:
        column = replicas_column(machine, service)
        return column == expected, column

    wait_for(f"{machine.name} to report {expected} replicas of {service}", probe, timeout)


def cli_copy_of(machine: Node, source: str, name: str, replicas: int) -> None:
    """Create service `name` from the CLI with the image, command and environment of
    `source`, with no published port. The services of stacks declared in files are
    changed in the files only (`shoal service scale` refuses them), so the tests that
    scale and move tasks use such a copy."""
    rows = json.loads(machine.succeed(f"shoal service inspect {source}"))
    task = rows[0]["spec"]["task"]
    args = ["shoal", "service", "create", "--detach", "--name", name, "--replicas", str(replicas)]
    for key, value in sorted(task.get("env", {}).items()):
        args += ["--env", f"{key}={value}"]
    args.append(task["image"])
    args += task.get("command") or []
    machine.succeed(" ".join(shlex.quote(a) for a in args))
