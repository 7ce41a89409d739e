#!/bin/bash
# orch's preflight and status against a real nvidia-smi, with a real process holding memory on GPU 0.
# Run on the lent GPU machine (no systemd, no sshd there: `connection: local`) from the repository root:
#   .venv/bin/pip download … -d .device-orch/wheels (orch's dependencies for Python 3.12), carried along.
# Writes everything it saw under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/orch-gpu-out}; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q --no-index --find-links .device-orch/wheels --target /tmp/orchsite \
  fabric paramiko jinja2 pydantic pyyaml tenacity rich httpx prometheus_client >"$OUT/pip.log" 2>&1
export PYTHONPATH=/tmp/orchsite:$PWD COLUMNS=160
Q="index,uuid,name,memory.total,memory.used,memory.free,utilization.gpu,pci.bus_id"
A="pid,process_name,used_memory,gpu_uuid"
snap() {  # nvidia-smi as orch reads it
  nvidia-smi --query-gpu=$Q --format=csv,noheader,nounits >"$OUT/query-$1.csv"
  nvidia-smi --query-compute-apps=$A --format=csv,noheader,nounits >"$OUT/apps-$1.csv"
}

S=/tmp/site; mkdir -p $S /tmp/models/qwen14b
cp tests/fixtures/configs/Qwen2.5-14B-Instruct.json /tmp/models/qwen14b/config.json
cat >$S/inventory.yml <<INV
hosts:
  gpubox: {address: 127.0.0.1, connection: local}
INV
cat >$S/pb.yml <<PB
inventory: inventory.yml
deployments:
  - name: qwen14b            # the 14B on one 80 GB card at 0.9
    hosts: [gpubox]
    model: /tmp/models/qwen14b
    gpus: [0]
    gpu_memory_utilization: 0.9
    max_model_len: 2048
    port: 8000
    launcher: {kind: api_server}
  - name: qwen14b-tp2        # day4's shape: GPUs this machine does not have
    hosts: [gpubox]
    model: /tmp/models/qwen14b
    gpus: [6, 7]
    tensor_parallel_size: 2
    port: 8001
    launcher: {kind: api_server}
PB

echo "== idle"; snap idle
python3 -m orchestrator preflight $S/pb.yml | tee "$OUT/preflight-idle.txt"

python3 - <<'PY' &
import time, torch
x = torch.empty(40 * 2**30, dtype=torch.uint8, device="cuda"); x.fill_(1); torch.cuda.synchronize()
print("holding 40 GiB on GPU 0", flush=True); time.sleep(90)
PY
HOLDER=$!
for _ in $(seq 60); do nvidia-smi --query-compute-apps=pid --format=csv,noheader | grep -q . && break; sleep 1; done
echo "== busy (pid $HOLDER holds memory)"; snap busy
python3 -m orchestrator preflight $S/pb.yml | tee "$OUT/preflight-busy.txt"; echo "exit $?" >>"$OUT/preflight-busy.txt"
python3 -m orchestrator preflight $S/pb.yml --json >"$OUT/preflight-busy.json"
python3 -m orchestrator plan $S/pb.yml | tee "$OUT/plan-busy.txt"; echo "exit ${PIPESTATUS[0]}" >>"$OUT/plan-busy.txt"
python3 -m orchestrator status $S/pb.yml | tee "$OUT/status-busy.txt"
nvidia-smi >"$OUT/nvsmi-busy.txt"
kill $HOLDER; wait $HOLDER 2>/dev/null
echo "done"
