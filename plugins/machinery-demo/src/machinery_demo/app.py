"""The tasks of ``machinery demo``, and a small example app to read.

Run a worker for it with ``machinery worker --app machinery_demo.app``; it uses the embedded
default transport (``sqlite:///machinery.db``, or ``$MACHINERY_DEFAULT_URL``).
"""

from __future__ import annotations

from machinery import Server, TaskContext

__all__ = ["add", "divide", "flaky_add", "multiply", "report_error", "server"]

server = Server()


@server.task("add")
def add(*numbers: int) -> int:
    """The sum of the numbers."""
    return sum(numbers)


@server.task("multiply")
def multiply(*numbers: int) -> int:
    """The product of the numbers."""
    product = 1
    for n in numbers:
        product *= n
    return product


@server.task("flaky_add")
def flaky_add(ctx: TaskContext, a: int, b: int) -> int:
    """``a + b``, but fails while the task still has retries left (to show retries)."""
    if ctx.retry_count > 0:
        raise ConnectionError(f"simulated transient failure ({ctx.retry_count} retries left)")
    return a + b


@server.task("divide")
def divide(a: int, b: int) -> float:
    """``a / b``; dividing by zero fails (to show on_error callbacks)."""
    return a / b


@server.task("report_error")
def report_error(error: str) -> str:
    """An ``on_error`` callback: receives the failed task's error string first."""
    return f"handled: {error}"
