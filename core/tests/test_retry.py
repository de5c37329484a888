"""Go Machinery's Fibonacci retry schedule."""

from __future__ import annotations

import pytest

from machinery.retry import backoff_schedule, fibonacci, fibonacci_next


def test_fibonacci_starts_at_one() -> None:
    gen = fibonacci()
    assert [next(gen) for _ in range(8)] == [1, 1, 2, 3, 5, 8, 13, 21]


@pytest.mark.parametrize(
    ("start", "nxt"), [(0, 1), (1, 2), (2, 3), (3, 5), (4, 5), (5, 8), (8, 13), (20, 21), (21, 34)]
)
def test_fibonacci_next_matches_go(start: int, nxt: int) -> None:
    assert fibonacci_next(start) == nxt


def test_backoff_schedule() -> None:
    assert backoff_schedule(5) == [1, 2, 3, 5, 8]
    assert backoff_schedule(3, retry_timeout=5) == [8, 13, 21]
    assert backoff_schedule(0) == []
