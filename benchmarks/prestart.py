"""Start a benchmark client ahead of its turn, release it when the run before it ends.

    python3 prestart.py GO READY MODULE ARG...

Imports what MODULE's command will need (for `vllm bench serve`: vLLM's CLI, its benchmark
modules, transformers, and a first load of the `--tokenizer` given in ARG; for `orch bench`: orch's
CLI and its bench verb), touches READY, then waits for a line on GO (a FIFO), and runs MODULE as
`python3 -m MODULE ARG...` would, with the same argv. So the time a tool spends importing itself
falls before its release, and both tools' first timed request comes about as soon after their
release as the tool's own argument parsing and prompt loading allow (gpu_bench_vs_vllm.sh,
EQUAL_IDLE=1). Prints the release time (epoch seconds) on stderr.
"""

import importlib
import os
import runpy
import sys
import time

go, ready, module, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
sys.path[0] = os.getcwd()  # as `python3 -m` has it
WARM = {
    "vllm": [
        "vllm.entrypoints.cli.main",
        "vllm.entrypoints.cli.benchmark.main",
        "vllm.entrypoints.cli.benchmark.serve",
        "vllm.entrypoints.cli.openai",
        "vllm.entrypoints.cli.serve",
        "vllm.entrypoints.cli.run_batch",
        "vllm.entrypoints.cli.collect_env",
        "vllm.benchmarks.serve",
        "vllm.benchmarks.datasets",
        "vllm.benchmarks.lib.endpoint_request_func",
        "transformers",
        "pandas",
        "aiohttp",
        "tqdm.asyncio",
    ],
    "orchestrator": [
        "orchestrator.cli.main",
        "orchestrator.cli.benchverb",
        "orchestrator.observe.bench",
        "aiohttp",
    ],
}
t = time.time()
for name in WARM.get(module.split(".")[0], [module]):
    try:
        importlib.import_module(name)
    except Exception as e:  # a module of another vLLM version: the command imports what it needs itself
        print(f"prestart: {name} not imported: {e!r}", file=sys.stderr)
if module.startswith("vllm"):
    try:
        from vllm import platforms

        platforms.current_platform.is_unspecified()
    except Exception as e:
        print(f"prestart: platform not resolved: {e!r}", file=sys.stderr)
    if "--tokenizer" in args:
        path = args[args.index("--tokenizer") + 1]
        try:
            from vllm.tokenizers import get_tokenizer
        except ImportError:
            from vllm.transformers_utils.tokenizer import get_tokenizer
        get_tokenizer(path)
print(f"prestart: ready after {time.time() - t:.1f} s", file=sys.stderr, flush=True)
open(ready, "w").close()
with open(go) as f:
    f.readline()
print(f"prestart: released {time.time():.3f}", file=sys.stderr, flush=True)
sys.argv = [module, *args]
runpy.run_module(module, run_name="__main__", alter_sys=True)
