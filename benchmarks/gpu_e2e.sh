#!/bin/bash
# orch deploys the real GPU vLLM (0.26.0, CUDA 13) on the lent GPU machine, end to end.
#
# That machine has no systemd and no sshd, so the inventory says `connection: local` and
# `runner: supervisord`. Before this call: ../shared/device/stage-vllm-gpu.sh here, and one device
# call per chunk c0..c5 (`mkdir -p /root/stage && cp .device-stage/cN/part* /root/stage/`); this
# call carries the last chunk (.device-stage/c6) and orch's own wheels (.device-orch/wheels).
# Everything it sees goes to $OUT: summary.txt, and every command's output in gpu-e2e.tar.gz.
set -uo pipefail
OUT=${OUT:-/tmp/orch-gpu-e2e}
source benchmarks/gpu_stage.sh
nvidia-smi >"$R/nvsmi-before.txt" 2>&1

# --- the site: this machine, supervisord, GPU 0
S=/tmp/site-orch; mkdir -p $S
cat >$S/inventory.yml <<'INV'
hosts:
  gpubox: {address: 127.0.0.1, connection: local, runner: supervisord}
INV
playbook() {  # playbook FILE EXTRA_ARGS
  cat >"$1" <<PB
inventory: inventory.yml
deployments:
  - name: tiny-gpu
    hosts: [gpubox]
    model: /tmp/models/tiny
    served_model_name: tiny
    gpus: [0]
    gpu_memory_utilization: 0.5
    max_model_len: 512
    port: 8000
    launcher: {kind: api_server}
    args: {--enforce-eager: true$2}
    env: {PYTHONPATH: /tmp/site, NCCL_NVLS_ENABLE: "0", TORCH_SYMM_MEM_DISABLE_MULTICAST: "1", NVSHMEM_DISABLE_NVLS: "1"}
    readiness: {timeout_s: 480, interval_s: 2}
PB
}
playbook $S/pb.yml ""
playbook $S/pb2.yml ", --max-num-seqs: 32"
query() {
  nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,memory.free,utilization.gpu,pci.bus_id \
    --format=csv,noheader,nounits >"$R/$1-query.csv"
  nvidia-smi --query-compute-apps=pid,process_name,used_memory,gpu_uuid --format=csv,noheader,nounits >"$R/$1-apps.csv"
}

step preflight $ORCH preflight $S/pb.yml
step plan $ORCH plan $S/pb.yml
step apply $ORCH apply -y $S/pb.yml
step status $ORCH status $S/pb.yml
step status-json $ORCH status --json $S/pb.yml
query serving; nvidia-smi >"$R/nvsmi-serving.txt"
curl -s http://127.0.0.1:8000/metrics >"$R/metrics-before-bench.txt"
step bench $ORCH bench $S/pb.yml -n 64 -c 8 --input-len 64 --output-len 32 --save "$R/bench-rev1.json"
curl -s http://127.0.0.1:8000/metrics >"$R/metrics.txt"
step metrics $ORCH metrics $S/pb.yml
step plan-noop $ORCH plan $S/pb.yml
step apply-change $ORCH apply -y $S/pb2.yml
step bench-rev2 $ORCH bench $S/pb2.yml -n 64 -c 8 --input-len 64 --output-len 32 --save "$R/bench-rev2.json"
step compare $ORCH bench --compare "$R/bench-rev1.json" "$R/bench-rev2.json"
step rollback $ORCH rollback -y $S/pb2.yml
step status-after-rollback $ORCH status $S/pb.yml
step revisions $ORCH revisions $S/pb.yml
step logs $ORCH logs $S/pb.yml -n 40
step destroy $ORCH destroy -y $S/pb.yml
sleep 2; query after-destroy; nvidia-smi >"$R/nvsmi-after-destroy.txt"
note "GPU processes after destroy: $(wc -l <"$R/after-destroy-apps.csv")"
grep -h "ready after\|Result\|applied\|rolled" "$R"/apply*.txt "$R"/rollback.txt | head -20 >>"$OUT/summary.txt"
tar -czf "$OUT/gpu-e2e.tar.gz" -C "$OUT" r
cp "$R/status.txt" "$R/bench.txt" "$R/compare.txt" "$R/nvsmi-serving.txt" "$OUT/" 2>/dev/null
note "done"
