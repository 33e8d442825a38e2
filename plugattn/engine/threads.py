"""How many CPU threads a run uses when the config leaves it open, on a machine other processes may be using.

torch's intra-op threads meet at a barrier after every parallel operation, so one thread whose core is taken by
another process holds up all the others: on a 2-core machine with one core busy, 2 threads train at less than half
the speed of 1 thread (``benchmarks/threads_under_load.py`` measures it). Before a run starts, the cores other
processes keep busy are measured (Linux: ``/proc/stat`` over a fraction of a second, this process' own time left
out; elsewhere the 1-minute load average), and the run takes the cores left free, at least one and at most torch's
default.
"""
from __future__ import annotations

import math
import os
import time

__all__ = ['busy_cores', 'choose_threads', 'usable_cores']

# Below half a busy core the cores count as free: that much background work costs the default less than giving up
# a thread would.
BUSY_THRESHOLD = 0.5


def usable_cores() -> int:
    """Logical cores this process may run on (its CPU affinity where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times(cpus: set[int] | None) -> tuple[float, float] | None:
    """``(busy, total)`` jiffies of the given CPUs (all when ``None``) from ``/proc/stat``."""
    try:
        with open('/proc/stat', encoding='ascii') as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith('cpu') or name == 'cpu' or len(fields) < 8:
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (float(v) for v in fields[:8])
        busy += user + nice + system + irq + softirq + steal
        total += user + nice + system + idle + iowait + irq + softirq + steal
    return (busy, total) if total else None


def busy_cores(interval: float = 0.5) -> float | None:
    """Cores kept busy by other processes right now: this process' usable CPUs measured over ``interval`` seconds
    with this process' own CPU time subtracted (Linux), else the 1-minute load average; ``None`` when unknown."""
    try:
        cpus: set[int] | None = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = None
    first = _cpu_times(cpus)
    if first is None:
        try:
            return float(os.getloadavg()[0])
        except (AttributeError, OSError):
            return None
    own, wall = time.process_time(), time.perf_counter()
    time.sleep(interval)
    second = _cpu_times(cpus)
    own, wall = time.process_time() - own, time.perf_counter() - wall
    if second is None or second[1] <= first[1]:
        return None
    share = (second[0] - first[0]) / (second[1] - first[1])  # fraction of the usable CPUs' time spent busy
    return max(0.0, share * usable_cores() - own / max(wall, 1e-9))


def choose_threads(default: int, busy: float | None) -> tuple[int, str | None]:
    """The thread count for a run that does not set one, and the note that explains a change.

    Args:
        default: torch's thread count (used while the cores are free).
        busy: Cores other processes keep busy (:func:`busy_cores`).

    Returns:
        ``(threads, note)``; ``note`` is ``None`` when ``default`` is kept.
    """
    cores = usable_cores()
    if busy is None or busy < BUSY_THRESHOLD or default <= 1:
        return default, None
    free = max(1, min(default, math.floor(cores - busy + 0.5)))
    if free >= default:
        return default, None
    return free, (f'other processes keep {busy:.1f} of {cores} cores busy, so this run uses {free} CPU '
                  f'thread{"s" if free > 1 else ""} instead of {default} (threads that wait for a taken core slow '
                  'down every step); --threads N sets the count')
