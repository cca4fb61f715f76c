"""Measuring tools shared by the benchmarks and the chaos run: /proc CPU times, percentiles, concurrent clients.

Nothing here starts a process or a thread at import, and nothing waits without an end: run_clients' start barrier
is broken (and the error raised) if a client cannot be set up, rather than leaving the caller waiting on it.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple


class ProcStat(NamedTuple):
    """One live process as /proc tells it: its parent, command line and CPU clock ticks (user + system)."""

    ppid: int
    cmdline: str  # arguments joined by spaces; "" when proc_stats was asked not to read command lines
    ticks: int  # utime + stime: its own
    child_ticks: int  # cutime + cstime: its children that exited and were waited for (RQ's forked work horses)


def clock_ticks() -> int:
    """Clock ticks per second, the unit of ProcStat's ticks."""
    return os.sysconf("SC_CLK_TCK")


def proc_stats(*, cmdlines: bool = True) -> dict[int, ProcStat]:
    """Every live process by pid, from /proc (one that exits meanwhile is skipped)."""
    out: dict[int, ProcStat] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = ""
            if cmdlines:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                # After the command (which may hold spaces and parentheses): state, ppid, ... utime, stime,
                # cutime, cstime at [11:15].
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(entry)] = ProcStat(int(fields[1]), cmdline, int(fields[11]) + int(fields[12]),
                                   int(fields[13]) + int(fields[14]))
    return out


def cpu_seconds(match: Callable[[int, ProcStat], bool], *, cmdlines: bool = True) -> float:
    """CPU seconds (user + system) used so far by the live processes `match(pid, stat)` accepts."""
    return sum(p.ticks for pid, p in proc_stats(cmdlines=cmdlines).items() if match(pid, p)) / clock_ticks()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_clients(items: Sequence[Any], clients: int, make_send: Callable[[], Callable[[Any], int]]
                ) -> tuple[float, list[float], list[int]]:
    """Send every item from `clients` threads, each with its own `make_send()` (its connection), started together.

    Client k sends items[k::clients]. Returns (wall seconds from the common start to the last answer, latencies
    in s, statuses). If a `make_send()` raises, no client sends and its error is raised here.
    """
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    setup_errors: list[BaseException] = []

    def run(chunk: Sequence[Any]) -> None:
        try:
            send = make_send()
        except BaseException as err:  # noqa: BLE001 - raised by run_clients below
            setup_errors.append(err)
            barrier.abort()  # everyone waiting at the start stops waiting
            return
        mine_lat, mine_status = [], []
        try:
            barrier.wait()
        except threading.BrokenBarrierError:  # another client could not be set up: nobody sends
            return
        for item in chunk:
            start = time.perf_counter()
            status = send(item)
            mine_lat.append(time.perf_counter() - start)
            mine_status.append(status)
        with lock:
            latencies.extend(mine_lat)
            statuses.extend(mine_status)

    threads = [threading.Thread(target=run, args=(items[k::clients],)) for k in range(clients)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        for t in threads:
            t.join()
        raise setup_errors[0] from None
    started = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - started, latencies, statuses
