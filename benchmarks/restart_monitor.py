"""What a supervisord restart does, seen from outside orch: every 10 ms, the processes that carry a program's
mark (SUPERVISOR_PROCESS_NAME, with their parent, name and state) and the supervisorctl processes running;
one line, with the wall clock, each time that changes.

    python3 benchmarks/restart_monitor.py orch-ready OUT.txt &   # then the verbs; kill it after

A zombie has no environment to read, so it leaves the marked list when it exits, not when it is reaped:
the gap between the old tree's last line and the next supervisorctl start is time spent on the host by
orch's restart script or supervisord, not by vLLM (docs/gpu-readiness-h200.md, 2026-12-02 b).
"""

from __future__ import annotations

import os
import sys
import time


def snapshot(mark: bytes) -> tuple[tuple[str, ...], tuple[str, ...]]:
    marked, ctl = [], []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
            if b"supervisorctl" in cmd:
                ctl.append(d + ":" + cmd.replace(bytes(1), b" ").decode(errors="replace")[-40:])
                continue
            with open(f"/proc/{d}/environ", "rb") as f:
                if mark not in f.read().split(bytes(1)):
                    continue
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        marked.append(f"{d}/{rest[1]}:{comm}:{rest[0]}")
    return tuple(sorted(marked)), tuple(sorted(ctl))


def main() -> None:
    program, path = sys.argv[1], sys.argv[2]
    mark = f"SUPERVISOR_PROCESS_NAME={program}".encode()
    prev = None
    with open(path, "w", buffering=1) as out:
        while True:
            now = time.time()
            cur = snapshot(mark)
            if cur != prev:
                out.write(f"{now:.3f} marked={' '.join(cur[0])} | ctl={' ; '.join(cur[1])}\n")
                prev = cur
            time.sleep(0.01)


if __name__ == "__main__":
    main()
