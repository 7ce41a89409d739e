#!/bin/bash
# the no-op alone, 1/16/64 hosts, orch and pyinfra, three timed runs each after one converging apply:
# the harness's traced orch run fails (its traced.py imports orchestrator.cli.main as a function), so its
# first no-op after a traced "first" is really a first apply.
set -x
unset PYTHONDONTWRITEBYTECODE
export TH_DIR=/tmp/perfhosts
cd /work/shared/perf
bash ../testbed/testhosts.sh up 64 >/dev/null
R=$TH_DIR/results3/noop.csv; : > $R
host_cpu() { local i f t=0; for i in $(seq "$1"); do f=/sys/fs/cgroup/unified/testhosts/th$i/cpu.stat
    t=$((t + $(awk '/^usage_usec/ {print $2}' "$f"))); done; echo $t; }
for n in 1 16 64; do
  (cd $TH_DIR && bash /work/shared/perf/orch/gen.sh $n $TH_DIR 1 && cd orch && $TH_DIR/venv-orch/bin/orch apply -y pb$n.yml >/dev/null 2>&1)
  (cd pyinfra && TH_N=$n $TH_DIR/venv-pyinfra/bin/pyinfra -y inventory.py deploy.py --data demo_revision=1 >/dev/null 2>&1)
  for r in 1 2 3; do
    c0=$(host_cpu $n)
    (cd $TH_DIR/orch && /usr/bin/time -f "%x,%e,%M,%U,%S" -o /tmp/t.txt $TH_DIR/venv-orch/bin/orch apply -y pb$n.yml >/dev/null 2>&1)
    c1=$(host_cpu $n); echo "orch,$n,noop,$r,$(cat /tmp/t.txt),$(( (c1 - c0) / 1000 ))" >> $R
    c0=$(host_cpu $n)
    (cd pyinfra && TH_N=$n /usr/bin/time -f "%x,%e,%M,%U,%S" -o /tmp/t.txt $TH_DIR/venv-pyinfra/bin/pyinfra -y inventory.py deploy.py --data demo_revision=1 >/dev/null 2>&1)
    c1=$(host_cpu $n); echo "pyinfra,$n,noop,$r,$(cat /tmp/t.txt),$(( (c1 - c0) / 1000 ))" >> $R
  done
done
bash ../testbed/testhosts.sh down >/dev/null
echo NOOP-DONE
