#!/usr/bin/env python3
"""Where a canary-bench release's detection time goes, from the API server's audit log.

For each target Deployment the benchmark patched (`app-NNNN`), the time from the
benchmark's last patch to the first `patch canaries/status` by petrel received after it,
and how long that status write took; then the first figure by hundreds of Deployments in
the order they were patched. A delay that grows with the place in the order means the
reconciles queue behind one another.

    e2e/scripts/detection-from-audit.py <dir>/fleet/bench/logs/audit.log bench-2

The namespace is the round's (`canary-bench: round 2 ... in namespace bench-2`).
"""

import json
import sys
from datetime import datetime


def seconds(stamp):
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def quantile(values, q):
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def main(audit_log, namespace):
    patched = {}
    status_writes = {}
    with open(audit_log) as log:
        for line in log:
            if namespace not in line or '"stage":"ResponseComplete"' not in line:
                continue
            entry = json.loads(line)
            ref = entry.get("objectRef", {})
            if ref.get("namespace") != namespace:
                continue
            agent = entry.get("userAgent", "")
            name = ref.get("name", "")
            if (
                ref.get("resource") == "deployments"
                and entry["verb"] == "patch"
                and "petrel" not in agent
                and name.startswith("app-")
                and not name.endswith("-primary")
            ):
                patched[name] = seconds(entry["stageTimestamp"])
            if ref.get("resource") == "canaries" and ref.get("subresource") == "status" and "petrel" in agent:
                received = seconds(entry["requestReceivedTimestamp"])
                status_writes.setdefault(name, []).append((received, seconds(entry["stageTimestamp"])))

    def first_write_after(name):
        after = [write for write in status_writes.get(name, []) if write[0] >= patched[name]]
        return min(after) if after else None

    to_write, write_took = [], []
    for name in patched:
        write = first_write_after(name)
        if write:
            to_write.append(write[0] - patched[name])
            write_took.append(write[1] - write[0])
    if not to_write:
        sys.exit(f"no status write by petrel after a patch in namespace {namespace}")
    print(f"{len(to_write)} Deployments: patch to status write received, p50 {quantile(to_write, .5):.2f} s, "
          f"p90 {quantile(to_write, .9):.2f} s, p99 {quantile(to_write, .99):.2f} s")
    print(f"status write took p50 {quantile(write_took, .5):.3f} s, p90 {quantile(write_took, .9):.3f} s, "
          f"p99 {quantile(write_took, .99):.3f} s")
    times = sorted(patched.values())
    print(f"the patches took {times[-1] - times[0]:.1f} s")
    order = sorted(patched, key=patched.get)
    for start in range(0, len(order), 100):
        chunk = [first_write_after(name)[0] - patched[name] for name in order[start:start + 100] if first_write_after(name)]
        if chunk:
            print(f"patched {start + 1}-{start + len(order[start:start + 100])}: p50 {quantile(chunk, .5):.2f} s")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
