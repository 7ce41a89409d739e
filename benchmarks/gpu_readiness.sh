#!/bin/bash
# The readiness lag on the lent H200 (kind nvidia-h200), with the real GPU vLLM (0.26.0, CUDA 13): how long
# after the restarted server can first answer a chat completion does `orch apply` declare it ready?
# benchmarks/readiness.py's measurement (the CPU test bed), done by benchmarks/gpu_readiness_poll.py here:
# a poller independent of orch sends a one-token chat completion every 50 ms; orch's moment is its
# "ready after" line. One deployment (tiny model, GPU 0, --enforce-eager, port 8000), first apply, then
# RESTARTS applies (default 5) that each change env ORCH_ROUND, then one `orch rollback -y`, then destroy.
#
# The machine has no systemd and no sshd: `connection: local`, `runner: supervisord`. The device tool sends
# the session's own checkout: this file and gpu_readiness_poll.py must be in it (committed, or copied into
# an ignored folder there: the driver is found beside this file). Staging: ../shared/device/stage-vllm-gpu.sh's
# chunks c0..c5 are 62 MiB each, and the device refuses one of them with the checkout (2.6 MiB on disk) as
# over its 64 MiB a call; so they are cut into seven (md5 of the whole unchanged, names that `sort -V` puts before
# c6's part6, as its assemble.sh joins them):
#   cat .device-stage/c{0,1,2,3,4,5}/part* >/tmp/all && split -n 7 -d -a 1 /tmp/all /tmp/p &&
#   for i in 1 2 3 4 5 6 7; do mkdir -p .device-stage/s$i; mv /tmp/p$((i-1)) .device-stage/s$i/part0.$i; done
# then one device call per piece, back to back (`mkdir -p /root/stage && cp .device-stage/sN/part* /root/stage/`,
# carry [".device-stage/sN"]); this call carries the last chunk (.device-stage/c6) and orch's own wheels:
#   run(command="OUT=$OUT bash benchmarks/gpu_readiness.sh", carry=[".device-stage/c6", ".device-orch"], timeout_s=600)
# The rounds stop BUDGET_S (default 570) seconds after the start, before the call's limit; a second call
# on the same warm machine, `STAGED=1 OUT=$OUT bash benchmarks/gpu_readiness.sh`, goes on where the first
# stopped (the state is in /tmp/site-ready).
# Back in $OUT (few files: the device returns at most 8): report.md (the table, rewritten after each
# round), rounds.jsonl (one line per round), driver.txt, summary.txt, and gpu-readiness.tar.gz (every
# orch output, vLLM's log, nvidia-smi).
set -uo pipefail
BACK=${OUT:-/tmp/orch-gpu-readiness-out}; mkdir -p "$BACK"
OUT=/tmp/orch-gpu-readiness  # the work folder (r/, raw/, summary.txt); only the few files above go to $BACK
source benchmarks/gpu_stage.sh
DEADLINE=$(awk -v a="$T0" -v b="${BUDGET_S:-570}" 'BEGIN { printf "%.0f", a + b }')
nvidia-smi >"$R/nvsmi-before.txt" 2>&1
note "vLLM: $(ls -d /tmp/site/vllm-*.dist-info 2>/dev/null | xargs -r -n1 basename)"
note "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
note "CPU: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"

PYTHONUNBUFFERED=1 python3 "$(dirname "$0")/gpu_readiness_poll.py" --site /tmp/site-ready --out "$BACK" \
  --raw "$OUT/raw" --restarts "${RESTARTS:-5}" --rollback --deadline "$DEADLINE" 2>&1 | tee -a "$BACK/driver.txt"
note "driver: exit ${PIPESTATUS[0]}"

LOG=/var/log/orch-ready.log
cp "$LOG" "$R/vllm.log" 2>/dev/null
# vLLM's own milestones (its log's clock has whole seconds only: the driver times the process from /proc)
grep -E "vLLM API server version|Starting vLLM|init engine|Loading weights took|Model loading took|KV cache|Application startup complete|Shutting down|Finished server process" \
  "$LOG" >"$R/vllm-milestones.txt" 2>/dev/null
nvidia-smi >"$R/nvsmi-after.txt" 2>&1
cp "$OUT/summary.txt" "$BACK/summary.txt"
tar -czf "$BACK/gpu-readiness.tar.gz" -C "$OUT" r raw summary.txt
note "done"
cp "$OUT/summary.txt" "$BACK/summary.txt"
