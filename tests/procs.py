"""Real raftkv member processes for tests (raftkv.verify.cluster), and etcdctl.

Usage:
    with RaftkvCluster.start(tmp_path, size=3) as cluster:
        leader = cluster.wait_for_leader()
        etcdctl(cluster, "put", "k", "v")
        cluster.kill(leader)

Every member is ``python -m raftkv serve`` in its own process group, bound to 127.0.0.1 on
ports the kernel picked, with its data and log under ``tmp_path``. Leaving the ``with``
block (or ``close()``) SIGKILLs every group; leaving it by an exception first prints the
last lines of every member's log to stderr, which pytest shows with the failure.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from raftkv.verify.cluster import ClusterError, etcdctl_command, log_tail
from raftkv.verify.cluster import MemberProcess as RaftkvMember
from raftkv.verify.cluster import ProcessCluster as RaftkvCluster

__all__ = ["ClusterError", "RaftkvCluster", "RaftkvMember", "etcdctl", "log_tail"]


def etcdctl(
    cluster_or_endpoints: RaftkvCluster | str | Sequence[str],
    *args: str,
    input: str | None = None,
    timeout_s: float = 10.0,
) -> subprocess.CompletedProcess[str]:
    """Run etcd's own ``etcdctl`` (v3 API) against the cluster's running members."""
    if isinstance(cluster_or_endpoints, RaftkvCluster):
        endpoints = cluster_or_endpoints.endpoints()
    elif isinstance(cluster_or_endpoints, str):
        endpoints = [cluster_or_endpoints]
    else:
        endpoints = list(cluster_or_endpoints)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return subprocess.run(
        etcdctl_command(endpoints, timeout_s, *args),
        input=input,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s + 5,  # etcdctl gives up first; this only guards against a hang
    )
