#!/usr/bin/env python3
"""Paired runs of orch's request function against vLLM's, on the server's own machine.

Run where vLLM's benchmark code and orch's load generator (`orchestrator.observe.bench`, `benchclient`)
both import: on the GPU machine by benchmarks/gpu_bench_vs_vllm.sh, in a test host by
benchmarks/bench_vs_vllm.py (`--json`). One run of N requests whose requests alternate between vLLM's own
request function (`async_request_openai_completions`, what `vllm bench serve` calls) and orch's
(`benchclient.measure_request`, what `orch bench` calls), on one connection pool under one semaphore of C
slots, so that both clients meet the same server at the same moments: the server's own swings (from run to
run they reach ±15 % on the lent GPU machine) fall on both alike. Per run and over all runs: each client's
TTFT, TPOT and end-to-end means, and the mean time a request held its slot, which at a fixed concurrency
sets the output throughput. Prints a Markdown table and writes each run's rows to OUT/paired-K.json; with
`--json`, prints each run's rows as one JSON line instead (a failed request's row is null).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import aiohttp
from vllm.benchmarks.lib.endpoint_request_func import RequestFuncInput, async_request_openai_completions

from orchestrator.observe import bench, benchclient

Row = tuple[float, float, float, int]  # ttft s, e2e s, slot s, output tokens


async def paired(cfg: bench.BenchConfig, first: str) -> dict[str, list[Row | None]]:
    """One run; a failed request's row is None."""
    slots = asyncio.Semaphore(cfg.concurrency)
    rows: dict[str, list[Row | None]] = {"vllm": [], "orch": []}
    connector = aiohttp.TCPConnector(limit=cfg.concurrency, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as s:

        async def one(i: int, prompt: str) -> None:
            kind = first if i % 2 == 0 else ("orch" if first == "vllm" else "vllm")
            async with slots:
                t0 = time.perf_counter()
                if kind == "orch":
                    o = await benchclient.measure_request(s, cfg, prompt)
                    ok, ttft, e2e, tokens = o.ok, o.ttft_s, o.e2e_s, o.output_tokens
                else:
                    inp = RequestFuncInput(
                        prompt=prompt,
                        api_url=cfg.base_url + "/v1/completions",
                        prompt_len=0,
                        output_len=cfg.output_len,
                        model=cfg.model,
                        ignore_eos=True,
                    )
                    v = await async_request_openai_completions(inp, s)
                    ok, ttft, e2e, tokens = v.success, v.ttft, v.latency, v.output_tokens
                rows[kind].append((ttft, e2e, time.perf_counter() - t0, tokens) if ok else None)

        await asyncio.gather(*(one(i, p) for i, p in enumerate(bench.build_prompts(cfg))))
    return rows


def means(rows: list[Row]) -> tuple[float, float, float, float]:
    """TTFT, TPOT, end-to-end and slot means, ms."""
    ttft = statistics.fmean(r[0] for r in rows) * 1000
    tpot = statistics.fmean((r[1] - r[0]) / (r[3] - 1) for r in rows if r[3] > 1) * 1000
    return (
        ttft,
        tpot,
        statistics.fmean(r[1] for r in rows) * 1000,
        statistics.fmean(r[2] for r in rows) * 1000,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="q15")
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("-c", type=int, default=16)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="paired runs first, not counted")
    ap.add_argument("--deadline", type=float, default=float("inf"), help="time.time() to end by")
    ap.add_argument(
        "--first", choices=("vllm", "orch"), help="the client of the first request (default: by turns)"
    )
    ap.add_argument("--json", action="store_true", help="each run's rows as a JSON line, no table")
    ap.add_argument("--out", type=Path, help="where paired-K.json go (the table's mode)")
    a = ap.parse_args()
    cfg = bench.BenchConfig(
        base_url=a.url, model=a.model, num_requests=a.n, concurrency=a.c, input_len=a.input_len,
        output_len=a.output_len, seed=0, ignore_eos=True,
    )  # fmt: skip
    for _ in range(a.warmup):
        asyncio.run(paired(cfg, "vllm"))
    if a.json:
        for k in range(1, a.runs + 1):
            print(json.dumps(asyncio.run(paired(cfg, a.first or ("vllm" if k % 2 else "orch")))), flush=True)
        return
    print(f"Paired runs: {a.n} requests each, concurrency {a.c}, {a.input_len} prompt words, {a.output_len} "
          "output tokens; means per request in ms.\n")  # fmt: skip
    print("| run | first | client | TTFT | TPOT | E2E | slot |\n|---|---|---|---|---|---|---|")
    total: dict[str, list[Row]] = {"vllm": [], "orch": []}
    longest = 0.0
    for k in range(1, a.runs + 1):
        if time.time() + longest * 1.1 > a.deadline:
            print(f"\n(run {k} left out: the time budget)")
            break
        t = time.time()
        first = a.first or ("vllm" if k % 2 else "orch")
        got = asyncio.run(paired(cfg, first))
        longest = max(longest, time.time() - t)
        if a.out:
            (a.out / f"paired-{k}.json").write_text(json.dumps({"first": first, **got}))
        rows = {name: [r for r in got[name] if r is not None] for name in got}
        if any(len(rows[name]) < len(got[name]) for name in got):
            raise SystemExit(f"run {k}: a request failed")
        for name in ("vllm", "orch"):
            total[name] += rows[name]
            print(f"| {k} | {first} | {name} | " + " | ".join(f"{m:.2f}" for m in means(rows[name])) + " |",
                  flush=True)  # fmt: skip
    if not total["orch"]:
        return
    v, o = means(total["vllm"]), means(total["orch"])
    print("| all | | vllm | " + " | ".join(f"{m:.2f}" for m in v) + " |")
    print("| all | | orch | " + " | ".join(f"{m:.2f}" for m in o) + " |")
    print(f"\norch against vLLM's request function: TTFT mean {(o[0] - v[0]) / v[0] * 100:+.2f} %, TPOT mean "
          f"{(o[1] - v[1]) / v[1] * 100:+.2f} %, output throughput implied by the slot times "
          f"{(v[3] / o[3] - 1) * 100:+.2f} %")  # fmt: skip


if __name__ == "__main__":
    main()
