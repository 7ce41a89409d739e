"""Scrape the vLLM server's own gauges every 50 ms until killed: one line per scrape, appended to PATH:
seconds (since T0, an epoch time; 0 gives epoch seconds), requests running, requests waiting.

    python3 benchmarks/gauges.py PATH [T0] [URL]    # URL: http://127.0.0.1:8000/metrics
"""

from __future__ import annotations

import sys
import time
import urllib.request

WANT = ("vllm:num_requests_running", "vllm:num_requests_waiting")


def main(path: str, t0: float, url: str) -> None:
    with open(path, "a") as out:
        while True:
            try:
                text = urllib.request.urlopen(url, timeout=1).read().decode()
            except Exception:
                time.sleep(0.5)
                continue
            got = dict.fromkeys(WANT, 0.0)
            for line in text.splitlines():
                for k in WANT:
                    if line.startswith(k):
                        got[k] += float(line.rsplit(" ", 1)[-1])
            out.write(f"{time.time() - t0:.3f}\t{got[WANT[0]]:g}\t{got[WANT[1]]:g}\n")
            out.flush()
            time.sleep(0.05)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(
        args[0],
        float(args[1]) if len(args) > 1 else 0.0,
        args[2] if len(args) > 2 else "http://127.0.0.1:8000/metrics",
    )
