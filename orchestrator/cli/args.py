"""The verbs' arguments: one argparse parser, and the types its options read."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from .. import __version__

VERB_HELP: dict[str, str] = {
    "validate": "check a playbook and its inventory (no network)",
    "plan": "show what apply would change (exit 0: nothing, 2: changes)",
    "apply": "converge hosts to the playbook, gate on readiness, record a revision",
    "rollback": "return to an earlier revision through the same path as apply",
    "status": "unit state, revision and readiness of every deployment",
    "revisions": "the revisions recorded on each host",
    "destroy": "stop, disable and remove deployments (revisions are kept)",
    "preflight": "check GPUs, memory, port, launcher, model and fit before deploying",
    "metrics": "scrape /metrics: queue, KV-cache usage, TTFT / ITL / latency percentiles",
    "bench": "load-test a deployment (TTFT, TPOT, ITL, throughput), tagged with its revision",
    "monitoring": "render a Prometheus scrape config and a Grafana dashboard for the playbook",
    "logs": "the journal of each deployment's unit",
}


def parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given the command line, only its verb's sub-parser (``orch -h`` and errors get all).

    Building the 13 sub-parsers is a few milliseconds of a start that ``validate`` keeps short.
    """
    p = argparse.ArgumentParser(prog="orch", description="Declarative vLLM deployments over SSH and systemd.")
    p.add_argument("--version", action="version", version=f"orch {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    named = _verb_of(argv)
    for verb, help_text in VERB_HELP.items():
        if named is not None and verb != named:
            continue
        sp = sub.add_parser(verb, help=help_text, description=help_text)
        sp.add_argument(
            "playbook",
            type=Path,
            nargs="?" if verb == "bench" else None,
            help="the playbook, or a plan saved by `orch plan --out`" if verb == "apply" else "the playbook",
        )
        sp.add_argument("-i", "--inventory", type=Path, help="use this inventory instead of the playbook's")
        if verb != "validate":
            sp.add_argument("--limit", action="append", metavar="HOST", help="only these hosts (repeatable)")
            sp.add_argument("--deployment", "-d", metavar="NAME", help="only this deployment")
            sp.add_argument(
                "-v",
                "--verbose",
                action="count",
                default=0,
                help="-v: each command run on a host (label, host, exit code, time) on stderr; "
                "-vv: its script too (secrets hidden, stdin never shown)",
            )
        _verb_options(verb, sp)
    if named is None or named == "import":
        _import_parser(sub)
    return p


def _verb_of(argv: Sequence[str] | None) -> str | None:
    """The verb ``argv`` names first, when it is one (what argparse would take as the verb)."""
    if argv is None:
        return None
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in VERB_HELP or first == "import" else None


def _import_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "turn runbook command lines (vllm serve …) or a systemd unit into a playbook"
    sp = sub.add_parser("import", help=text, description=text)
    sp.add_argument("command", nargs="*", metavar="-- COMMAND", help="one command line, after --")
    sp.add_argument(
        "--file", type=Path, metavar="RUNBOOK", help="command lines (\\ continuations, #, export, source)"
    )
    sp.add_argument("--from-unit", type=Path, metavar="UNIT", help="a systemd unit: ExecStart=, Environment=")
    sp.add_argument(
        "--host", type=host_spec, metavar="NAME[=ADDRESS]", help="the host the deployments run on (gpu1)"
    )
    sp.add_argument("--out", type=Path, metavar="PLAYBOOK", help="write the playbook (default: print it)")
    sp.add_argument("-i", "--inventory", metavar="PATH", help="the inventory the playbook names")
    sp.add_argument(
        "--inventory-out", type=Path, metavar="FILE", help="write an inventory with the --host NAME=ADDRESS"
    )


def host_spec(text: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME=ADDRESS`` (argparse type)."""
    from ..core.scalars import NAME  # Pydantic comes with it: not on every verb's start

    name, eq, address = text.partition("=")
    if not re.match(NAME, name) or (eq and not address.strip()):
        raise argparse.ArgumentTypeError(f"not NAME[=ADDRESS] with a lower-case name like gpu1: {text!r}")
    return name, address.strip() if eq else None


JSON_HELP = dict.fromkeys(
    ("plan", "status", "revisions", "validate", "preflight", "metrics"), "machine-readable output"
) | {
    "logs": "one JSON object a line: {host, deployment, line}",
    "monitoring": "the files written, as JSON",
    "bench": "the result (or the comparison) as JSON",
}


def _verb_options(verb: str, sp: argparse.ArgumentParser) -> None:
    if verb in JSON_HELP:
        sp.add_argument("--json", action="store_true", help=JSON_HELP[verb])
    if verb == "plan":
        sp.add_argument("--offline", action="store_true", help="render only; no SSH")
        sp.add_argument(
            "--out",
            type=Path,
            metavar="PLAN.json",
            help="save the plan (no secret values in it); `orch apply PLAN.json` carries out exactly it",
        )
    if verb in ("apply", "rollback", "destroy"):
        sp.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
        sp.add_argument(
            "--lock-timeout",
            type=duration,
            default=0.0,
            metavar="DURATION",
            help="wait this long (30s, 5m, 1h) for another verb's lock on a host instead of failing at once",
        )
    if verb in ("apply", "destroy"):
        sp.add_argument(
            "--reap",
            action="store_true",
            help="also end the deployment's own processes that outlived a stop (its unit's or program's, "
            "nothing else), and say which",
        )
    if verb in ("apply", "rollback"):
        sp.add_argument("--no-rollback", action="store_true", help="keep a failed state for debugging")
        sp.add_argument("--force", action="store_true", help="apply even when preflight finds errors")
    if verb == "rollback":
        sp.add_argument("--to", type=int, metavar="REV", help="revision number (default: the previous one)")
    if verb == "status":
        sp.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    if verb == "bench":
        _bench_options(sp)
    if verb == "monitoring":
        sp.add_argument(
            "--out", type=Path, required=True, help="folder for prometheus.yml, targets.json, dashboard"
        )
        sp.add_argument("--gpu-exporter-port", type=int, help="also scrape each host's DCGM exporter here")
    if verb == "logs":
        sp.add_argument("-n", "--lines", type=int, default=50)
        sp.add_argument("-f", "--follow", action="store_true")


def _bench_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("-n", "--num-requests", type=int, default=100)
    sp.add_argument("-c", "--concurrency", type=int, default=8)
    sp.add_argument(
        "--request-rate", type=float, help="requests/s with Poisson arrivals (default: all at once)"
    )
    sp.add_argument(
        "--input-len", type=int, default=128, help="prompt length in words (about as many tokens)"
    )
    sp.add_argument("--output-len", type=int, default=64)
    sp.add_argument("--prompt", help="one fixed prompt instead of random words")
    sp.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--save", type=Path, metavar="FILE.json", help="write the result here")
    sp.add_argument(
        "--compare", nargs=2, type=Path, metavar=("A.json", "B.json"), help="compare two saved results"
    )


def duration(text: str) -> float:
    """``30``, ``30s``, ``5m``, ``1h`` → seconds (argparse type)."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (say 30s, 5m or 1h)") from None
    if value < 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}")
    return value
