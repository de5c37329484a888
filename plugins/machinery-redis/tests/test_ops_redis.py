"""Progress, ``machinery watch`` and ``machinery dead`` on Redis with real worker processes
(the checks of :mod:`machinery.testing.ops`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from machinery.testing.ops import OpsEnv, check_dead_letter_cli, check_progress_across_processes


@pytest.fixture
def ops(tmp_path: Path, url: str, queue: str, raw: redis.Redis) -> Iterator[OpsEnv]:
    env = OpsEnv(tmp_path, url, url, queue)
    yield env
    env.close()
    raw.delete(queue, f"{{{queue}}}:dead")


def test_progress_is_visible_mid_task_from_another_process(ops: OpsEnv) -> None:
    check_progress_across_processes(ops)


def test_progress_from_an_async_task(ops: OpsEnv) -> None:
    check_progress_across_processes(ops, task="asteps")


def test_dead_letters_list_show_replay_purge(ops: OpsEnv) -> None:
    check_dead_letter_cli(ops)


def test_dead_letters_of_every_queue_are_listed(url: str, queue: str, raw: redis.Redis) -> None:
    from machinery import Config, Server

    server = Server(Config(broker=url, result_backend=url, default_queue=queue))
    other = queue + "_b"
    try:
        raw.rpush(f"{{{queue}}}:dead", b"one")
        raw.rpush(f"{{{other}}}:dead", b"two")
        letters = server.broker.list_dead_letters()
        mine = [(d.queue, d.body) for d in letters if d.queue in (queue, other)]
        assert sorted(mine) == [(queue, b"one"), (other, b"two")]
        assert [d.body for d in server.broker.list_dead_letters(other)] == [b"two"]
        two = server.broker.list_dead_letters(other)[0]
        assert server.broker.get_dead_letter(two.id, other) == two
        assert server.broker.remove_dead_letter(two) is True
        assert server.broker.remove_dead_letter(two) is False
    finally:
        raw.delete(f"{{{queue}}}:dead", f"{{{other}}}:dead")
        server.close()
