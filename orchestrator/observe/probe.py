"""What a readiness probe aims at and what it found: plain values, no HTTP client imported.

The apply path names them (a no-op apply probes nothing, so it never imports httpx); ``health``
sends the requests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    served_name: str
    api_key: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass(frozen=True)
class Probe:
    ready: bool
    stage: str
    detail: str = ""
