#!/bin/bash
# 16 hosts, orch and pyinfra, three timed runs each of the harness (first, no-op, change), after the revision
# record and the live changes went to the host as one script (apply.run_changes, commands.steps) and the
# reload became conditional: the same run as sidebyside-1202c-run.sh, into results6. The test hosts'
# containers inherit the lock's descriptor: run it as `flock /run/lock/orch-testbed.lock bash …`.
RESULTS=results6 exec bash "$(dirname "$0")/sidebyside-1202c-run.sh"
