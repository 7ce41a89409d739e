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
#
# The server's shape (defaults as in the runs of docs/gpu-bench-h200.md up to 2026-12-02): SHAPE=1.5b
# or SHAPE=7b (Qwen2.5-7B-shaped: hidden 3584, 28 layers, 28 heads, 4 KV heads, head_dim 128; with
# the tiny tokenizer's 512-token vocabulary); EAGER=1 passes --enforce-eager (a CPU-bound server),
# EAGER=0 leaves vLLM's compiled model and CUDA graphs on (compiled and captured at the first start);
# MAX_SEQS, where set, passes --max-num-seqs (fewer CUDA graph sizes to capture at the start).
#
# EQUAL_IDLE=1 (the default): each client is started ahead of its turn (benchmarks/prestart.py: vLLM
# imports itself and loads the tokenizer, orch imports itself, on core PRE_CPUS while the run before
# goes on on CLIENT_CPUS) and released the moment the run before it ends, so that both tools' first
# timed request meets a server idle for about the same short time. (EQUAL_IDLE=0, as before: each
# tool started when the one before has ended; `vllm bench serve` then meets a server idle for the
# 25-30 s it takes to import itself, orch one idle for about 1 s.) vLLM's one-prompt ready check is
# skipped where its version has --ready-check-timeout-sec. A scraper reads the server's
# vllm:num_requests_running every 50 ms; the summary gives, for each run, the idle the server had
# before the run's first timed request. A STAGED=1 call begins with one orch run not counted, so
# that its first pair too follows a busy server.
set -uo pipefail
OUT=${OUT:-/tmp/orch-gpu-bench}
export SERVER_CPUS=${SERVER_CPUS:-0-11}
source benchmarks/gpu_stage.sh
N=${N:-200} C=${C:-16} IN=${IN:-128} OUTLEN=${OUTLEN:-128} ROUNDS=${ROUNDS:-6} WARMUP=${WARMUP:-1}
EQUAL_IDLE=${EQUAL_IDLE:-1} BUDGET_S=${BUDGET_S:-560} PRE_CPUS=${PRE_CPUS:-15} LOOKAHEAD=${LOOKAHEAD:-1}
if [ "$EQUAL_IDLE" = 1 ]; then CLIENT_CPUS=${CLIENT_CPUS:-12-14}; else CLIENT_CPUS=${CLIENT_CPUS:-12-15}; fi
RES=/tmp/orch-bench-results; mkdir -p "$RES"
CLIENT=() PRE=(); command -v taskset >/dev/null && CLIENT=(taskset -c "$CLIENT_CPUS") PRE=(taskset -c "$PRE_CPUS")
note "server cores ${SERVER_CPUS}, client cores ${CLIENT_CPUS}, EQUAL_IDLE=$EQUAL_IDLE (pre-start cores $PRE_CPUS) ($(nproc --all) in all; ${CLIENT[*]:-no taskset})"
# The deadline on the epoch clock: T0 is the script's start (gpu_stage.sh).
END=$(awk -v a="$T0" -v b="$BUDGET_S" 'BEGIN { printf "%.0f", a + b }')

SHAPE=${SHAPE:-1.5b} EAGER=${EAGER:-1} MAX_SEQS=${MAX_SEQS:-}
case $SHAPE in
  1.5b) NAME=q15 DIMS='{"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2}' ;;
  7b) NAME=q7 DIMS='{"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "head_dim": 128}' ;;
  *) note "SHAPE=$SHAPE: 1.5b or 7b"; exit 2 ;;
esac
SERVER_ARGS="--load-format: dummy, --no-enable-prefix-caching: true"
[ "$EAGER" = 1 ] && SERVER_ARGS="--enforce-eager: true, $SERVER_ARGS"
[ -n "$MAX_SEQS" ] && SERVER_ARGS="$SERVER_ARGS, --max-num-seqs: $MAX_SEQS"
note "server: $NAME ($SHAPE-shaped), args {$SERVER_ARGS}"
M=/tmp/models/$NAME
S=/tmp/site-bench
if [ "${STAGED:-0}" = 1 ] && [ -s /tmp/prompts.jsonl ]; then note "deployed already"; else
rm -rf $M; cp -r /tmp/models/tiny $M; rm -f $M/*.safetensors
python3 - "$M/config.json" "$DIMS" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config.pop("layer_types", None)
config.update(json.loads(sys.argv[2]), max_position_embeddings=4096)
json.dump(config, open(path, "w"), indent=1)
PY
cp $M/config.json "$R/model-config.json"

mkdir -p $S
cat >$S/inventory.yml <<'INV'
hosts:
  gpubox: {address: 127.0.0.1, connection: local, runner: supervisord}
INV
cat >$S/pb.yml <<PB
inventory: inventory.yml
deployments:
  - name: $NAME
    hosts: [gpubox]
    model: $M
    served_model_name: $NAME
    gpus: [0]
    gpu_memory_utilization: 0.8
    max_model_len: 2048
    port: 8000
    launcher: {kind: api_server}
    args: {$SERVER_ARGS}
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
cfg = BenchConfig(base_url="", model="$NAME", num_requests=$N, input_len=$IN, seed=0)
with open("/tmp/prompts.jsonl", "w") as f:
    for p in build_prompts(cfg):
        f.write(json.dumps({"prompt": p}) + "\n")
PY
fi

# vLLM's one-prompt ready check ("initial test run"), not timed, is skipped where the flag exists.
READY_CHECK=(); grep -q ready-check-timeout-sec /tmp/site/vllm/benchmarks/serve.py 2>/dev/null &&
  READY_CHECK=(--ready-check-timeout-sec 0)
grep -n "ready.check\|initial single\|Initial test" /tmp/site/vllm/benchmarks/serve.py >"$R/vllm-ready-check.txt" 2>&1
vllm_args() {  # vllm_args NAME: the argv of `vllm bench serve` for the run NAME, in ARGV
  ARGV=(bench serve --backend openai \
    --base-url http://127.0.0.1:8000 --endpoint /v1/completions --model $NAME --tokenizer $M \
    --dataset-name custom --dataset-path /tmp/prompts.jsonl --disable-shuffle --skip-chat-template \
    --num-prompts "$N" --custom-output-len "$OUTLEN" --ignore-eos --max-concurrency "$C" \
    --request-rate inf --seed 0 --num-warmups 0 --percentile-metrics ttft,tpot,itl,e2el \
    --metric-percentiles 50,90,99 --save-result --result-dir "$RES" --result-filename "$1.json" "${READY_CHECK[@]}")
}
orch_args() {  # orch_args NAME: the argv of `orch bench`, in ARGV
  ARGV=(bench $S/pb.yml -n "$N" -c "$C" --input-len "$IN" --output-len "$OUTLEN" --seed 0 --save "$RES/$1.json")
}
# Each run's release (or start) and end, epoch seconds: the summary reads the gauges between them.
stamp() { echo -e "$1\t$2\t$3" >>"$RES/times.tsv"; }
vllm_bench() {  # vllm_bench NAME
  vllm_args "$1"; PYTHONPATH=/tmp/site:/tmp/orchsite "${CLIENT[@]}" python3 -m vllm.entrypoints.cli.main "${ARGV[@]}"
}
orch_bench() {  # orch_bench NAME
  orch_args "$1"; "${CLIENT[@]}" $ORCH "${ARGV[@]}"
}
seq_run() {  # seq_run TOOL NAME: EQUAL_IDLE=0, start the tool now
  local t; t=$(date +%s.%N); step "$1-$2" "${1}_bench" "$1-$2"; stamp "$1-$2" "$t" "$(date +%s.%N)"
}
# EQUAL_IDLE=1: prestart TOOL NAME starts the client on PRE_CPUS, waiting on the FIFO $RES/TOOL-NAME.go;
# release TOOL NAME [NEXT_TOOL NEXT_NAME] releases it (prestarting it first if need be, and waiting until it
# is ready), prestarts the next LOOKAHEAD ones, and waits for the run to end. (`vllm bench serve` takes
# about 30 s to be ready on one core: where a run is shorter than that, LOOKAHEAD=1 leaves the server
# idle before every vLLM run for as long as it still needs; LOOKAHEAD=4 starts it four runs ahead.)
declare -A PID=()
prestart() {
  local run=$1-$2; rm -f "$RES/$run.go" "$RES/$run.ready"; mkfifo "$RES/$run.go"
  if [ "$1" = vllm ]; then vllm_args "$run"; PYTHONPATH=/tmp/site:/tmp/orchsite "${PRE[@]}" python3 \
      "$PREST" "$RES/$run.go" "$RES/$run.ready" vllm.entrypoints.cli.main "${ARGV[@]}" >"$R/$run.txt" 2>&1 &
  else orch_args "$run"; "${PRE[@]}" python3 "$PREST" "$RES/$run.go" "$RES/$run.ready" orchestrator "${ARGV[@]}" \
      >"$R/$run.txt" 2>&1 &
  fi
  PID[$run]=$!
}
release() {
  local run=$1-$2 t rc
  [ -n "${PID[$run]:-}" ] || prestart "$1" "$2"
  shift 2
  t=$(date +%s.%N)
  while [ ! -e "$RES/$run.ready" ]; do
    kill -0 "${PID[$run]}" 2>/dev/null || { note "$run: exited before it was ready"; break; }
    sleep 0.05
  done
  [ -e "$RES/$run.ready" ] && note "$run: ready ($(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s waited)"
  t=$(date +%s.%N)
  [ ${#CLIENT[@]} -gt 0 ] && taskset -a -p -c "$CLIENT_CPUS" "${PID[$run]}" >/dev/null
  [ -e "$RES/$run.ready" ] && { echo go >"$RES/$run.go" & }
  while [ $# -ge 2 ]; do [ -n "${PID[$1-$2]:-}" ] || prestart "$1" "$2"; shift 2; done
  wait "${PID[$run]}"; rc=$?; unset "PID[$run]"; rm -f "$RES/$run.go" "$RES/$run.ready"
  stamp "$run" "$t" "$(date +%s.%N)"
  note "$run: exit $rc in $(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
}
PREST=$(cd "$(dirname "$0")" && pwd)/prestart.py
done_pair() { [ -s "$RES/vllm-$1.json" ] && [ -s "$RES/orch-$1.json" ]; }
# The server's gauges every 50 ms (epoch seconds, running, waiting), appended across calls.
python3 "$(dirname "$0")/gauges.py" "$RES/gauges.tsv" &
SCRAPER=$!
[ ${#PRE[@]} -gt 0 ] && taskset -a -p -c "$PRE_CPUS" "$SCRAPER" >/dev/null
# The GPU's load and clocks every second (SM %, memory %, SM MHz, power), appended across calls.
nvidia-smi dmon -s puc -o T >>"$RES/dmon.txt" 2>&1 &
DMON=$!
# PAIRED=K: first K paired runs (benchmarks/bench_paired.py, after one not counted), then the pairs.
if [ "${PAIRED:-0}" -gt 0 ] && [ ! -s "$OUT/paired.md" ]; then
  PYTHONPATH=/tmp/site:$PYTHONPATH "${CLIENT[@]}" python3 "$(dirname "$0")/bench_paired.py" --runs "$PAIRED" \
    --deadline "$END" --out "$RES" --model "$NAME" -n "$N" -c "$C" --input-len "$IN" --output-len "$OUTLEN" >"$OUT/paired.md" 2>"$R/paired.err"
  note "paired runs: exit $?"; cat "$OUT/paired.md"
fi
# The plan: TOOL NAME MARK, MARK B where a counted pair begins (the budget is checked there).
PLAN=()
plan_pair() {  # plan_pair NAME ODD MARK: vLLM's first when ODD is 1
  if [ "$2" = 1 ]; then PLAN+=("vllm $1 $3" "orch $1 -"); else PLAN+=("orch $1 $3" "vllm $1 -"); fi
}
[ "$EQUAL_IDLE" = 1 ] && [ "${STAGED:-0}" = 1 ] && PLAN+=("orch lead$(date +%s) -")
for w in $(seq 1 "$WARMUP"); do done_pair "w$w" || plan_pair "w$w" $((w % 2)) -; done
for i in $(seq 1 "$ROUNDS"); do done_pair "$i" || plan_pair "$i" $((i % 2)) B; done
longest=0 begun=0
for k in "${!PLAN[@]}"; do
  read -r tool name mark <<<"${PLAN[$k]}"
  if [ "$mark" = B ]; then
    t=$(date +%s)
    [ "$begun" -gt 0 ] && [ $((t - begun)) -gt "$longest" ] && longest=$((t - begun))
    [ $((t + longest * 11 / 10)) -gt "$END" ] && { note "pair $name left for a later call (budget)"; break; }
    begun=$t
  fi
  if [ "$EQUAL_IDLE" = 1 ]; then
    nexts=()
    for j in $(seq 1 "$LOOKAHEAD"); do
      read -r ntool nname _ <<<"${PLAN[$((k + j))]:-}"
      [ -n "$ntool" ] && nexts+=("$ntool" "$nname")
    done
    release "$tool" "$name" "${nexts[@]}"
  else seq_run "$tool" "$name"; fi
done
for run in "${!PID[@]}"; do kill "${PID[$run]}" 2>/dev/null; note "$run: prestarted, not run (budget)"; done
kill "$SCRAPER" "$DMON" 2>/dev/null
python3 - "$RES" <<'PY' | tee -a "$OUT/summary.txt"
import statistics, sys
from pathlib import Path
from orchestrator.observe.bench import BenchResult
from orchestrator.observe.benchreport import from_vllm_json
res = Path(sys.argv[1])
def diff(a: float, b: float) -> float:
    return (b - a) / a * 100
# The idle before a run's first timed request: from the server's last sample with a request running
# to the first sample after the run's release with one running (vLLM's one-prompt ready check, where
# it runs, counts as the first: it is skipped wherever the flag exists, as in vLLM 0.26).
gauges = [tuple(map(float, line.split("\t"))) for line in (res / "gauges.tsv").read_text().splitlines()
          if line.count("\t") == 2] if (res / "gauges.tsv").exists() else []
times = {}
for line in (res / "times.tsv").read_text().splitlines() if (res / "times.tsv").exists() else []:
    run, a, b = line.split("\t")
    times[run] = (float(a), float(b))
def idle(run: str) -> str:
    if run not in times:
        return "?"
    rel, end = times[run]
    first = next((g for g in gauges if rel <= g[0] <= end and g[1] > 0), None)
    if first is None:
        return "?"
    prev = next((g for g in reversed(gauges) if g[0] < first[0] and g[1] > 0), None)
    if prev is None:
        return "?"
    return f"{first[0] - prev[0]:.2f} s idle, first at +{first[0] - rel:.2f} s"
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
          f"failed {v.failed} / {o.failed}; output tokens {v.total_output_tokens} / {o.total_output_tokens}; "
          f"before vllm: {idle(f'vllm-{i}')}; before orch: {idle(f'orch-{i}')}")
for run in times:
    print(f"  {run}: {idle(run)}")
if rows:
    med = [statistics.median(c) for c in zip(*rows)]
    print(f"median of {len(rows)} pairs: output tok/s {med[0]:+.2f} %, TTFT mean {med[1]:+.1f} %, "
          f"TPOT mean {med[2]:+.1f} %")
PY
[ "${DESTROY:-0}" = 1 ] && step destroy $ORCH destroy -y $S/pb.yml
note "done"
# Few files come back: keep them in one.
tar -czf "$OUT/raw.tar.gz" -C "$OUT" r -C /tmp orch-bench-results && rm -rf "$R"
