"""Go Machinery's retry schedule.

On failure with ``RetryCount > 0`` the worker stores RETRY, decrements ``RetryCount``, sets
``RetryTimeout`` to the next Fibonacci number greater than the current one (1, 2, 3, 5, 8...)
and re-sends the task with ``ETA = now + RetryTimeout`` seconds. A task that raises
:class:`~machinery.errors.RetryTaskLater` is re-sent after the delay it asks for, without
touching ``RetryCount``.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["backoff_schedule", "fibonacci", "fibonacci_next"]


def fibonacci() -> Iterator[int]:
    """Fibonacci numbers starting from 1: 1, 1, 2, 3, 5, 8... (Go's ``retry.Fibonacci``)."""
    a, b = 0, 1
    while True:
        a, b = b, a + b
        yield a


def fibonacci_next(start: int) -> int:
    """The first Fibonacci number greater than ``start`` (Go's ``retry.FibonacciNext``).

    ``fibonacci_next(0) == 1``, ``fibonacci_next(1) == 2``, ``fibonacci_next(5) == 8``.
    """
    for num in fibonacci():
        if num > start:
            return num
    raise AssertionError("unreachable")  # pragma: no cover


def backoff_schedule(retry_count: int, retry_timeout: int = 0) -> list[int]:
    """The delays, in seconds, of each retry a task with these settings would get."""
    out = []
    for _ in range(retry_count):
        retry_timeout = fibonacci_next(retry_timeout)
        out.append(retry_timeout)
    return out
