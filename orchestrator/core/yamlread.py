"""A bounded YAML reader: a file's bytes → plain data, with the line of every value.

Files are read as at most MAX_BYTES of a regular file and decoded strictly as
UTF-8. YAML events (libyaml's parser when present) are built into dicts, lists
and scalars by a small composer of our own, so that nesting depth, alias
expansion and number sizes are bounded, merge keys work, and every YAML or
constructor error becomes one ConfigError naming the file and line.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

Loc = tuple[str | int, ...]

# Bounds that keep any file well under a second (benchmarks/hostile_input.md): 500 deployments
# are ~256 KiB and ~28,000 nodes, 4,000 hosts about as much; anything larger is a mistake or an attack.
MAX_BYTES = 256 * 1024
MAX_NODES = 50_000  # keys and values, aliases' copies included: the cost is per node, not per byte
MAX_DEPTH = 64  # orch's schema nests 5 deep; this only has to stop a stack-eating file
MAX_ALIASED = 10_000  # nodes that aliases may add, or one per 16 bytes of file if that is more
MAX_NUMBER = 64  # characters: int() and sexagesimal ints are quadratic in their length

# libyaml parses ~5× faster than PyYAML's pure-Python parser; only its events are used.
_Parser: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML = "tag:yaml.org,2002:"
_STR, _INT = _YAML + "str", _YAML + "int"
_DECIMAL = re.compile(r"[-+]?(?:0|[1-9][0-9]{0,17})")
_BUILT = {_YAML + t for t in ("null", "bool", "int", "float", "timestamp")}
_AS_TEXT = {_YAML + t for t in ("str", "merge", "value", "yaml")}  # `<<`, `=` and `!` read as text
_CONTAINER_TAGS = {None, "!", _YAML + "map", _YAML + "seq"}
# What the YAML spec does not allow in a file (PyYAML's Reader.NON_PRINTABLE).
_NON_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_resolve: Callable[..., str] = yaml.resolver.Resolver().resolve
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


@dataclass(frozen=True)
class Source:
    """A parsed YAML document: its data, the line of every path in it, and the bytes read."""

    file: str
    data: Any
    lines: dict[Loc, int]
    raw: bytes = b""

    def line(self, loc: Loc) -> int | None:
        """The line of the deepest known prefix of ``loc``."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None

    def error(self, loc: Loc, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, line=self.line(loc))


def read_source(path: Path) -> Source:
    raw = _read(path)
    return parse_yaml(_decode(raw, file=str(path)), file=str(path), raw=raw)


def read_text(path: Path) -> str:
    """A text file orch reads besides YAML (a runbook, a unit), within the same bounds."""
    return _decode(_read(path), file=str(path))


def _read(path: Path) -> bytes:
    """At most MAX_BYTES of a regular file: a device or a FIFO would never end, or never start."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError("not a regular file", file=str(path))
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
    if len(raw) > MAX_BYTES:
        size = max(info.st_size, len(raw))
        raise ConfigError(f"the file is {size:,} bytes; orch reads at most {MAX_BYTES:,}", file=str(path))
    return raw


def _decode(raw: bytes, *, file: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        hint = " (UTF-16? save it as UTF-8)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        where = f"byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"not UTF-8 text: {where}{hint}", file=file, line=line) from None
    bad = _NON_PRINTABLE.search(text)
    if bad is not None:
        char = bad.group()
        hint = " (UTF-16 or a binary file? orch reads UTF-8 text)" if char == "\x00" else ""
        line = text.count("\n", 0, bad.start()) + 1
        raise ConfigError(f"character U+{ord(char):04X} is not allowed in YAML{hint}", file=file, line=line)
    return text


def parse_yaml(text: str, *, file: str, raw: bytes = b"") -> Source:
    """One YAML document → plain data and lines; every YAML or constructor error is a ConfigError."""
    composer = _Composer(text, file=file)
    try:
        data = composer.document()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "unreadable"
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {printable(problem)}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {printable(str(exc))}", file=file) from None
    return Source(file=file, data=data, lines=composer.lines, raw=raw)


class _Composer:
    """YAML events → dicts, lists and scalars, with the line of each path.

    Anchored events are kept on a tape and replayed for each alias, so an alias
    yields a fresh copy, merge keys (``<<``) work, and expansion can be counted.
    """

    def __init__(self, text: str, *, file: str) -> None:
        self.get_event = _Parser(text).get_event
        self.tags: dict[str, str] = {}  # plain scalar → resolved tag: keys repeat, regexes are slow
        self.file = file
        self.lines: dict[Loc, int] = {}
        self.tape: list[yaml.Event] = []
        self.recording = 0
        self.anchors: dict[str, tuple[int, int]] = {}
        self.open: set[str] = set()
        self.replays: list[Iterator[yaml.Event]] = []
        self.aliased = 0
        self.nodes = 0
        self.budget = max(MAX_ALIASED, len(text) // 16)
        self.alias_line = 0

    def document(self) -> Any:
        self._next()  # stream start
        if isinstance(self._next(), yaml.StreamEndEvent):
            raise ConfigError("the file is empty", file=self.file, line=1)
        root = self._next()
        self.lines[()] = _line(root)
        data = self._value(root, (), 0, self.lines)
        self._next()  # document end
        if not isinstance(event := self._next(), yaml.StreamEndEvent):
            raise self._refuse(event, "a second YAML document: one file holds one document")
        return data

    def _next(self) -> Any:
        if self.replays:
            self.aliased += 1
            if self.aliased > self.budget:
                raise ConfigError(
                    f"aliases expand to more than {self.budget:,} values (an alias bomb?)",
                    file=self.file,
                    line=self.alias_line,
                )
            return next(self.replays[-1])
        event = self.get_event()
        if self.recording:
            self.tape.append(event)
        return event

    def _count(self, event: yaml.Event) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self._refuse(event, f"more than {MAX_NODES:,} keys and values: orch reads no more")

    def _refuse(self, event: yaml.Event, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, line=_line(event))

    def _value(self, event: Any, loc: Loc, depth: int, lines: dict[Loc, int]) -> Any:
        if type(event) is yaml.ScalarEvent and event.anchor is None:
            return self._scalar(event)  # the common case first: a third faster on large files
        if isinstance(event, yaml.AliasEvent):
            return self._alias(event, loc, depth, lines)
        anchor = None if self.replays else event.anchor
        if anchor is None:
            return self._node(event, loc, depth, lines)
        if anchor in self.anchors or anchor in self.open:
            raise self._refuse(event, f"anchor &{printable(anchor)} is defined twice")
        if not self.recording:
            self.tape.append(event)
        start = len(self.tape) - 1
        self.recording += 1
        self.open.add(anchor)
        value = self._node(event, loc, depth, lines)
        self.recording -= 1
        self.open.discard(anchor)
        self.anchors[anchor] = (start, len(self.tape))
        return value

    def _alias(self, event: yaml.AliasEvent, loc: Loc, depth: int, lines: dict[Loc, int]) -> Any:
        name = event.anchor or ""
        if name in self.open:
            raise self._refuse(event, f"alias *{printable(name)} is used inside its own anchor")
        if name not in self.anchors:
            raise self._refuse(event, f"alias *{printable(name)} has no anchor before it")
        if not self.replays:
            self.alias_line = _line(event)
        start, end = self.anchors[name]
        self.replays.append(iter(self.tape[start:end]))
        value = self._value(self._next(), loc, depth, lines)
        self.replays.pop()
        return value

    def _node(self, event: Any, loc: Loc, depth: int, lines: dict[Loc, int]) -> Any:
        if isinstance(event, yaml.ScalarEvent):
            return self._scalar(event)
        self._count(event)
        if depth >= MAX_DEPTH:
            raise self._refuse(event, f"nested deeper than {MAX_DEPTH} levels")
        if event.tag not in _CONTAINER_TAGS:
            raise self._refuse(event, f"unsupported tag {_short_tag(event.tag)}")
        if isinstance(event, yaml.SequenceStartEvent):
            return self._sequence(loc, depth + 1, lines)
        return self._mapping(loc, depth + 1, lines)

    def _sequence(self, loc: Loc, depth: int, lines: dict[Loc, int]) -> list[Any]:
        items: list[Any] = []
        while not isinstance(event := self._next(), yaml.SequenceEndEvent):
            item = (*loc, len(items))
            lines.setdefault(item, _line(event))
            items.append(self._value(event, item, depth, lines))
        return items

    def _mapping(self, loc: Loc, depth: int, lines: dict[Loc, int]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        merged_lines: dict[Loc, int] = {}
        while not isinstance(event := self._next(), yaml.MappingEndEvent):
            if not isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
                raise self._refuse(event, "a key must be a plain value")
            if isinstance(event, yaml.ScalarEvent) and self._tag(event) == _YAML + "merge":
                self._merge(self._next(), loc, depth, merged, merged_lines)
                continue
            key = self._value(event, loc, depth, {})
            if isinstance(key, dict | list):
                raise self._refuse(event, "a key must be a plain value")
            if not isinstance(key, str):
                # Every key of orch's files is a name; this also keeps 1 and true from colliding.
                raise self._refuse(event, f"the key {printable(repr(key))} is not text: quote it")
            if key in out:
                raise self._refuse(event, f"duplicate key {printable(repr(key))}")
            lines[(*loc, key)] = _line(event)
            out[key] = self._value(self._next(), (*loc, key), depth, lines)
        # Keys written out win over merged ones, in the data and in the lines that errors cite.
        for at, line in merged_lines.items():
            if at[len(loc)] not in out:
                lines.setdefault(at, line)
        return {**{k: v for k, v in merged.items() if k not in out}, **out}

    def _merge(self, event: Any, loc: Loc, depth: int, into: dict[Any, Any], lines: dict[Loc, int]) -> None:
        """``<<: *base`` or ``<<: [*a, *b]``: keys not yet merged, the first source winning."""
        scratch: dict[Loc, int] = {}
        value = self._value(event, loc, depth, scratch)
        sources = value if isinstance(value, list) else [value]
        if not all(isinstance(s, dict) for s in sources):
            raise self._refuse(event, "<< (merge) takes a mapping or a list of mappings")
        n = len(loc)
        for at, line in scratch.items():
            # A list of sources was built at loc+(i,): drop the index so lines match the merged keys.
            at = (*loc, *at[n + 1 :]) if isinstance(value, list) else at
            if len(at) > n:
                lines.setdefault(at, line)
        for source in sources:
            for key, item in source.items():
                into.setdefault(key, item)

    def _tag(self, event: yaml.ScalarEvent) -> str:
        if event.tag is not None and event.tag != "!":
            return event.tag
        if not event.implicit[0]:
            return _STR  # quoted or block: text, as the resolver would say
        tag = self.tags.get(event.value)
        if tag is None:
            tag = self.tags[event.value] = _resolve(yaml.ScalarNode, event.value, event.implicit)
        return tag

    def _scalar(self, event: yaml.ScalarEvent) -> Any:
        self._count(event)
        tag = self._tag(event)
        if tag is _STR or tag in _AS_TEXT:
            return event.value
        if tag not in _BUILT:
            raise self._refuse(event, f"unsupported tag {_short_tag(tag)}")
        if tag == _INT and _DECIMAL.fullmatch(event.value):
            return int(event.value)  # the common int, 3× faster than the constructor
        if len(event.value) > MAX_NUMBER:
            raise self._refuse(event, f"a {_short_tag(tag)} of {len(event.value):,} characters is too long")
        node = yaml.ScalarNode(tag, event.value, None, None)
        try:
            return _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, node)
        except (ValueError, KeyError, AttributeError, OverflowError) as exc:
            # An impossible date (2001-13-45), !!int x: the constructor's words; !!bool maybe: none.
            reason = f": {printable(str(exc))}" if isinstance(exc, ValueError) else ""
            value = printable(repr(event.value))
            raise self._refuse(event, f"{value} is not a valid {_short_tag(tag)}{reason}") from None


def _line(event: yaml.Event) -> int:
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 0


def _short_tag(tag: str | None) -> str:
    return printable(str(tag).replace(_YAML, "!!"))


def printable(text: str, limit: int = 80) -> str:
    """Text from the file, safe to print on one line: escapes and a length limit."""
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[: limit + 1])
    return text if len(text) <= limit else text[: limit - 1] + "…"
