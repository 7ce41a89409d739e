"""The least any Paramiko tool does on N test hosts: connect, authenticate, run ``true``, 32 at a time.

    python benchmarks/control_path/ssh_floor.py 64     # prints the wall time in seconds

Hosts th1..thN of ../shared/testbed/testhosts.sh (10.77.1.2, ...), key from $TH_DIR (/tmp/perfhosts).
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import paramiko

KEY = paramiko.Ed25519Key.from_private_key_file(
    f"{os.environ.get('TH_DIR', '/tmp/perfhosts')}/keys/id_ed25519"
)


def one(i: int) -> None:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(f"10.77.{i // 250 + 1}.{i % 250 + 1}", username="root", pkey=KEY, allow_agent=False,
                   look_for_keys=False)  # fmt: skip
    _, out, _ = client.exec_command("true")
    out.channel.recv_exit_status()
    client.close()


if __name__ == "__main__":
    started = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(one, range(1, int(sys.argv[1]) + 1)))
    print(f"{time.perf_counter() - started:.2f}")
