"""Hostile playbooks and inventories, for tests/unit/test_hostile.py and benchmarks/hostile_input.py.

``cases()`` is a hypothesis strategy: a valid-ish playbook, inventory and secret file, then a
few mutations from the classes a fuzz run found (bad bytes and encodings, control characters,
surrogates, deep nesting, aliases and alias bombs, merge keys, huge numbers, wrong types,
unknown keys, odd tags, impossible dates, flag-like values, endless devices, truncation).
``run`` writes a case to a folder and runs the real CLI in-process, as a user would;
``problems`` says what in the outcome breaks the contract: exit 0, 1 (2 for plan), and on
failure one stderr line that names the file, within a second, never a traceback.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

from orchestrator.cli.main import main

LIMIT_S = 1.0
TOKEN_ENV = "ORCH_HOSTILE_TOKEN"

SCALARS = {
    # types YAML resolves that a field may not want
    "types": [
        *("true", "false", "yes", "on", "null", "~", "1.5", "8000.0", "-1", "0", "1e400", ".nan", ".inf"),
        *("2001-13-45", "2001-01-01", "2001-01-01 10:00:00", "1:30", "0x1F", "017", "0b101", "[]", "{}"),
        *("99999999999999999999999999", "1" * 70, "1:" * 40 + "1", "[1, [2, [3]]]", "{a: {b: c}}"),
    ],
    # characters that would break a line of a unit, env or supervisord file
    "characters": [
        *('"\\udc80"', '"\\ud800x"', '"a\\nExecStartPre=/bin/sh -c id"', '"a\\r"', '"\\x00"', '"\\x1b[31m"'),
        *('"\\u2028"', '"\\x85"', '"\\u202e"', '"a\\tb"', '"a\\n[program:evil]"', "'%h$HOME`id`$(id)'"),
    ],
    "flags": ['"--port=9999"', '"--port 9999"', '"-O3"', '"-1"', '"--"', '"--api-key=x"'],
    "tags": [
        *(
            "!!python/object:os.system {}",
            "!!python/name:os.system",
            "!!binary aGk=",
            "!!set {a}",
            "!custom x",
        ),
        *("!!int x", "!!bool maybe", "!!timestamp nope", "!!float abc", "!!str 12", "!!omap [a: 1]"),
        *("*nope", "<<", "=", "!", "''", '""', "|\n      block\n      text", "x" * 300),
    ],
    "paths": ["/dev/zero", "/dev/urandom", "~nosuchuser/x", "../../../../etc/passwd", "a" * 5000, "."],
}
# String fields that end up in a unit, env or supervisord file, as a deployment writes them.
FIELDS = [
    "served_model_name: {}", "run_as: {}", "dtype: {}", "bind: {}", "model: {}", "env: {{A: {}}}",
    "args: {{--chat-template: {}}}", "args: {{--enable-prefix-caching: {}}}", "api_key: {{file: {}}}",
    "templates: {{unit: {}}}", "launcher: {{venv: {}}}", "secrets: {{HF_TOKEN: {{env: {}}}}}",
]  # fmt: skip
KEYS = ["unknown_key", '"\\u2028"', '"a\\nb"', "1", "true", "2001-01-01", "? [a]\n   ", "<<", "--port"]
MUTATIONS = [
    "value", "value", "field", "field", "key", "merge", "deep", "bomb", "bytes", "encoding", "truncate",
    "control", "tag", "documents", "lines", "oversize", "secret",
]  # fmt: skip


@dataclass(frozen=True)
class Case:
    playbook: bytes
    inventory: bytes
    secret: bytes
    mutations: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    verb: str
    rc: int | None  # None: main raised
    stderr: str
    seconds: float
    traceback: str = ""


def _deployment(i: int, draw: st.DrawFn) -> list[str]:
    lines = [f"  - name: d{i}", f"    hosts: [{draw(st.sampled_from(['h1', 'h2', 'all', 'gpu']))}]"]
    model = draw(st.sampled_from(["/models/m", "Qwen/Qwen2.5-0.5B", "{source: hf, id: Qwen/Q, dest: /m/q}"]))
    lines += [f"    model: {model}", f"    port: {8000 + i}"]
    if draw(st.booleans()):
        lines += ["    accelerator: cpu"]
    else:
        lines += [f"    gpus: [{i}]"]
    optional = [
        "    served_model_name: served",
        "    gpu_memory_utilization: 0.8",
        "    max_model_len: 2048",
        "    args: {--enable-prefix-caching: true, --max-num-seqs: 8, --kv-cache-dtype: auto}",
        "    env: {HF_HOME: /data/hf, A_FLAG: '1'}",
        f"    secrets: {{HF_TOKEN: {{env: {TOKEN_ENV}}}}}",
        "    api_key: {file: key.txt}",
        "    readiness: {timeout_s: 60, interval_s: 0.5}",
        "    service: {timeout_start_s: 600, restart_sec: 5}",
        "    launcher: {kind: api_server, venv: /opt/vllm}",
        "    run_as: vllm",
    ]
    return lines + draw(st.lists(st.sampled_from(optional), unique=True, max_size=6))


@st.composite
def _base(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    playbook = ["inventory: inv.yml", "deployments:"]
    for i in range(draw(st.integers(1, 3))):
        playbook += _deployment(i, draw)
    inventory = ["hosts:"]
    for name in ("h1", "h2"):
        inventory += [f"  {name}:", f"    address: 10.0.0.{name[1]}", "    groups: [gpu]"]
    if draw(st.booleans()):
        inventory += ["    user: deploy", "    become: true", "    port: 2222"]
    if draw(st.booleans()):
        inventory = ["defaults: {scope: system, runner: supervisord}", *inventory]
    return playbook, inventory


def _scalar(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["list", "list", "text", "int", "float"]))
    if kind == "text":  # any string, as a YAML double-quoted scalar (JSON's escapes are YAML's)
        return json.dumps(draw(st.text(max_size=20)))
    if kind == "int":
        return str(draw(st.integers(min_value=-(2**80), max_value=2**80)))
    if kind == "float":
        return repr(draw(st.floats()))
    return draw(st.sampled_from(SCALARS[draw(st.sampled_from(sorted(SCALARS)))]))


def _mutate(kind: str, lines: list[str], draw: st.DrawFn) -> list[str]:
    at = draw(st.integers(0, len(lines) - 1)) if lines else 0
    line = lines[at] if lines else ""
    if kind == "value" and ": " in line:
        return [*lines[:at], line[: line.index(": ") + 2] + _scalar(draw), *lines[at + 1 :]]
    if kind == "field":  # a string field of a deployment, set to a character, flag or path
        value = draw(st.sampled_from([*SCALARS["characters"], *SCALARS["flags"], *SCALARS["paths"]]))
        field = "    " + draw(st.sampled_from(FIELDS)).format(value)
        after = next((i for i in range(at, len(lines)) if lines[i].startswith("    ")), len(lines) - 1)
        return [*lines[: after + 1], field, *lines[after + 1 :]]
    if kind == "key":
        indent = line[: len(line) - len(line.lstrip(" -"))].replace("-", " ")
        return [*lines[: at + 1], f"{indent}{draw(st.sampled_from(KEYS))}: {_scalar(draw)}", *lines[at + 1 :]]
    if kind == "merge":  # the first list item becomes an anchor that later lines merge
        first = next((i for i, x in enumerate(lines) if x.startswith("  - ")), None)
        if first is not None and first < at:
            lines = [*lines[:first], "  - &base", "    " + lines[first][4:], *lines[first + 1 :]]
            at += 1
        merge = draw(st.sampled_from(["<<: *base", "<<: [*base, {run_as: x}]", "<<: 5", "<<: *nope"]))
        return [*lines[: at + 1], f"    {merge}", *lines[at + 1 :]]
    if kind == "deep":
        depth = draw(st.integers(1, 6000))
        nested = draw(st.sampled_from(["[" * depth + "]" * depth, "{a: " * depth + "1" + "}" * depth]))
        return [*lines[:at], (line.split(": ")[0] + ": " + nested) if ": " in line else nested, *lines[at:]]
    if kind == "bomb":
        levels, fan = draw(st.integers(1, 10)), draw(st.integers(1, 12))
        bomb = ['x-lol0: &l0 "lol"']
        bomb += [f"x-lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]" for i in range(1, levels)]
        return [*bomb, *lines]
    if kind == "tag":
        tag = draw(st.sampled_from(["!!python/object:os.system", "!!map", "!!seq", "!!omap", "!x", "!"]))
        return [*lines[:at], line.replace(": ", f": {tag} ", 1), *lines[at + 1 :]]
    if kind == "documents":
        return [*lines, draw(st.sampled_from(["---", "--- x", "...", "%YAML 1.1", "---\nx: 1"]))]
    if kind == "lines":
        op = draw(st.sampled_from(["dup", "del", "dedent", "indent"]))
        new = {"dup": [line, line], "del": [], "dedent": [line.lstrip()], "indent": ["   " + line]}[op]
        return [*lines[:at], *new, *lines[at + 1 :]]
    if kind == "control":
        char = chr(draw(st.sampled_from([*range(0, 32), *range(0x7F, 0xA0), 0x2028, 0x2029, 0xFEFF])))
        cut = draw(st.integers(0, len(line)))
        return [*lines[:at], line[:cut] + char + line[cut:], *lines[at + 1 :]]
    return lines


def _encode(kind: str, text: str, draw: st.DrawFn) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    if kind == "bytes":
        cut = draw(st.integers(0, len(data)))
        return data[:cut] + draw(st.binary(min_size=1, max_size=16)) + data[cut:]
    if kind == "encoding":
        codec = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32", "utf-8-sig", "latin-1", "cp1252"]))
        return text.encode(codec, "replace")
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    if kind == "oversize":
        return data + b"#" * (256 * 1024)
    return data


@st.composite
def cases(draw: st.DrawFn) -> Case:
    playbook, inventory = draw(_base())
    kinds = tuple(draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3)))
    files = {"playbook": playbook, "inventory": inventory}
    targets = [draw(st.sampled_from(["playbook", "playbook", "playbook", "inventory"])) for _ in kinds]
    for kind, target in zip(kinds, targets, strict=True):
        files[target] = _mutate(kind, files[target], draw)
    encoded = {}
    for target, lines in files.items():
        data = "\n".join(lines) + "\n"
        byte_kinds = [k for k, t in zip(kinds, targets, strict=True) if t == target]
        encoded[target] = _encode(byte_kinds[-1] if byte_kinds else "", data, draw)
    secret = b"sk-test-0123456789\n"
    if "secret" in kinds:
        secret = draw(st.sampled_from([b"", b"a\nb", b"a\rb", b"\xff\xfe", b"k\xe2\x80\xa8", b"x" * 70_000]))
    return Case(encoded["playbook"], encoded["inventory"], secret, kinds)


def write(case: Case, folder: Path) -> Path:
    (folder / "inv.yml").write_bytes(case.inventory)
    (folder / "key.txt").write_bytes(case.secret)
    path = folder / "pb.yml"
    path.write_bytes(case.playbook)
    return path


def run(argv: list[str]) -> Outcome:
    """The real CLI, in-process: exit code, stderr and time, or the traceback if it raised.

    The objects already alive (hypothesis keeps many) are frozen out of the garbage collector
    for the run: a full collection over them pauses for up to 0.7 s after thousands of cases,
    a cost of the test process that an `orch` process, starting empty, never pays.
    """
    err = io.StringIO()
    gc.freeze()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
    except (Exception, SystemExit):  # the contract is that nothing escapes: record whatever did
        return Outcome(argv[0], None, err.getvalue(), time.perf_counter() - start, traceback.format_exc())
    finally:
        gc.unfreeze()
    return Outcome(argv[0], rc, err.getvalue(), time.perf_counter() - start)


def run_case(case: Case, folder: Path) -> list[Outcome]:
    path = write(case, folder)
    return [run(["validate", str(path)]), run(["plan", "--offline", str(path)])]


def problems(outcome: Outcome, folder: Path) -> list[str]:
    """What in ``outcome`` breaks the contract; empty when it holds."""
    if outcome.rc is None:
        return [f"{outcome.verb} raised:\n{outcome.traceback}"]
    found = []
    allowed = {0, 1, 2} if outcome.verb == "plan" else {0, 1}
    if outcome.rc not in allowed:
        found.append(f"{outcome.verb} exited {outcome.rc}")
    lines = outcome.stderr.splitlines()
    if outcome.rc == 1:
        if len(lines) != 1:
            found.append(f"{outcome.verb}: {len(lines)} stderr lines: {outcome.stderr[:2000]!r}")
        elif not names_a_file(lines[0], folder):
            found.append(f"{outcome.verb}: the error names no file: {lines[0]!r}")
    if outcome.seconds > LIMIT_S:
        found.append(f"{outcome.verb} took {outcome.seconds:.2f} s")
    return found


def names_a_file(line: str, folder: Path) -> bool:
    """The playbook or inventory (or a secret's deployment and name, or the template that failed).

    A playbook may name an inventory anywhere (``../inventory/x.yml``): then that path is named.
    """
    named = re.match(r"error: (/[^:]*)(:\d+)?: ", line)
    return str(folder) in line or " secret " in line or (named is not None and Path(named[1]).exists())
