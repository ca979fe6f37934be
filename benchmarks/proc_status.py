"""Memory figures of the current process from /proc (Linux), shared by the benchmark scripts."""

from __future__ import annotations


def proc_status(*fields: str) -> dict[str, int]:
    """Selected ``/proc/self/status`` fields (e.g. VmRSS, VmHWM, RssAnon, RssFile) in bytes.

    VmHWM is this process's peak RSS; unlike ``ru_maxrss`` it is not inherited across ``execve``.
    """
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in fields:
                out[key] = int(value.split()[0]) * 1024
    return out
