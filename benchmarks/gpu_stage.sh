#!/bin/bash
# Sourced by the scripts that run orch on the lent GPU machine (gpu_e2e.sh, gpu_bench_vs_vllm.sh):
# the timing helpers, then the real GPU vLLM (from ../shared/device/stage-vllm-gpu.sh's chunks),
# orch's own wheels (.device-orch/wheels), supervisord, and the tiny model in /tmp/models/tiny.
# Before the call that sources it: one device call per chunk c0..c5 (`mkdir -p /root/stage && cp
# .device-stage/cN/part* /root/stage/`); that call carries .device-stage/c6 and .device-orch/wheels.
OUT=${OUT:-/tmp/orch-gpu}; R=$OUT/r; mkdir -p "$R"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 COLUMNS=160
T0=$(date +%s.%N)
since() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
note() { echo "[$(since) s] $*" | tee -a "$OUT/summary.txt"; }
step() {  # step NAME CMD...: run, keep output, note exit code and duration
  local name=$1; shift; local t; t=$(date +%s.%N)
  "$@" >"$R/$name.txt" 2>&1; local rc=$?
  note "$name: exit $rc in $(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
  return $rc
}
export PYTHONPATH=/tmp/orchsite:${ORCH_TREE:-$PWD}  # ORCH_TREE: a copy of orch to run instead of this tree
ORCH="python3 -m orchestrator"
# STAGED=1: a later call on the same warm machine, everything below already done.
[ "${STAGED:-0}" = 1 ] && return 0

# --- stage: vLLM wheels, orch, supervisord, the tiny model
step assemble bash .device-stage/c6/assemble.sh
step pip-orch python3 -m pip install -q --no-index --find-links .device-orch/wheels --target /tmp/orchsite \
  fabric paramiko jinja2 pydantic pyyaml tenacity rich httpx prometheus_client
# aiohttp (orch bench) and pandas (vllm bench serve's custom dataset), where the machine lacks them;
# pandas without its numpy, so that the machine's own numpy (torch's) stays the one imported.
python3 -c "import aiohttp" 2>/dev/null ||
  step pip-aiohttp python3 -m pip install -q --no-index --find-links .device-orch/wheels --target /tmp/orchsite aiohttp
python3 -c "import pandas" 2>/dev/null ||
  step pip-pandas python3 -m pip install -q --no-index --no-deps --find-links .device-orch/wheels --target /tmp/orchsite \
    pandas python-dateutil pytz tzdata six
step pip-supervisor python3 -m pip install -q --no-index --find-links .device-orch/wheels --target /tmp/supsite supervisor
mkdir -p /etc/supervisor/conf.d
cat >/etc/supervisor/supervisord.conf <<'CONF'
[unix_http_server]
file=/run/supervisor.sock
[supervisord]
logfile=/var/log/supervisord.log
pidfile=/run/supervisord.pid
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix:///run/supervisor.sock
[include]
files = /etc/supervisor/conf.d/*.conf
CONF
cat >/usr/local/bin/supervisorctl <<'SH'
#!/bin/sh
PYTHONPATH=/tmp/supsite exec python3 -m supervisor.supervisorctl -c /etc/supervisor/supervisord.conf "$@"
SH
chmod +x /usr/local/bin/supervisorctl
# SERVER_CPUS (a taskset list): supervisord, and so every server it starts, runs on those cores only.
PIN=(); [ -n "${SERVER_CPUS:-}" ] && command -v taskset >/dev/null && PIN=(taskset -c "$SERVER_CPUS")
(cd / && PYTHONPATH=/tmp/supsite "${PIN[@]}" python3 -m supervisor.supervisord -c /etc/supervisor/supervisord.conf)
step tiny-model env PYTHONPATH=/tmp/site python3 tests/testbed/make_tiny_model.py /tmp/models/tiny
