#!/bin/bash
# side by side after preflight's probes went lazy (57ca2f1): 16 hosts, orch and pyinfra, three timed runs
# each of the harness (first, no-op, change); then the no-op alone and plan, three pairs each, on 16 and 64
# hosts, each after one converging apply. Run under the test bed's lock:
#   flock /run/lock/orch-testbed.lock bash benchmarks/control_path/sidebyside-1202b-run.sh
set -x
unset PYTHONDONTWRITEBYTECODE
export TH_DIR=/tmp/perfhosts
/tmp/perfhosts/venv-orch/bin/python -m compileall -q /work/main/orchestrator >/dev/null
cd /work/shared/perf
echo "pid $$: perf harness (shared/perf) side by side" > /run/lock/orch-testbed.lock.note
bash ../testbed/testhosts.sh up 64 >/dev/null
R=$TH_DIR/results4; rm -rf $R; mkdir -p $R
OUT=$R ./run.sh "16" 3 "orch pyinfra"
host_cpu() { local i f t=0; for i in $(seq "$1"); do f=/sys/fs/cgroup/unified/testhosts/th$i/cpu.stat
    t=$((t + $(awk '/^usage_usec/ {print $2}' "$f"))); done; echo $t; }
for n in 16 64; do
  (cd $TH_DIR && bash /work/shared/perf/orch/gen.sh $n $TH_DIR 1 && cd orch && $TH_DIR/venv-orch/bin/orch apply -y pb$n.yml >/dev/null 2>&1)
  (cd pyinfra && TH_N=$n $TH_DIR/venv-pyinfra/bin/pyinfra -y inventory.py deploy.py --data demo_revision=1 >/dev/null 2>&1)
  for r in 1 2 3; do
    c0=$(host_cpu $n)
    (cd $TH_DIR/orch && /usr/bin/time -f "%x,%e,%M,%U,%S" -o /tmp/t.txt $TH_DIR/venv-orch/bin/orch apply -y pb$n.yml >/dev/null 2>&1)
    c1=$(host_cpu $n); echo "orch,$n,noop,$r,$(cat /tmp/t.txt),$(( (c1 - c0) / 1000 ))" >> $R/noop.csv
    c0=$(host_cpu $n)
    (cd pyinfra && TH_N=$n /usr/bin/time -f "%x,%e,%M,%U,%S" -o /tmp/t.txt $TH_DIR/venv-pyinfra/bin/pyinfra -y inventory.py deploy.py --data demo_revision=1 >/dev/null 2>&1)
    c1=$(host_cpu $n); echo "pyinfra,$n,noop,$r,$(cat /tmp/t.txt),$(( (c1 - c0) / 1000 ))" >> $R/noop.csv
  done
  for r in 1 2 3; do
    c0=$(host_cpu $n)
    (cd $TH_DIR/orch && /usr/bin/time -f "%x,%e,%M,%U,%S" -o /tmp/t.txt $TH_DIR/venv-orch/bin/orch plan pb$n.yml >/dev/null 2>&1)
    c1=$(host_cpu $n); echo "orch,$n,plan,$r,$(cat /tmp/t.txt),$(( (c1 - c0) / 1000 ))" >> $R/plan.csv
    c0=$(host_cpu $n)
    (cd pyinfra && TH_N=$n /usr/bin/time -f "%x,%e,%M,%U,%S" -o /tmp/t.txt $TH_DIR/venv-pyinfra/bin/pyinfra -y --dry inventory.py deploy.py --data demo_revision=1 >/dev/null 2>&1)
    c1=$(host_cpu $n); echo "pyinfra,$n,plan,$r,$(cat /tmp/t.txt),$(( (c1 - c0) / 1000 ))" >> $R/plan.csv
  done
done
python3 ./summarize.py $R > $R/summary.md
bash ../testbed/testhosts.sh down >/dev/null
echo PERF-DONE
