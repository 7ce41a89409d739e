"""The one splitter of host output: scripts print ``@@orch<key>`` lines between their parts."""

from __future__ import annotations

import base64
import binascii

from .commands import MARK


def sections(text: str) -> dict[str, list[str]]:
    """Split on ``@@orch<key>`` lines: key → the lines after it (lines before any marker go under "")."""
    out: dict[str, list[str]] = {"": []}
    key = ""
    for line in text.splitlines():
        if line.startswith(MARK):
            key = line[len(MARK) :].strip()
            out[key] = []
        else:
            out[key].append(line)
    return out


def blocks(text: str, kind: str) -> list[tuple[str, str]]:
    """Split on ``@@orch<kind> <name>`` lines into (name, body); other lines before the first are dropped."""
    found: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith(f"{MARK}{kind} "):
            found.append((line.split(" ", 1)[1], []))
        elif found:
            found[-1][1].append(line)
    return [(name, "\n".join(body)) for name, body in found]


def decode(b64: str) -> str:
    """Base64 text printed by a host script, decoded; "" when damaged."""
    try:
        return base64.b64decode(b64.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""
