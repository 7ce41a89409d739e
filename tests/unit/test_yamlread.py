"""The YAML reader (yamlread.py): PyYAML's typing kept, merge keys, aliases as copies, line ends.

Its refusals of hostile input are in test_hostile.py, through the CLI.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_load import GOOD, write

from orchestrator.core.load import load
from orchestrator.core.yamlread import parse_yaml
from orchestrator.errors import ConfigError


@pytest.mark.parametrize(
    "text",
    [
        "a: [0, -1, +5, 0x10, 017, 1_000, 1:30, 1.5, 1e3, 1.0e+3, .inf, -.Inf, 0.]",
        "a: [true, no, On, ~, null, Null, '', '1', \"2\", 2001-01-02, 2001-01-02 03:04:05, x]",
        "a: |\n  two\n  lines\nb: >-\n  folded\n  text\nc: !!str 12\nd: !!float 1\ne: ! 12\n",
    ],
)
def test_yaml_typing_is_pyyaml_safe_load(text: str) -> None:
    assert parse_yaml(text, file="f").data == yaml.safe_load(text)


def test_values_pyyaml_cannot_construct_are_text() -> None:
    # yaml.safe_load raises ConstructorError for these; they are plain words here.
    assert parse_yaml("a: [=, <<, '!']", file="f").data == {"a": ["=", "<<", "!"]}


def test_merge_keys_explicit_wins_first_source_wins_and_lines_follow(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        a: &a {x: 1, y: 1}
        b: &b {y: 2, z: 2}
        c:
          <<: [*a, *b]
          x: 3
        """)
    source = parse_yaml(text, file="f")
    assert source.data["c"] == {"y": 1, "z": 2, "x": 3}
    assert list(source.data["c"]) == ["y", "z", "x"]  # merged keys first, as PyYAML orders them
    assert (source.line(("c", "x")), source.line(("c", "y")), source.line(("c", "z"))) == (5, 1, 2)


def test_an_alias_is_a_copy_not_a_shared_object() -> None:
    data = parse_yaml("a: &a {k: [1]}\nb: *a\n", file="f").data
    assert data["a"] == data["b"] and data["a"] is not data["b"] and data["a"]["k"] is not data["b"]["k"]


@pytest.mark.parametrize(
    ("encode", "expected_ok"),
    [
        (lambda s: s.replace("\n", "\r\n").encode(), True),  # Windows line ends
        (lambda s: b"\xef\xbb\xbf" + s.encode(), True),  # a UTF-8 byte order mark
        (lambda s: s.replace("  ", "\t", 1).encode(), False),  # a tab as indentation
    ],
)
def test_line_ends_bom_and_tabs(tmp_path: Path, encode: Any, expected_ok: bool) -> None:
    path = write(tmp_path, GOOD)
    path.write_bytes(encode(GOOD))
    if expected_ok:
        assert load(path).playbook.deployments[0].name == "a"
    else:
        with pytest.raises(ConfigError, match=r"pb\.yml:\d+: invalid YAML"):
            load(path)
