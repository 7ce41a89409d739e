#!/bin/bash
# `orch bench` against `vllm bench serve` on the lent GPU machine: the same server (the real GPU
# vLLM 0.26.0, deployed by orch), the same prompts (orch's, given to vLLM as a `custom` dataset),
# lengths and concurrency. WARMUP pairs first (not counted: in earlier runs the server ran faster
# round after round at first), then paired rounds, the order alternating from pair to pair, until
# ROUNDS pairs are done or the next would end past BUDGET_S seconds after the start (a call has at
# most 10 minutes; a later STAGED=1 call on the same warm machine goes on where this one stopped: the
# results stay in /tmp/orch-bench-results). The server runs on cores SERVER_CPUS, the clients on
# CLIENT_CPUS, so that no client takes CPU from the server's processes (an --enforce-eager server is
# CPU-bound); prefix caching is off, so that every round asks the server for the same work.
#
# Staging as for gpu_e2e.sh (see benchmarks/gpu_stage.sh); the first call carries .device-stage/c6 and
# .device-orch/wheels. The model: the tiny model's tokenizer under a Qwen2.5-1.5B-shaped config
# (hidden 1536, 28 layers, 12 heads, 2 KV heads) with dummy weights, so that a decode step costs
# what a small real model's does. Back in $OUT: summary.txt, and raw.tar.gz (each run's console
# output and result JSON). DESTROY=1 removes the deployment at the end.
set -uo pipefail
OUT=${OUT:-/tmp/orch-gpu-bench}
export SERVER_CPUS=${SERVER_CPUS:-0-11}
source benchmarks/gpu_stage.sh
N=${N:-200} C=${C:-16} IN=${IN:-128} OUTLEN=${OUTLEN:-128} ROUNDS=${ROUNDS:-6} WARMUP=${WARMUP:-1}
BUDGET_S=${BUDGET_S:-560} CLIENT_CPUS=${CLIENT_CPUS:-12-15}
RES=/tmp/orch-bench-results; mkdir -p "$RES"
CLIENT=(); command -v taskset >/dev/null && CLIENT=(taskset -c "$CLIENT_CPUS")
note "server cores ${SERVER_CPUS}, client cores ${CLIENT_CPUS} ($(nproc --all) in all; ${CLIENT[*]:-no taskset})"
# The deadline on the epoch clock: T0 is the script's start (gpu_stage.sh).
END=$(awk -v a="$T0" -v b="$BUDGET_S" 'BEGIN { printf "%.0f", a + b }')

M=/tmp/models/q15
S=/tmp/site-bench
if [ "${STAGED:-0}" = 1 ] && [ -s /tmp/prompts.jsonl ]; then note "deployed already"; else
rm -rf $M; cp -r /tmp/models/tiny $M; rm -f $M/*.safetensors
python3 - "$M/config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config.pop("layer_types", None)
config.update(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
              num_key_value_heads=2, max_position_embeddings=4096)
json.dump(config, open(path, "w"), indent=1)
PY

mkdir -p $S
cat >$S/inventory.yml <<'INV'
hosts:
  gpubox: {address: 127.0.0.1, connection: local, runner: supervisord}
INV
cat >$S/pb.yml <<PB
inventory: inventory.yml
deployments:
  - name: q15
    hosts: [gpubox]
    model: $M
    served_model_name: q15
    gpus: [0]
    gpu_memory_utilization: 0.8
    max_model_len: 2048
    port: 8000
    launcher: {kind: api_server}
    args: {--enforce-eager: true, --load-format: dummy, --no-enable-prefix-caching: true}
    env: {PYTHONPATH: /tmp/site, NCCL_NVLS_ENABLE: "0", TORCH_SYMM_MEM_DISABLE_MULTICAST: "1", NVSHMEM_DISABLE_NVLS: "1"}
    readiness: {timeout_s: 480, interval_s: 2}
PB
step apply $ORCH apply -y $S/pb.yml || { tar -czf "$OUT/raw.tar.gz" -C "$OUT" r && rm -rf "$R"; exit 1; }
nvidia-smi >"$R/nvsmi-serving.txt"
grep Cpus_allowed_list "/proc/$(pgrep -f 'vllm.*serve' | head -1)/status" >"$R/server-cpus.txt" 2>&1

# The prompts, once, for both tools.
python3 - <<PY
import json
from orchestrator.observe.bench import BenchConfig, build_prompts
cfg = BenchConfig(base_url="", model="q15", num_requests=$N, input_len=$IN, seed=0)
with open("/tmp/prompts.jsonl", "w") as f:
    for p in build_prompts(cfg):
        f.write(json.dumps({"prompt": p}) + "\n")
PY
fi

vllm_bench() {  # vllm_bench NAME
  PYTHONPATH=/tmp/site:/tmp/orchsite "${CLIENT[@]}" python3 -m vllm.entrypoints.cli.main bench serve --backend openai \
    --base-url http://127.0.0.1:8000 --endpoint /v1/completions --model q15 --tokenizer $M \
    --dataset-name custom --dataset-path /tmp/prompts.jsonl --disable-shuffle --skip-chat-template \
    --num-prompts "$N" --custom-output-len "$OUTLEN" --ignore-eos --max-concurrency "$C" \
    --request-rate inf --seed 0 --num-warmups 0 --percentile-metrics ttft,tpot,itl,e2el \
    --metric-percentiles 50,90,99 --save-result --result-dir "$RES" --result-filename "$1.json"
}
orch_bench() {  # orch_bench NAME
  "${CLIENT[@]}" $ORCH bench $S/pb.yml -n "$N" -c "$C" --input-len "$IN" --output-len "$OUTLEN" --seed 0 \
    --save "$RES/$1.json"
}
pair() {  # pair NAME ODD: both clients, vLLM's first when ODD is 1
  if [ "$2" = 1 ]; then step "vllm-$1" vllm_bench "vllm-$1"; step "orch-$1" orch_bench "orch-$1"
  else step "orch-$1" orch_bench "orch-$1"; step "vllm-$1" vllm_bench "vllm-$1"; fi
}
done_pair() { [ -s "$RES/vllm-$1.json" ] && [ -s "$RES/orch-$1.json" ]; }
# PAIRED=K: first K paired runs (benchmarks/bench_paired.py, after one not counted), then the pairs.
if [ "${PAIRED:-0}" -gt 0 ] && [ ! -s "$OUT/paired.md" ]; then
  PYTHONPATH=/tmp/site:$PYTHONPATH "${CLIENT[@]}" python3 "$(dirname "$0")/bench_paired.py" --runs "$PAIRED" \
    --deadline "$END" --out "$RES" -n "$N" -c "$C" --input-len "$IN" --output-len "$OUTLEN" >"$OUT/paired.md" 2>"$R/paired.err"
  note "paired runs: exit $?"; cat "$OUT/paired.md"
fi
for w in $(seq 1 "$WARMUP"); do done_pair "w$w" || pair "w$w" $((w % 2)); done
longest=0
for i in $(seq 1 "$ROUNDS"); do
  done_pair "$i" && continue
  t=$(date +%s)
  [ $((t + longest * 11 / 10)) -gt "$END" ] && { note "pair $i left for a later call (budget)"; break; }
  pair "$i" $((i % 2)); d=$(($(date +%s) - t)); [ "$d" -gt "$longest" ] && longest=$d
done
python3 - "$RES" <<'PY' | tee -a "$OUT/summary.txt"
import statistics, sys
from pathlib import Path
from orchestrator.observe.bench import BenchResult
from orchestrator.observe.benchreport import from_vllm_json
res = Path(sys.argv[1])
def diff(a: float, b: float) -> float:
    return (b - a) / a * 100
rows = []
for i in range(1, 100):
    if not ((res / f"vllm-{i}.json").exists() and (res / f"orch-{i}.json").exists()):
        continue
    v = from_vllm_json((res / f"vllm-{i}.json").read_text())
    o = BenchResult.from_json((res / f"orch-{i}.json").read_text())
    row = (diff(v.output_throughput, o.output_throughput), diff(v.ttft.mean, o.ttft.mean), diff(v.tpot.mean, o.tpot.mean))
    rows.append(row)
    print(f"pair {i} ({'vllm' if i % 2 else 'orch'} first): output tok/s vllm {v.output_throughput:.1f} orch "
          f"{o.output_throughput:.1f} ({row[0]:+.2f} %); TTFT mean ms {v.ttft.mean:.1f} / {o.ttft.mean:.1f} "
          f"({row[1]:+.1f} %); TPOT mean ms {v.tpot.mean:.2f} / {o.tpot.mean:.2f} ({row[2]:+.1f} %); "
          f"failed {v.failed} / {o.failed}; output tokens {v.total_output_tokens} / {o.total_output_tokens}")
if rows:
    med = [statistics.median(c) for c in zip(*rows)]
    print(f"median of {len(rows)} pairs: output tok/s {med[0]:+.2f} %, TTFT mean {med[1]:+.1f} %, "
          f"TPOT mean {med[2]:+.1f} %")
PY
[ "${DESTROY:-0}" = 1 ] && step destroy $ORCH destroy -y $S/pb.yml
note "done"
# Few files come back: keep them in one.
tar -czf "$OUT/raw.tar.gz" -C "$OUT" r -C /tmp orch-bench-results && rm -rf "$R"
