#!/bin/bash
# 16 hosts, orch and pyinfra, three timed runs each of the harness (first, no-op, change), after systemd's
# enable lost its implicit second daemon-reload. The test hosts' containers inherit the lock's descriptor:
# run it as `flock /run/lock/orch-testbed.lock bash …`; the lock is free again after the final `down`.
set -x
unset PYTHONDONTWRITEBYTECODE
export TH_DIR=/tmp/perfhosts
/tmp/perfhosts/venv-orch/bin/python -m compileall -q /work/main/orchestrator >/dev/null
cd /work/shared/perf
bash ../testbed/testhosts.sh up 16 >/dev/null
R=$TH_DIR/${RESULTS:-results5}; rm -rf $R; mkdir -p $R
OUT=$R ./run.sh "16" 3 "orch pyinfra"
python3 ./summarize.py $R > $R/summary.md
bash ../testbed/testhosts.sh down >/dev/null
echo PERF-DONE
