"""Measuring tools shared by the benchmarks and the chaos run: /proc CPU times, percentiles, concurrent clients."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProcCpu:
    """One process's parent, command line and CPU seconds (user + system), own and with its exited children."""

    ppid: int
    cmdline: str
    own: float
    with_children: float


def proc_cpu() -> dict[int, ProcCpu]:
    """CPU seconds used so far by every live process, from /proc (processes that vanish meanwhile are skipped)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, ProcCpu] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Fields after the command: utime, stime are [11], [12]; cutime, cstime (exited children) [13], [14].
        out[int(entry)] = ProcCpu(int(fields[1]), cmdline, (int(fields[11]) + int(fields[12])) / tick,
                                  sum(int(x) for x in fields[11:15]) / tick)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_clients(items: Sequence[Any], clients: int, make_send: Callable[[], Callable[[Any], int]]
                ) -> tuple[float, list[float], list[int]]:
    """Send every item from `clients` threads, each with its own `make_send()` connection, started together.

    Returns (wall seconds from the common start to the last answer, latencies in s, statuses).
    """
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def run(chunk: Sequence[Any]) -> None:
        send = make_send()
        mine_lat, mine_status = [], []
        barrier.wait()
        for item in chunk:
            start = time.perf_counter()
            mine_status.append(send(item))
            mine_lat.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine_lat)
            statuses.extend(mine_status)

    threads = [threading.Thread(target=run, args=(items[k::clients],)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - started, latencies, statuses
