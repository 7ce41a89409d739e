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
python3 "$(dirname "$0")/gauges.py" "$OUT/gauges.tsv" "$(cat "$OUT/t0.txt")" &
SCRAPER=$!
ROUNDS=${ROUNDS:-2} OUT=$OUT bash "$(dirname "$0")/gpu_bench_vs_vllm.sh"
kill $SCRAPER 2>/dev/null
