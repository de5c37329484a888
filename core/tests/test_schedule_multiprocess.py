"""Three scheduler processes on the embedded default (``sqlite://``): one task per tick.

Each process runs :class:`~machinery.schedule.Scheduler` on its own ``Server`` for a ``@every 1s``
entry; afterwards :func:`machinery.testing.check_periodic_ticks_once` consumes every message from
the queue and checks, by the tick header each one carries, that every tick was delivered exactly
once with no gap.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from machinery.testing import check_periodic_ticks_once


@pytest.mark.slow
def test_three_scheduler_processes_on_sqlite_send_each_tick_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'machinery.db'}"
    check_periodic_ticks_once(tmp_path, broker=url, backend=url, lock=url, seconds=10.0, processes=3)
