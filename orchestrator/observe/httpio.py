"""HTTP to the servers orch deploys: each answer read within bounds, httpx's errors translated in one table.

A server under test may answer anything: HTML from a proxy, a reset mid-body, a body that
trickles forever, gigabytes, bytes that are not UTF-8. ``fetch`` reads at most ``limit`` bytes
within a deadline and ``loads`` parses JSON; both raise ``AnswerError`` with a one-line reason
and nothing else, so a caller handles one error type for every way an answer can be wrong.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import AnswerError

MAX_BODY_BYTES = 1 << 20  # /health, /v1/models and a one-token completion are a few KiB
DEFAULT_BUDGET_S = 30.0

# httpx's errors (and the few plain ones it lets through) → what they mean, most specific first.
# The third field says whether the exception's own text helps; a UnicodeEncodeError would quote
# a character of the API key.
_REASONS: tuple[tuple[type[Exception], str, bool], ...] = (
    (httpx.ConnectTimeout, "timed out connecting", False),
    (httpx.ConnectError, "cannot connect", True),
    (httpx.ReadTimeout, "no answer within the request timeout", False),
    (httpx.WriteTimeout, "timed out sending the request", False),
    (httpx.PoolTimeout, "timed out waiting for a connection", False),
    (httpx.TimeoutException, "timed out", False),
    (httpx.RemoteProtocolError, "broken HTTP answer", True),  # closed mid-body, garbage status line
    (httpx.ReadError, "connection lost mid-answer", True),  # reset by peer
    (httpx.WriteError, "connection lost sending the request", True),
    (httpx.DecodingError, "body not decodable as its Content-Encoding says", False),
    (httpx.LocalProtocolError, "request not sendable (a header holds a newline?)", False),
    (httpx.HTTPError, "HTTP error", True),
    (httpx.InvalidURL, "invalid URL", True),
    (UnicodeEncodeError, "a header is not ASCII (the API key?)", False),
    (ValueError, "unusable URL or answer", True),  # e.g. the cookie jar on a URL without a host
)
TRANSLATED = tuple(kind for kind, _, _ in _REASONS)
CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)


_TLS: list[ssl.SSLContext] = []
_TLS_LOCK = threading.Lock()


def client(
    *, timeout: float, transport: httpx.BaseTransport | None = None, plain_http: bool = False
) -> httpx.Client:
    """An httpx client for orch's requests. Every one shares a single verifying TLS context, made at
    the first client: httpx makes one per client otherwise, and each reads the CA bundle (about 20 ms
    of CPU and 2 MiB: a gate on each of 16 hosts would spend a third of a second on it).

    ``plain_http``: the client asks ``http://`` URLs only (no redirect is followed), and reads no CA
    bundle at all: its context still verifies, but trusts no certificate, so https through it fails.
    """
    if plain_http:
        trusts_none = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        return httpx.Client(timeout=timeout, transport=transport, verify=trusts_none)
    with _TLS_LOCK:
        if not _TLS:
            _TLS.append(httpx.create_ssl_context())
    return httpx.Client(timeout=timeout, transport=transport, verify=_TLS[0])


@dataclass(frozen=True)
class Answer:
    url: str
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def reason(exc: Exception) -> str:
    """One line saying what an error of the table means (the first entry it is an instance of)."""
    label, show = next(((text, show) for kind, text, show in _REASONS if isinstance(exc, kind)), ("", True))
    detail = one_line(str(exc)) if show else ""
    label = label or type(exc).__name__
    return f"{label}: {detail}" if detail else label


def fetch(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    json_body: object = None,
    limit: int = MAX_BODY_BYTES,
    budget_s: float | None = None,
) -> Answer:
    """Send one request and read its answer: at most ``limit`` bytes, within ``budget_s`` (default:
    the client's read timeout) from the request to the end of the body."""
    budget = budget_s or client.timeout.read or DEFAULT_BUDGET_S
    deadline = time.monotonic() + budget
    try:
        with client.stream(method, url, headers=headers, json=json_body) as resp:
            body = bytearray()
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > limit:
                    raise AnswerError(url, f"answer larger than {_size(limit)}: {snippet(body)}")
                if time.monotonic() > deadline:
                    raise AnswerError(url, f"answer still coming after {budget:g} s: {snippet(body)}")
            return Answer(url, resp.status_code, bytes(body))
    except TRANSLATED as exc:
        raise AnswerError(url, reason(exc)) from exc


def loads(data: bytes | str, *, url: str) -> Any:
    """Parse JSON from a server, or say in one line why it is not JSON."""
    try:
        return json.loads(data)
    except UnicodeDecodeError as exc:
        raise AnswerError(url, f"not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except RecursionError as exc:
        raise AnswerError(url, "JSON nested too deeply") from exc
    except ValueError as exc:
        raise AnswerError(url, f"not JSON: {snippet(data) or '(an empty body)'}") from exc


def snippet(data: bytes | bytearray | str, limit: int = 120) -> str:
    """The start of a body on one line, for an error message."""
    text = data if isinstance(data, str) else bytes(data[: limit * 4]).decode("utf-8", errors="replace")
    one = one_line(text)
    return one if len(one) <= limit else one[:limit] + "…"


def one_line(text: str) -> str:
    return " ".join(text.split())


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} bytes"
