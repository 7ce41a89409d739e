#!/bin/bash
# Why do `orch bench` and `vllm bench serve` load the same server differently (docs/gpu-bench-h200.md)?
# Runs benchmarks/gpu_bench_vs_vllm.sh (ROUNDS interleaved rounds, default 2) while a scraper reads the
# server's own gauges every 50 ms — vllm:num_requests_running and vllm:num_requests_waiting — so that
# each tool's run can be compared by what the server saw: how many requests it ran at once.
# Staging and carry as for gpu_bench_vs_vllm.sh; back in $OUT: its files plus gauges.tsv (seconds from
# this script's start, running, waiting) and t0.txt.
set -uo pipefail
OUT=${OUT:-/tmp/orch-gpu-probe}; mkdir -p "$OUT"
date +%s.%N >"$OUT/t0.txt"
python3 - "$OUT/gauges.tsv" "$(cat "$OUT/t0.txt")" <<'PY' &
import sys, time, urllib.request
path, t0 = sys.argv[1], float(sys.argv[2])
want = ("vllm:num_requests_running", "vllm:num_requests_waiting")
with open(path, "w") as out:
    while True:
        try:
            text = urllib.request.urlopen("http://127.0.0.1:8000/metrics", timeout=1).read().decode()
        except Exception:
            time.sleep(0.5)
            continue
        got = {k: 0.0 for k in want}
        for line in text.splitlines():
            for k in want:
                if line.startswith(k):
                    got[k] += float(line.rsplit(" ", 1)[-1])
        out.write(f"{time.time() - t0:.3f}\t{got[want[0]]:g}\t{got[want[1]]:g}\n")
        out.flush()
        time.sleep(0.05)
PY
SCRAPER=$!
ROUNDS=${ROUNDS:-2} OUT=$OUT bash "$(dirname "$0")/gpu_bench_vs_vllm.sh"
kill $SCRAPER 2>/dev/null
