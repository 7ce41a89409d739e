"""orch's integration test bed: throw-away hosts with real systemd, OpenSSH and the vLLM CPU build.

`Testbed` (hosts.py) boots hosts th1..thN from a cached template root (template.py); the pytest
session fixture `testbed` (tests/conftest.py) and the `scripts/testbed` CLI (cli.py) use it.
"""

from .hosts import Testbed, TestHost, address_of
from .proc import CommandError, TestbedError
from .template import ensure_template, recipe_hash

__all__ = [
    "CommandError",
    "TestHost",
    "Testbed",
    "TestbedError",
    "address_of",
    "ensure_template",
    "recipe_hash",
]
