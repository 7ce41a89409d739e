#!/bin/bash
# 16 hosts, orch and pyinfra in pairs (the order alternating from pair to pair): PAIRS first applies (both
# tools' services removed before each run), then PAIRS changes (a new revision value each run), then PAIRS
# no-ops, each pair's ratio taken, medians by benchmarks/control_path/pairs_summary.py. The same job as the
# harness in ../shared/perf (its orch/gen.sh and pyinfra/deploy.py). The test hosts' containers inherit the
# lock's descriptor: run it as `flock /run/lock/orch-testbed.lock bash …`; the lock is free after `down`.
set -u
unset PYTHONDONTWRITEBYTECODE
export TH_DIR=/tmp/perfhosts PYINFRA_YES=1
PAIRS=${PAIRS:-5} N=16 SCENARIOS=${SCENARIOS:-first change noop}
OUT=${OUT:-$TH_DIR/pairs}; mkdir -p "$OUT"; R=$OUT/pairs.csv; : >"$R"
$TH_DIR/venv-orch/bin/python -m compileall -q /work/main/orchestrator >/dev/null
cd /work/shared/perf
bash ../testbed/testhosts.sh up $N >/dev/null
ips() { for i in $(seq "$1"); do echo "10.77.$((i / 250 + 1)).$((i % 250 + 1))"; done; }
on_all() { ips "$1" | xargs -P16 -I{} ssh -F "$TH_DIR/ssh_config" {} "$2"; }
clean() { on_all "$1" 'systemctl disable --now -q demo-vllm.service 2>/dev/null; rm -rf /etc/demo-vllm
  rm -f /etc/systemd/system/demo-vllm.service; systemctl disable --now -q orch-demo.service 2>/dev/null
  rm -rf /etc/orch /var/lib/orch /etc/systemd/system/orch-demo.service; systemctl daemon-reload; systemctl reset-failed'; }
host_cpu() { local i f t=0; for i in $(seq "$1"); do f=/sys/fs/cgroup/unified/testhosts/th$i/cpu.stat
    t=$((t + $(awk '/^usage_usec/ {print $2}' "$f"))); done; echo $t; }
timed() {  # tool scenario pair rev
  local c0 c1; c0=$(host_cpu $N)
  if [ "$1" = orch ]; then
    (cd $TH_DIR && bash /work/shared/perf/orch/gen.sh $N $TH_DIR "$4" && cd orch &&
      /usr/bin/time -f "%x,%e,%M,%U,%S" -o /tmp/pairs-t.txt $TH_DIR/venv-orch/bin/orch apply -y pb$N.yml >/dev/null 2>&1)
  else
    (cd pyinfra && TH_N=$N /usr/bin/time -f "%x,%e,%M,%U,%S" -o /tmp/pairs-t.txt $TH_DIR/venv-pyinfra/bin/pyinfra -y \
      inventory.py deploy.py --data demo_revision="$4" >/dev/null 2>&1)
  fi
  c1=$(host_cpu $N); echo "$1,$N,$2,$3,$(cat /tmp/pairs-t.txt),$(( (c1 - c0) / 1000 ))" | tee -a "$R"
}
for sc in $SCENARIOS; do
  for p in $(seq "$PAIRS"); do
    order="orch pyinfra"; [ $((p % 2)) = 0 ] && order="pyinfra orch"
    for tool in $order; do
      rev=1; [ "$sc" = change ] && rev="c$RANDOM$RANDOM"
      [ "$sc" = first ] && clean $N
      [ "$sc" = noop ] && [ "$p" = 1 ] && { timed "$tool" warm 0 1 >/dev/null; }  # converge each tool once
      timed "$tool" "$sc" "$p" "$rev"
    done
  done
done
bash ../testbed/testhosts.sh down >/dev/null
echo PAIRS-DONE
