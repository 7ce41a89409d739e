#!/bin/bash
# side by side after this session's changes: orch's modules compiled to .pyc as any install has them
set -x
unset PYTHONDONTWRITEBYTECODE
export TH_DIR=/tmp/perfhosts
/tmp/perfhosts/venv-orch/bin/python -m compileall -q /work/main/orchestrator >/dev/null
cd /work/shared/perf
echo "pid $$: perf harness (shared/perf) side by side" > /run/lock/orch-testbed.lock.note
bash ../testbed/testhosts.sh up 64
rm -rf $TH_DIR/results3; mkdir -p $TH_DIR/results3
OUT=$TH_DIR/results3 ./run.sh "16" 3 "orch pyinfra"
OUT=$TH_DIR/results3 ./run.sh "16" 1 "ansible"
OUT=$TH_DIR/results3 ./run.sh "1 64" 1 "orch pyinfra"
# plan (nothing to change) on 1, 16, 64 hosts, three timed runs each
for n in 1 16 64; do
  (cd $TH_DIR && bash /work/shared/perf/orch/gen.sh $n $TH_DIR 1 && cd orch && $TH_DIR/venv-orch/bin/orch apply -y pb$n.yml >/dev/null 2>&1)
  (cd pyinfra && TH_N=$n $TH_DIR/venv-pyinfra/bin/pyinfra -y inventory.py deploy.py --data demo_revision=1 >/dev/null 2>&1)
  for r in 1 2 3; do
    (cd $TH_DIR/orch && /usr/bin/time -f "orch,$n,plan,$r,%x,%e,%M" -a -o $TH_DIR/results3/plan.csv $TH_DIR/venv-orch/bin/orch plan pb$n.yml >/dev/null 2>&1)
    (cd pyinfra && TH_N=$n /usr/bin/time -f "pyinfra,$n,plan,$r,%x,%e,%M" -a -o $TH_DIR/results3/plan.csv $TH_DIR/venv-pyinfra/bin/pyinfra -y --dry inventory.py deploy.py --data demo_revision=1 >/dev/null 2>&1)
  done
done
python3 ./summarize.py $TH_DIR/results3 > $TH_DIR/results3/summary.md
bash ../testbed/testhosts.sh down
echo PERF-DONE
