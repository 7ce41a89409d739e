"""``orch bench``: load-test one deployment, or compare two saved results."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__, outputs, status
from ..errors import ConfigError
from ..observe import bench, benchreport
from .common import EXIT_ERROR, EXIT_OK, loaded_of, targets_of
from .output import out, run_bench


def cmd_bench(args: argparse.Namespace) -> int:
    if args.compare:
        a, b = (_read_bench(p) for p in args.compare)
        out.print(benchreport.format_compare(a, b, labels=(args.compare[0].stem, args.compare[1].stem)))
        return EXIT_OK
    if args.playbook is None:
        raise ConfigError("bench needs a PLAYBOOK (or --compare A.json B.json)", file="orch bench")
    if min(args.num_requests, args.concurrency, args.output_len) < 1:
        raise ConfigError(
            "--num-requests, --concurrency and --output-len must be at least 1", file="orch bench"
        )
    loaded = loaded_of(args)
    target, revision, ep = status.bench_target(loaded, targets_of(loaded, args))
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
    out.print(benchreport.format_table(result, title=title))
    if args.save:
        outputs.write_text(args.save, result.to_json())
        out.print(f"saved {args.save}")
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
