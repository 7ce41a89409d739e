"""How values are quoted in the files orch writes (unit ExecStart=, env files), and read back.

Pure. render.py quotes with these; masking.py derives from them the forms a secret takes in a file.
"""

from __future__ import annotations

import re

_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def systemd_quote(word: str) -> str:
    """Quote one ExecStart= argument so systemd passes it through verbatim.

    systemd expands ``%`` specifiers and ``$VAR`` even in quotes, so both are doubled.
    """
    escaped = word.replace("%", "%%").replace("$", "$$")
    if _SAFE_WORD.match(word):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def env_quote(value: str) -> str:
    """Quote a value for an EnvironmentFile= (double quotes, shell-style escapes)."""
    return '"' + re.sub(r'(["\\$`])', r"\\\1", value) + '"'


def parse_env(text: str) -> dict[str, str]:
    """Read back an env file written by ``env_quote`` (the subset of systemd's syntax orch writes).

    Lines end at ``\\n`` only: a value holding ``\\r`` or U+2028 is read back whole.
    """
    out: dict[str, str] = {}
    for line in text.split("\n"):
        key, sep, value = line.partition("=")
        if not sep or key.startswith("#"):
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r'\\(["\\$`])', r"\1", value[1:-1])
        out[key.strip()] = value
    return out
