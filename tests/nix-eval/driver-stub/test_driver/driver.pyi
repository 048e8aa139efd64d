from typing import Any
from unittest import TestCase

from test_driver.machine import BaseMachine
from test_driver.vlan import VLan

class AssertionTester(TestCase): ...

class Driver:
    machines: list[BaseMachine]
    vlans: list[VLan]
    def start_all(self) -> None: ...
    def join_all(self) -> None: ...
    def test_symbols(self) -> dict[str, Any]: ...
