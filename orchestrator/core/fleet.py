"""A deployment on several hosts is a fleet of replicas: how a rollout takes them in batches, and vLLM's
own router (``vllm-router``) in front of them. Schema and pure rules; no I/O.

    rollout: {batch: 1 | "25%", max_failed: 0 | "10%", pause_s: 0, drain_timeout_s: 120}
    router:  {host: lb1, port: 8800, version: 0.1.17, venv: /opt/vllm-router, policy: round_robin}

Batches follow the order of the deployment's hosts; a batch is gated before the next begins. A rollout
stops when more replicas failed than ``max_failed`` allows; the hosts it did not reach stay untouched.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from .scalars import FLAG_LIKE, Bool, Float, Int, Strict, Text, Venv

PERCENT = re.compile(r"^(100|[1-9][0-9]?)%$")
ROUTER_PACKAGE = "vllm-router"
# Flags the router deployment derives from its fields (and from the fleet's hosts).
ROUTER_OWNED_FLAGS = {
    "--host": "bind",
    "--port": "port",
    "--worker-urls": "the deployment's hosts",
    "--policy": "policy",
}
Policy = Literal[
    "random", "round_robin", "cache_aware", "power_of_two", "consistent_hash", "sticky_least_loaded"
]


Share = Annotated[Int, Field(ge=0)] | Annotated[Text, Field(pattern=PERCENT.pattern)]


class Rollout(Strict):
    """How apply and rollback take a deployment's hosts (Ansible's ``serial`` and ``max_fail_percentage``)."""

    batch: Annotated[Int, Field(ge=1)] | Annotated[Text, Field(pattern=PERCENT.pattern)] = "100%"
    max_failed: Share = 0
    pause_s: Float = Field(default=0.0, ge=0)
    # How long a replica taken out of the router may take to finish its requests before it restarts.
    drain_timeout_s: Float = Field(default=120.0, gt=0)

    def batches(self, hosts: list[str]) -> list[list[str]]:
        """The hosts in batches, in order; every batch has ``batch`` hosts but perhaps the last."""
        size = _count(self.batch, len(hosts), at_least=1)
        return [hosts[i : i + size] for i in range(0, len(hosts), size)]

    def allowed_failures(self, n_hosts: int) -> int:
        return _count(self.max_failed, n_hosts, at_least=0)


def _count(share: int | str, n: int, *, at_least: int) -> int:
    if isinstance(share, int):
        return max(share, at_least)
    return max(math.floor(n * int(share[:-1]) / 100), at_least)


class RouterSpec(Strict):
    """vLLM's router in front of a deployment's replicas: a deployment of its own named ``NAME-router``,
    installed (pinned, in a venv), planned, revisioned and rolled back like any other."""

    host: Text
    port: Int = Field(default=8800, ge=1, le=65535)
    bind: Text = "0.0.0.0"
    policy: Policy = "round_robin"
    version: Text = Field(default="0.1.17", pattern=r"^[0-9][0-9A-Za-z.+!-]*$")
    venv: Venv = "/opt/vllm-router"
    python: Text = "python3"
    index_url: Text | None = None
    no_index: Bool = False
    extra_index_urls: tuple[Text, ...] = ()
    find_links: tuple[Text, ...] = ()
    args: dict[Text, Text | Int | Float | Bool | None] = Field(default_factory=dict)

    @field_validator("args")
    @classmethod
    def _args(cls, value: dict[str, object]) -> dict[str, object]:
        for flag, item in value.items():
            if not re.fullmatch(r"--[a-z0-9][a-z0-9-]*", flag):
                raise ValueError(f"argument {flag!r} is not a vllm-router flag like --retry-max-retries")
            if flag in ROUTER_OWNED_FLAGS:
                raise ValueError(f"{flag} is set by {ROUTER_OWNED_FLAGS[flag]}, not in args")
            # The router's argument parser would take "--port=9999" as a flag of its own.
            if isinstance(item, str) and FLAG_LIKE.match(item):
                raise ValueError(
                    f"the value of {flag} looks like a flag ({item!r}): give each flag its own key"
                )
        return value


def worker_url(address: str, port: int) -> str:
    """How the router names a replica (the same text in --worker-urls, /add_worker and /remove_worker)."""
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"
