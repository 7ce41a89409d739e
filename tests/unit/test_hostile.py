"""Hostile or broken input: exit 1, one stderr line naming the file (and line), within a second.

Each class a fuzz run found has a test here, through the real CLI in-process; a seeded
hypothesis run mutates valid playbooks and inventories 500 times and checks the same
contract for ``validate`` and ``plan --offline`` (tests/hostile.py has the generator).
"""

from __future__ import annotations

import os
import tempfile
import textwrap
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostile import cases, problems, run, run_case
from hypothesis import HealthCheck, given, settings
from pydantic import BaseModel

from orchestrator.core import model
from orchestrator.core.model import Deployment
from orchestrator.core.yamlread import MAX_BYTES, MAX_DEPTH

INVENTORY = "hosts:\n  h1:\n    address: 10.0.0.1\n"
GOOD = """\
inventory: inv.yml
deployments:
  - name: a
    hosts: [h1]
    model: /models/m
    accelerator: cpu
"""
# The classic: nine levels of ten aliases each, a billion "lol"s from 563 bytes.
BILLION_LAUGHS = "lol0: &l0 lol\n" + "".join(
    f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 10)
)


def write(tmp: Path, playbook: str | bytes, inventory: str | bytes = INVENTORY) -> Path:
    for name, body in (("inv.yml", inventory), ("pb.yml", playbook)):
        (tmp / name).write_bytes(body.encode() if isinstance(body, str) else body)
    return tmp / "pb.yml"


def refused(path: Path, *argv: str, file: Path | None = None, line: int | None = None) -> str:
    """Run ``orch VERB path``: exit 1, one line naming ``file`` (and ``line``), under 1 s."""
    outcome = run([*(argv or ("validate",)), str(path)])
    assert not problems(outcome, path.parent), problems(outcome, path.parent)
    assert outcome.rc == 1, outcome
    where = f"{file or path}:{line}:" if line is not None else str(file or path)
    assert where in outcome.stderr, outcome.stderr
    return outcome.stderr.strip()


# ---------------------------------------------------------------- bytes and size


def test_non_utf8_names_the_byte_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.encode() + b"    served_model_name: caf\xe9\n")
    assert refused(path, line=7).endswith(f"not UTF-8 text: byte 0xe9 at offset {len(GOOD) + 26}")


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-32"])
def test_utf16_and_utf32_are_refused(tmp_path: Path, codec: str) -> None:
    path = write(tmp_path, GOOD.encode(codec))
    assert "UTF-16" in refused(path, line=1) or "UTF-8" in refused(path, line=1)


def test_control_character_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "    dtype: a\x07b\n")
    assert refused(path, line=7).endswith("character U+0007 is not allowed in YAML")


def test_a_file_over_the_cap_is_refused_with_its_size(tmp_path: Path) -> None:
    lines = "".join(f"# comment line {i}\n" for i in range(200_000))  # a 200,000-line playbook
    path = write(tmp_path, GOOD + lines)
    size = path.stat().st_size
    assert refused(path).endswith(f"the file is {size:,} bytes; orch reads at most {MAX_BYTES:,}")


def test_too_many_nodes_under_the_byte_cap(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "    gpus: [" + "0," * 60_000 + "0]\n")
    assert path.stat().st_size < MAX_BYTES
    assert refused(path, line=7).endswith("more than 50,000 keys and values: orch reads no more")


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_an_endless_device_is_not_read(tmp_path: Path, device: str) -> None:
    assert refused(Path(device), file=Path(device)).endswith(f"{device}: not a regular file")
    path = write(tmp_path, GOOD.replace("inv.yml", device))
    assert refused(path, line=1).endswith(f"inventory: not a regular file {device}")


def test_a_fifo_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pb.yml")
    assert refused(tmp_path / "pb.yml").endswith("not a regular file")


def test_a_folder_and_a_missing_file(tmp_path: Path) -> None:
    assert refused(tmp_path, file=tmp_path).endswith("not a regular file")
    assert refused(tmp_path / "nope.yml").endswith("cannot read: No such file or directory")


@pytest.mark.parametrize(
    "argv",
    [
        ["validate"], ["plan"], ["plan", "--offline"], ["apply", "-y"], ["rollback", "-y"], ["status"],
        ["revisions"], ["destroy", "-y"], ["preflight"], ["metrics"], ["bench"], ["logs"],
        ["monitoring", "--out", "out"],
    ],
)  # fmt: skip
def test_every_verb_loads_the_playbook_first(tmp_path: Path, argv: list[str]) -> None:
    path = write(tmp_path, GOOD.encode() + b"\xff\n")
    assert refused(path, *argv, line=7).endswith("not UTF-8 text: byte 0xff at offset 102")


# ---------------------------------------------------------------- YAML structure


def test_billion_laughs_is_refused_in_milliseconds(tmp_path: Path) -> None:
    path = write(tmp_path, BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 600
    start = time.perf_counter()
    message = refused(path, line=5)
    assert time.perf_counter() - start < 0.1
    assert message.endswith("aliases expand to more than 10,000 values (an alias bomb?)")


def test_an_alias_inside_its_own_anchor(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "    args: &x {--a: *x}\n")
    assert refused(path, line=7).endswith("alias *x is used inside its own anchor")


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5_000])
def test_deep_flow_nesting(tmp_path: Path, depth: int) -> None:
    path = write(tmp_path, GOOD + "    args: " + "[" * depth + "]" * depth + "\n")
    message = refused(path, line=7)
    assert "nested deeper than 64 levels" in message or "maximum nesting depth" in message


def test_deep_block_nesting_names_the_line(tmp_path: Path) -> None:
    nested = "".join("  " * i + f"k{i}:\n" for i in range(100))
    path = write(tmp_path, GOOD + textwrap.indent(nested, "    "))
    assert refused(path, line=6 + MAX_DEPTH - 1).endswith(f"nested deeper than {MAX_DEPTH} levels")


def test_merge_keys_work_and_explicit_keys_win(tmp_path: Path) -> None:
    playbook = GOOD.replace("  - name: a", "  - &base\n    name: a") + (
        "  - <<: *base\n    name: b\n    port: 8001\n    env: {A: b}\n"
    )
    outcome = run(["validate", str(write(tmp_path, playbook))])
    assert (outcome.rc, outcome.stderr) == (0, "")
    bad = playbook.replace("port: 8001", "port: true")
    assert refused(write(tmp_path, bad), line=10).endswith(
        "deployments[1].port: Input should be a valid integer"
    )


def test_merge_of_a_scalar_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "    <<: 5\n")
    assert refused(path, line=7).endswith("<< (merge) takes a mapping or a list of mappings")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2001-13-45", "'2001-13-45' is not a valid !!timestamp: month must be in 1..12"),
        ("!!python/object:os.system {}", "unsupported tag !!python/object:os.system"),
        ("!!python/name:os.system ''", "unsupported tag !!python/name:os.system"),
        ("!!binary aGk=", "unsupported tag !!binary"),
        ("!!int x", "'x' is not a valid !!int: invalid literal for int() with base 10: 'x'"),
        ("!!bool maybe", "'maybe' is not a valid !!bool"),
        ("1" * 5000, "a !!int of 5,000 characters is too long"),
        ("1:" * 5000 + "1", "a !!int of 10,001 characters is too long"),
        ("*nope", "alias *nope has no anchor before it"),
    ],
)
def test_yaml_constructor_errors(tmp_path: Path, value: str, expected: str) -> None:
    assert refused(write(tmp_path, GOOD + f"    dtype: {value}\n"), line=7).endswith(expected)


def test_two_documents_and_a_key_that_is_not_text(tmp_path: Path) -> None:
    assert refused(write(tmp_path, GOOD + "---\nx: 1\n"), line=7).endswith("one file holds one document")
    path = write(tmp_path, GOOD + "    env: {1: x}\n")
    assert refused(path, line=7).endswith("the key 1 is not text: quote it")


# ---------------------------------------------------------------- strings and scalars


@pytest.mark.parametrize(
    ("field", "value", "what"),
    [
        ("served_model_name", r'"a\nExecStartPre=/bin/sh -c id"', "a line break"),
        ("run_as", r'"vllm\n[program:evil]"', "a line break"),
        ("dtype", r'"auto\r"', "a carriage return"),
        ("bind", r'"0.0.0.0\x00"', "a NUL"),
        ("served_model_name", r'"a\u2028b"', "the character U+2028"),
        ("served_model_name", r'"a\x85b"', "the character U+0085"),
        ("served_model_name", r'"a\u202eb"', "the character U+202E"),
        ("env", r'{A: "x\ny"}', "a line break"),
        ("args", r'{--chat-template: "x\ny"}', "a line break"),
    ],
)
def test_a_string_with_a_line_break_or_control_character(
    tmp_path: Path, field: str, value: str, what: str
) -> None:
    message = refused(write(tmp_path, GOOD + f"    {field}: {value}\n"), line=7)
    assert f"deployments[0].{field}" in message
    assert message.endswith(f"contains {what} at position 1: one line of printable text expected") or (
        f"contains {what}" in message
    )


def test_a_lone_surrogate_never_reaches_plan(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + '    served_model_name: "a\\udc80"\n')
    refused(path, "plan", "--offline", line=7)
    with pytest.raises(ValueError, match="U\\+DC80"):  # and built without YAML, the model refuses it
        Deployment.model_validate({"name": "a", "hosts": ["h1"], "model": "/m", "dtype": "\udc80"})


def test_a_surrogate_in_a_key_is_escaped_in_the_message(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + '    "\\x1b[2J": x\n')
    assert refused(path, line=7).endswith("deployments[0].\\x1b[2J: unknown field")


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("port", "true", "port: Input should be a valid integer"),
        ("port", "8000.0", "port: Input should be a valid integer"),
        ("port", "'8000'", "port: Input should be a valid integer"),
        ("tensor_parallel_size", "yes", "tensor_parallel_size: Input should be a valid integer"),
        ("gpu_memory_utilization", "true", "gpu_memory_utilization: Input should be a valid number"),
        ("gpu_memory_utilization", ".nan", "gpu_memory_utilization: Input should be a finite number"),
        ("readiness", "{timeout_s: .inf}", "readiness.timeout_s: Input should be a finite number"),
        ("readiness", "{enabled: 1}", "readiness.enabled: Input should be a valid boolean"),
        ("max_model_len", str(2**64), "max_model_len: 18446744073709551616 does not fit in 64 bits"),
        ("served_model_name", "2001-01-01", "served_model_name: Input should be a valid string"),
    ],
)
def test_no_coercion(tmp_path: Path, field: str, value: str, expected: str) -> None:
    message = refused(write(tmp_path, GOOD + f"    {field}: {value}\n"), line=7)
    assert message.endswith(f"deployments[0].{expected}")


def test_a_bool_in_the_inventory_is_not_a_port(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, INVENTORY + "    port: true\n")
    refused(path, file=tmp_path / "inv.yml", line=4)


@pytest.mark.parametrize("value", ['"--port 9999"', '"--port=9999"', '"-O3"', '"--"'])
def test_a_flag_value_that_looks_like_a_flag(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, GOOD + f"    args: {{--enable-prefix-caching: {value}}}\n")
    assert "the value of --enable-prefix-caching looks like a flag" in refused(path, line=7)


@pytest.mark.parametrize(("flag", "field"), [("--por", "port"), ("--served-model", "served_model_name")])
def test_an_abbreviated_owned_flag_is_refused(tmp_path: Path, flag: str, field: str) -> None:
    path = write(tmp_path, GOOD + f"    args: {{{flag}: 9999}}\n")
    assert refused(path, line=7).endswith(
        f"deployments[0].args: {flag} is set by the field {field}, not in args"
    )


def test_a_negative_number_is_still_a_value(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "    args: {--seed: '-1', --max-num-seqs: -1}\n")
    assert run(["validate", str(path)]).rc == 0


# ---------------------------------------------------------------- secrets


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("HOSTILE_TOKEN", "sk-good")
    yield "HOSTILE_TOKEN"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("/dev/zero", "/dev/zero holds more than 64 KiB: not a secret"),
        ("/dev/urandom", "/dev/urandom holds more than 64 KiB: not a secret"),
        ("key.bin", "key.bin is not UTF-8 text (byte offset 2)"),
        ("key.crlf", "holds the control character U+000D: one line expected"),
        ("key.ls", "holds the control character U+2028: one line expected"),
        ("~nosuchuser/k", "cannot resolve '~nosuchuser/k'"),
    ],
)
def test_a_secret_file(tmp_path: Path, source: str, expected: str) -> None:
    (tmp_path / "key.bin").write_bytes(b"sk\xff")
    (tmp_path / "key.crlf").write_bytes(b"sk-1\r\nsk-2\n")
    (tmp_path / "key.ls").write_bytes("sk-1\u2028x".encode())
    path = write(tmp_path, GOOD + f"    api_key: {{file: {source}}}\n")
    start = time.perf_counter()
    message = refused(path, "plan")  # online plan reads secrets (before any host); --offline needs none
    assert f"error: {path}: deployment a: secret VLLM_API_KEY" in message and expected in message
    assert time.perf_counter() - start < 1


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\u2028b", "a\x85b", "a\tb"])
def test_a_secret_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str, value: str
) -> None:
    monkeypatch.setenv(token, value)
    path = write(tmp_path, GOOD + f"    secrets: {{HF_TOKEN: {{env: {token}}}}}\n")
    message = refused(path, "plan", file=Path("deployment a: secret HF_TOKEN holds"))
    assert message.endswith("one line expected")


# ---------------------------------------------------------------- the schema and the property


def _loose(annotation: Any, metadata: tuple[Any, ...] = ()) -> list[Any]:
    """Bare str, int, float or bool in an annotation: a field Pydantic would coerce into."""
    if annotation in (str, int, float, bool):
        strict = any(getattr(m, "strict", False) for m in metadata)
        return [] if strict else [annotation]
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        return _loose(args[0], tuple(args[1:]))
    return [bad for arg in args for bad in _loose(arg)]


def test_every_field_is_strict() -> None:
    assert (_loose(int), _loose(dict[str, model.Int]), _loose(tuple[model.Text, ...])) == ([int], [str], [])
    models = [v for v in vars(model).values() if isinstance(v, type) and issubclass(v, BaseModel)]
    loose = {
        f"{m.__name__}.{name}": _loose(field.annotation, tuple(field.metadata))
        for m in models
        if m.__module__ == model.__name__
        for name, field in m.model_fields.items()
    }
    assert {k: v for k, v in loose.items() if v} == {}
    assert len(loose) > 50


@settings(
    max_examples=500,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases())
def test_property_hostile_files_give_one_line_or_succeed(case: Any) -> None:
    os.environ.setdefault("ORCH_HOSTILE_TOKEN", "sk-test")
    with tempfile.TemporaryDirectory() as folder:
        for outcome in run_case(case, Path(folder)):
            assert not problems(outcome, Path(folder)), (case, problems(outcome, Path(folder)))
