#!/bin/bash
# `orch bench` against `vllm bench serve` on the lent GPU machine: the same server (the real GPU
# vLLM 0.26.0, deployed by orch), the same prompts (orch's, given to vLLM as a `custom` dataset),
# lengths and concurrency; the two clients run one after the other, ROUNDS times, order alternating.
# Here the client has 16 cores of its own, unlike on the 2-core test bed (bench_vs_vllm.md).
#
# Staging as for gpu_e2e.sh (see benchmarks/gpu_stage.sh); this call carries .device-stage/c6 and
# .device-orch/wheels. The model: the tiny model's tokenizer under a Qwen2.5-1.5B-shaped config
# (hidden 1536, 28 layers, 12 heads, 2 KV heads) with dummy weights, so that a decode step costs
# what a small real model's does. Everything measured goes to $OUT (summary.txt, results/*.json).
set -uo pipefail
OUT=${OUT:-/tmp/orch-gpu-bench}
source benchmarks/gpu_stage.sh
N=${N:-200} C=${C:-16} IN=${IN:-128} OUTLEN=${OUTLEN:-128} ROUNDS=${ROUNDS:-2}
RES=$OUT/results; mkdir -p "$RES"

M=/tmp/models/q15; [ "${STAGED:-0}" = 1 ] || { rm -rf $M; cp -r /tmp/models/tiny $M; rm -f $M/*.safetensors; }
python3 - "$M/config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config.pop("layer_types", None)
config.update(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
              num_key_value_heads=2, max_position_embeddings=4096)
json.dump(config, open(path, "w"), indent=1)
PY

S=/tmp/site-bench; mkdir -p $S
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
    args: {--enforce-eager: true, --load-format: dummy}
    env: {PYTHONPATH: /tmp/site, NCCL_NVLS_ENABLE: "0", TORCH_SYMM_MEM_DISABLE_MULTICAST: "1", NVSHMEM_DISABLE_NVLS: "1"}
    readiness: {timeout_s: 480, interval_s: 2}
PB
step apply $ORCH apply -y $S/pb.yml || { tar -czf "$OUT/raw.tar.gz" -C "$OUT" r && rm -rf "$R"; exit 1; }
nvidia-smi >"$R/nvsmi-serving.txt"

# The prompts, once, for both tools.
python3 - <<PY
import json
from orchestrator.observe.bench import BenchConfig, build_prompts
cfg = BenchConfig(base_url="", model="q15", num_requests=$N, input_len=$IN, seed=0)
with open("/tmp/prompts.jsonl", "w") as f:
    for p in build_prompts(cfg):
        f.write(json.dumps({"prompt": p}) + "\n")
PY

# ROUNDS=0: stage and deploy only (a call has at most 10 minutes); then STAGED=1 runs the rounds.
[ "$ROUNDS" = 0 ] && { note "deployed; rounds left to a STAGED=1 call"; tar -czf "$OUT/raw.tar.gz" -C "$OUT" r && rm -rf "$R"; exit 0; }

vllm_bench() {  # vllm_bench NAME
  PYTHONPATH=/tmp/site:/tmp/orchsite python3 -m vllm.entrypoints.cli.main bench serve --backend openai \
    --base-url http://127.0.0.1:8000 --endpoint /v1/completions --model q15 --tokenizer $M \
    --dataset-name custom --dataset-path /tmp/prompts.jsonl --disable-shuffle --skip-chat-template \
    --num-prompts "$N" --custom-output-len "$OUTLEN" --ignore-eos --max-concurrency "$C" \
    --request-rate inf --seed 0 --num-warmups 0 --percentile-metrics ttft,tpot,itl,e2el \
    --metric-percentiles 50,90,99 --save-result --result-dir "$RES" --result-filename "$1.json"
}
orch_bench() {  # orch_bench NAME
  $ORCH bench $S/pb.yml -n "$N" -c "$C" --input-len "$IN" --output-len "$OUTLEN" --seed 0 --save "$RES/$1.json"
}
[ "${STAGED:-0}" = 1 ] || step warmup orch_bench warmup  # a fresh server: one round to warm it
for i in $(seq 1 "$ROUNDS"); do
  if [ $((i % 2)) -eq 1 ]; then step "vllm-$i" vllm_bench "vllm-$i"; step "orch-$i" orch_bench "orch-$i"
  else step "orch-$i" orch_bench "orch-$i"; step "vllm-$i" vllm_bench "vllm-$i"; fi
done
$ORCH bench --compare "$RES/vllm-$ROUNDS.json" "$RES/orch-$ROUNDS.json" >"$OUT/compare.txt" 2>&1
python3 - "$RES" "$ROUNDS" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
from pathlib import Path
from orchestrator.observe.bench import BenchResult
from orchestrator.observe.benchreport import from_vllm_json
res, rounds = Path(sys.argv[1]), int(sys.argv[2])
for i in range(1, rounds + 1):
    v = from_vllm_json((res / f"vllm-{i}.json").read_text())
    o = BenchResult.from_json((res / f"orch-{i}.json").read_text())
    a, b = v.output_throughput, o.output_throughput
    print(f"round {i}: output tok/s vllm {a:.1f}  orch {b:.1f}  ({(b - a) / a * 100:+.1f} %)")
PY
step destroy $ORCH destroy -y $S/pb.yml
note "done"
tar -czf "$OUT/raw.tar.gz" -C "$OUT" r results && rm -rf "$R" "$RES"  # few files come back: keep them in one
