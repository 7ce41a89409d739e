"""``orch bench``: load-test one deployment, or compare two saved results."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from rich.markup import escape

from .. import __version__, outputs, status
from ..errors import ConfigError
from ..observe import bench, benchreport
from .common import EXIT_ERROR, EXIT_OK, loaded_of, targets_of, trace_of
from .output import err, out, run_bench, show_table


def cmd_bench(args: argparse.Namespace) -> int:
    if args.compare:
        a, b = (_read_bench(p) for p in args.compare)
        labels = (args.compare[0].stem, args.compare[1].stem)
        if args.json:
            out.print_json(data=_compare_json(a, b, labels))
        else:
            show_table(benchreport.format_compare(a, b, labels=labels))
        return EXIT_OK
    if args.playbook is None:
        raise ConfigError("bench needs a PLAYBOOK (or --compare A.json B.json)", file="orch bench")
    if min(args.num_requests, args.concurrency, args.output_len) < 1:
        raise ConfigError(
            "--num-requests, --concurrency and --output-len must be at least 1", file="orch bench"
        )
    loaded = loaded_of(args)
    target, revision, ep = status.bench_target(loaded, targets_of(loaded, args), trace=trace_of(args))
    cfg = bench.BenchConfig(
        base_url=ep.base_url,
        model=ep.served_name,
        num_requests=args.num_requests,
        concurrency=args.concurrency,
        request_rate=args.request_rate,
        input_len=args.input_len,
        output_len=args.output_len,
        prompt=args.prompt,
        seed=args.seed,
        api_key=ep.api_key,
        endpoint=args.endpoint,
    )
    result = bench.with_tags(
        run_bench(cfg),
        deployment=target.deployment.name,
        host=target.host_name,
        revision=str(revision or "-"),
        orch_version=__version__,
    )
    title = f"{target.deployment.name} on {target.host_name}, revision {revision or '-'}"
    if args.json:
        out.print(result.to_json(), markup=False, soft_wrap=True)
    else:
        show_table(benchreport.format_table(result, title=title))
    if args.save:
        outputs.write_text(args.save, result.to_json())
        (err if args.json else out).print(f"saved {escape(str(args.save))}")
    return EXIT_OK if result.completed else EXIT_ERROR


def _read_bench(path: Path) -> bench.BenchResult:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from exc
    try:
        if '"orch-bench/' in text:
            return bench.BenchResult.from_json(text)
        return benchreport.from_vllm_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"not a bench result: {exc}", file=str(path)) from exc


def _compare_json(a: bench.BenchResult, b: bench.BenchResult, labels: tuple[str, str]) -> dict[str, Any]:
    """The comparison as data; a change from zero (infinite) is null."""
    rows = [
        {"metric": m, "a": va, "b": vb, "change_pct": pct if math.isfinite(pct) else None}
        for m, va, vb, pct in benchreport.compare(a, b)
    ]
    return {"a": labels[0], "b": labels[1], "metrics": rows}
