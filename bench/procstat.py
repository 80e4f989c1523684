"""CPU time and memory of processes and process trees, read from /proc."""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Stat:
    pid: int
    ppid: int
    cpu: float  # own user + system seconds
    children_cpu: float  # user + system seconds of reaped children


def read_stat(pid: int) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()
    ticks = [int(x) for x in rest[11:15]]
    return Stat(
        pid,
        int(rest[1]),
        (ticks[0] + ticks[1]) / CLOCK_TICKS,
        (ticks[2] + ticks[3]) / CLOCK_TICKS,
    )


def all_stats() -> dict[int, Stat]:
    stats: dict[int, Stat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (s := read_stat(int(name))) is not None:
            stats[s.pid] = s
    return stats


def tree(root: int, stats: dict[int, Stat] | None = None) -> list[int]:
    """`root` and every live descendant."""
    stats = all_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for s in stats.values():
        children.setdefault(s.ppid, []).append(s.pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            found.append(pid)
            todo.extend(children.get(pid, []))
    return found


def tree_cpu(root: int) -> float:
    """CPU seconds of a process tree: the live processes plus the children the root reaped.

    Children that exited are counted through their parents' reaped-children time, so a fork-per-
    connection server like Postfix is measured whole as long as its master lives.
    """
    stats = all_stats()
    return sum(stats[p].cpu + stats[p].children_cpu for p in tree(root, stats))


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status, such as VmRSS or VmHWM (0 when gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(root: int) -> int:
    """Summed resident memory of a process tree (shared pages count once per process)."""
    return tree_status_kib(root, "VmRSS")


def tree_status_kib(root: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status summed over a process tree (VmHWM: each process's
    own peak, so the sum is an upper bound of the tree's peak)."""
    return sum(status_kib(p, field) for p in tree(root))
