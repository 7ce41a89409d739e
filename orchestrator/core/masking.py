"""Secret values out of everything orch displays of a file.

Masking is by value: every character that belongs to an occurrence of a secret, as it is
or in a form that orch's quoting or a template filter gives it, is hidden, so a custom
template that prints a secret anywhere shows ``***``. Env-file lines whose key may hold a
secret are masked whole as well. Pure: the values come in, no I/O.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

import markupsafe

from .quoting import env_quote, parse_env, systemd_quote

MASK = "***"
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.I)
_QUOTES = "'\""


def _inner(quoted: str, raw: str) -> str:
    """The quoted form without its outer quotes (so it matches inside a longer quoted word)."""
    if quoted != raw and len(quoted) >= 2 and quoted[0] == quoted[-1] and quoted[0] in _QUOTES:
        return quoted[1:-1]
    return quoted


def _json(value: str, *, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)[1:-1]


def _html_json(value: str) -> str:
    """Jinja's ``tojson``: JSON with <, >, & and ' escaped."""
    out = _json(value, ascii_only=True)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("'", "\\u0027")):
        out = out.replace(ch, esc)
    return out


# Each maps a value to the text it becomes inside a rendered file.
ENCODERS: tuple[Callable[[str], str], ...] = (
    lambda v: v,
    lambda v: _inner(env_quote(v), v),
    lambda v: _inner(systemd_quote(v), v),
    lambda v: _inner(shlex.quote(v), v),
    lambda v: _inner(repr(v), v),  # a list, tuple or dict printed whole ({{ env }})
    lambda v: _json(v, ascii_only=True),
    lambda v: _json(v, ascii_only=False),
    _html_json,
    lambda v: str(markupsafe.escape(v)),
    lambda v: quote(v, safe="/"),  # urlencode
    lambda v: quote(v, safe=""),
    lambda v: v.replace("%", "%%"),  # supervisord's %-expansion
)


def encodings(value: str) -> set[str]:
    """The forms ``value`` takes in a rendered file: raw, quoted once, or quoted twice
    (the supervisord template quotes a command line inside ``sh -c``)."""
    once = {encode(value) for encode in ENCODERS}
    twice = {encode(form) for form in once for encode in ENCODERS}
    return {form for form in once | twice if form}


def secret_name(key: str) -> bool:
    return bool(SECRET_NAME.search(key))


def env_secrets(env: Mapping[str, str], keys: frozenset[str]) -> list[str]:
    """The values in an env file's variables of ``keys`` and of names that say they are secret."""
    return [v for k, v in env.items() if v and (k in keys or secret_name(k))]


@dataclass(frozen=True)
class Masker:
    """Hides secret values in text; ``plain_keys``, when known, are the env keys that hold no secret."""

    forms: tuple[str, ...] = field(default=(), repr=False)
    secret_keys: frozenset[str] = frozenset()
    plain_keys: frozenset[str] | None = None

    @classmethod
    def build(
        cls,
        values: Iterable[str],
        *,
        env_texts: Iterable[str | None] = (),
        secret_keys: frozenset[str] = frozenset(),
        plain_keys: frozenset[str] | None = None,
    ) -> Masker:
        """A masker for ``values`` and for the values in the env files ``env_texts`` of every key
        it hides (a key no longer declared may have held a secret: its value is hidden too)."""
        keys = cls((), secret_keys, plain_keys)
        found = [v for text in env_texts if text for k, v in parse_env(text).items() if keys.hides_key(k)]
        forms = {form for v in [*values, *found] if v for form in encodings(v)}
        return cls(tuple(sorted(forms, key=len, reverse=True)), secret_keys, plain_keys)

    def text(self, text: str) -> str:
        """``text`` with every character of every occurrence of a secret form hidden (runs become ***)."""
        hidden = bytearray(len(text))
        for form in self.forms:
            start = text.find(form)
            while start != -1:
                hidden[start : start + len(form)] = b"\1" * len(form)
                start = text.find(form, start + 1)
        if not any(hidden):
            return text
        return "".join(
            MASK if hidden[m.start()] else text[m.start() : m.end()]
            for m in re.finditer(rb"\x01+|\x00+", bytes(hidden))
        )

    def hides_key(self, key: str) -> bool:
        unknown = self.plain_keys is not None and key not in self.plain_keys
        return key in self.secret_keys or secret_name(key) or unknown

    def env(self, env_text: str) -> str:
        """An env file's text: secret values hidden, and the whole value of each secret key."""
        lines = []
        for line in self.text(env_text).split("\n"):
            key, sep, _ = line.partition("=")
            hide = sep and not key.startswith("#") and self.hides_key(key.strip())
            lines.append(f"{key}={MASK}" if hide else line)
        return "\n".join(lines)
