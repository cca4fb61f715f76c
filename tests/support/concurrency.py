"""Racing calls for the tests that prove something happens once however many try at the same moment."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def run_concurrently(fn: Callable[[int], T], n: int, *, app: Any = None, timeout: float = 60) -> list[T]:
    """Call fn(0) … fn(n - 1) in n threads released together by a barrier; return the results in that order.

    With `app`, each thread runs in its own app context (so its own database session), entered before the
    barrier so that only the call itself races. The first exception raised in a thread is raised here.
    """
    barrier = threading.Barrier(n, timeout=timeout)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def call(i: int) -> None:
        barrier.wait()
        results[i] = fn(i)

    def run(i: int) -> None:
        try:
            if app is None:
                call(i)
            else:
                with app.app_context():
                    call(i)
        except BaseException as err:  # noqa: BLE001 - handed to the test below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if errors:
        raise errors[0]
    assert not any(t.is_alive() for t in threads), f"a call was still running after {timeout} s"
    return results
