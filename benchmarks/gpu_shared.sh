#!/bin/bash
# Two deployments share one GPU, on the lent H200 (kind nvidia-h200), with the real GPU vLLM (0.26.0, CUDA 13).
#
#   one playbook, tiny-a and tiny-b on GPU 0 at gpu_memory_utilization 0.3 each (ports 8000, 8001)
#     → validate accepts it; both become ready; status shows each one's own memory beside the card's
#   the same playbook with a third at 0.6 → validate refuses it (the GPU's share, file:line)
#   tiny-c at 0.6 alone in a second playbook → preflight and apply refuse it, naming the free memory
#     and both siblings by name
#   destroy tiny-a → tiny-b still answers a completion; destroy tiny-b → no process left on the GPU
#
# The machine has no systemd and no sshd: `connection: local`, `runner: supervisord`. Before this call:
# ../shared/device/stage-vllm-gpu.sh here, and one device call per chunk c0..c5
# (`mkdir -p /root/stage && cp .device-stage/cN/part* /root/stage/`); this call carries the last chunk
# (.device-stage/c6) and orch's own wheels (.device-orch/wheels), as for benchmarks/gpu_e2e.sh:
#   run(command="OUT=$OUT bash benchmarks/gpu_shared.sh", carry=[".device-stage/c6", ".device-orch"], timeout_s=600)
# Everything it sees goes to $OUT: summary.txt (each step's exit code and time, then the verdicts), and
# every command's output under r/ (also in gpu-shared.tar.gz).
set -uo pipefail
OUT=${OUT:-/tmp/orch-gpu-shared}
source benchmarks/gpu_stage.sh
nvidia-smi >"$R/nvsmi-before.txt" 2>&1

S=/tmp/site-shared; mkdir -p $S
cat >$S/inventory.yml <<'INV'
hosts:
  gpubox: {address: 127.0.0.1, connection: local, runner: supervisord}
INV
deployment() {  # deployment NAME PORT SHARE
  cat <<DEP
  - name: $1
    hosts: [gpubox]
    model: /tmp/models/tiny
    served_model_name: $1
    gpus: [0]
    gpu_memory_utilization: $3
    max_model_len: 512
    port: $2
    launcher: {kind: api_server}
    args: {--enforce-eager: true}
    env: {PYTHONPATH: /tmp/site, NCCL_NVLS_ENABLE: "0", TORCH_SYMM_MEM_DISABLE_MULTICAST: "1", NVSHMEM_DISABLE_NVLS: "1"}
    readiness: {timeout_s: 480, interval_s: 2}
DEP
}
{ echo "inventory: inventory.yml"; echo "deployments:"; deployment tiny-a 8000 0.3; deployment tiny-b 8001 0.3; } >$S/pb.yml
{ cat $S/pb.yml; deployment tiny-c 8002 0.6; } >$S/pb-three.yml
{ echo "inventory: inventory.yml"; echo "deployments:"; deployment tiny-c 8002 0.6; } >$S/pb-c.yml
query() {  # nvidia-smi as orch reads it, and which deployment each GPU process carries the mark of
  nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,memory.free,utilization.gpu,pci.bus_id \
    --format=csv,noheader,nounits >"$R/$1-query.csv"
  nvidia-smi --query-compute-apps=pid,process_name,used_memory,gpu_uuid --format=csv,noheader,nounits >"$R/$1-apps.csv"
  for p in $(cut -d, -f1 "$R/$1-apps.csv"); do
    echo "$p $(tr '\0' '\n' </proc/$p/environ 2>/dev/null | grep '^SUPERVISOR_PROCESS_NAME=') ppid=$(ps -o ppid= -p $p)"
  done >"$R/$1-marks.txt"
  ps -eo pid,ppid,stat,comm >"$R/$1-ps.txt"
}
complete() {  # complete PORT MODEL: one completion, as a client would ask
  curl -s -m 60 "http://127.0.0.1:$1/v1/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$2\", \"prompt\": \"Hello\", \"max_tokens\": 8}"
}

step validate $ORCH validate $S/pb.yml
step validate-three $ORCH validate $S/pb-three.yml
step preflight $ORCH preflight $S/pb.yml
step apply $ORCH apply -y $S/pb.yml
step status $ORCH status $S/pb.yml
step status-json $ORCH status --json $S/pb.yml
query serving; nvidia-smi >"$R/nvsmi-serving.txt"
step preflight-c $ORCH preflight $S/pb-c.yml
step preflight-c-json $ORCH preflight --json $S/pb-c.yml
step apply-c $ORCH apply -y $S/pb-c.yml
step destroy-a $ORCH destroy -y -d tiny-a $S/pb.yml
sleep 2; query after-destroy-a
complete 8001 tiny-b >"$R/complete-b.txt" 2>&1; note "tiny-b after tiny-a's destroy: $(head -c 300 "$R/complete-b.txt")"
step status-b $ORCH status $S/pb.yml
step destroy-b $ORCH destroy -y $S/pb.yml
sleep 3; query after-destroy; nvidia-smi >"$R/nvsmi-after-destroy.txt"
note "GPU processes after destroying both: $(grep -c . "$R/after-destroy-apps.csv")"
if grep -q . "$R/after-destroy-apps.csv"; then step reap $ORCH destroy -y --reap $S/pb.yml; fi

# --- the verdicts, read from the raw outputs above
python3 - "$R" <<'PY' | tee -a "$OUT/summary.txt"
import json, pathlib, sys
r = pathlib.Path(sys.argv[1])
def text(name): return (r / name).read_text() if (r / name).exists() else ""
def rows(name):
    try: return json.loads(text(name))["deployments"]
    except (ValueError, KeyError): return []
serving = rows("status-json.txt")
own = [(x.get("gpus") or [{}])[0].get("deployment_mib") for x in serving]
pre_c = text("preflight-c.txt")
verdicts = {
    "one playbook with two deployments at 0.3 on GPU 0 validates": text("validate.txt").startswith("ok"),
    "a third at 0.6 in that playbook is refused at validate": "over-committed" in text("validate-three.txt"),
    "both ready": len(serving) == 2 and all(x.get("ready") for x in serving),
    f"status shows each one's own memory on GPU 0 {own}": len(own) == 2 and all(isinstance(v, int) and v > 0 for v in own),
    "tiny-c refused naming the free memory": "MiB free, gpu_memory_utilization 0.6" in pre_c,
    "tiny-c refused naming both siblings": all(f"deployment tiny-{n} (orch, revision 1)" in pre_c for n in "ab"),
    "apply of tiny-c changes nothing": "preflight failed" in text("apply-c.txt"),
    "tiny-b answers after tiny-a is destroyed": '"choices"' in text("complete-b.txt"),
    "no GPU process after destroying both": not text("after-destroy-apps.csv").strip(),
}
for what, ok in verdicts.items():
    print(("PASS " if ok else "FAIL ") + what)
PY
tar -czf "$OUT/gpu-shared.tar.gz" -C "$OUT" r
cp "$R/status.txt" "$R/preflight-c.txt" "$R/nvsmi-serving.txt" "$OUT/" 2>/dev/null
note "done"
