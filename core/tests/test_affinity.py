"""``--cpu-affinity`` (``worker_cpu_affinity``): the setting's forms and errors, the pinning of
every thread of a process and its undoing, the claims that spread ``auto`` workers over the CPUs,
and real worker processes, threads pool and processes pool (whose children get the CPUs back)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from machinery import Config, Server, Signature
from machinery.affinity import pin_worker
from machinery.cli import main
from machinery.errors import ConfigError
from machinery.settings import parse_cpu_affinity

linux = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="sched_setaffinity is Linux only")
ALLOWED = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()
two_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs a process allowed on 2 CPUs or more")


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("", ""), (None, ""), ("none", ""), (" OFF ", ""), ("auto", "auto"), ("AUTO", "auto"), ("0", "0"),
     (0, "0"), ("3,1-2", "1,2,3"), ("4-5, 0", "0,4,5")],
)  # fmt: skip
def test_setting_forms(given: object, canonical: str) -> None:
    assert parse_cpu_affinity(given) == canonical


@pytest.mark.parametrize("bad", ["x", "-1", "3-1", "1,", "0-", "one", True, 1.5])
def test_bad_settings_are_refused_with_the_forms(bad: object) -> None:
    with pytest.raises(ValueError, match="auto, none or a CPU list"):
        parse_cpu_affinity(bad)


def test_a_cpu_number_past_any_machine_is_refused() -> None:
    with pytest.raises(ValueError, match="CPU 99999999 is out of range"):
        parse_cpu_affinity("0-99999999")


def test_config_and_environment() -> None:
    assert Config().worker_cpu_affinity == ""
    assert Config(worker_cpu_affinity="2-3").worker_cpu_affinity == "2,3"
    assert Config.from_env({"MACHINERY_WORKER_CPU_AFFINITY": "Auto"}).worker_cpu_affinity == "auto"
    with pytest.raises(ConfigError, match="worker_cpu_affinity"):
        Config(worker_cpu_affinity="fast")


def test_cli_refuses_a_bad_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["worker", "--app", "nowhere:server", "--cpu-affinity", "fast"])
    assert exc.value.code == 2
    assert "--cpu-affinity: expected auto, none or a CPU list" in capsys.readouterr().err


def _cpus_of_every_thread(pid: int | str = "self") -> dict[int, frozenset[int]]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = frozenset(os.sched_getaffinity(int(tid)))
        except OSError:
            pass  # ended meanwhile
    return out


@linux
@two_cpus
def test_pin_sets_every_thread_and_undo_gives_them_back() -> None:
    cpu = max(ALLOWED)
    release = threading.Event()
    before = threading.Thread(target=release.wait, daemon=True)  # running before the pinning
    before.start()
    pinned = pin_worker(str(cpu))
    try:
        assert pinned is not None and pinned.cpus == {cpu} and pinned.original == ALLOWED
        after = threading.Thread(target=release.wait, daemon=True)  # started after: inherits
        after.start()
        every = _cpus_of_every_thread()
        assert {before.native_id, after.native_id, threading.get_native_id()} <= set(every)
        assert set(every.values()) == {frozenset({cpu})}
    finally:
        if pinned is not None:
            pinned.undo()
    assert set(_cpus_of_every_thread().values()) == {ALLOWED}
    release.set()


@linux
def test_a_cpu_outside_the_allowed_ones_is_a_config_error() -> None:
    outside = max(ALLOWED) + 1
    with pytest.raises(ConfigError, match=f"CPU {outside} is not one this process may use"):
        pin_worker(str(outside))
    assert frozenset(os.sched_getaffinity(0)) == ALLOWED


CLAIMER = textwrap.dedent(
    """
    import os, sys
    from machinery.affinity import pin_worker
    pinned = pin_worker("auto")
    print(",".join(map(str, sorted(pinned.cpus))), flush=True)
    sys.stdin.read()  # holds the claim until the test closes stdin
    """
)


@linux
@two_cpus
def test_auto_workers_take_different_cpus(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    cmd = [sys.executable, "-c", CLAIMER]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    try:
        got = [p.stdout.readline().strip() for p in procs if p.stdout is not None]
    finally:
        for p in procs:
            p.communicate(timeout=10)
    assert len(got) == 2 and all(got), got
    assert got[0] != got[1], f"both workers took CPU {got[0]}"
    assert {int(c) for c in got} <= ALLOWED
    claims = tmp_path / f"machinery-cpus-{os.getuid()}"
    assert claims.stat().st_mode & 0o777 == 0o700


APP = textwrap.dedent(
    """
    import os
    from machinery import Config, Server

    server = Server(Config(broker=os.environ["AFF_URL"], result_backend=os.environ["AFF_URL"]))

    @server.task("cpus")
    def cpus() -> str:
        return ",".join(map(str, sorted(os.sched_getaffinity(0))))
    """
)


@linux
@two_cpus
@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_a_worker_process_keeps_its_threads_on_one_cpu(tmp_path: Path, pool: str) -> None:
    (tmp_path / "affapp.py").write_text(APP)
    url = f"sqlite:///{tmp_path / 'aff.db'}"
    env = {**os.environ, "AFF_URL": url, "PYTHONPATH": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "machinery", "worker", "--app", "affapp:server", "-c", "2", "--pool", pool,
           "--cpu-affinity", "auto", "--loglevel", "info"]  # fmt: skip
    worker = subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    server = Server(Config(broker=url, result_backend=url))
    try:
        ran_on = server.send_task(Signature("cpus")).get(timeout=60)
        threads = _cpus_of_every_thread(worker.pid)
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=30)
        server.close()
    assert worker.returncode == 0, err
    kept = set(threads.values())
    assert len(kept) == 1 and len(next(iter(kept))) == 1, f"the worker's threads run on {kept}"
    cpu = next(iter(next(iter(kept))))
    assert f"worker threads kept on CPU {cpu} (--cpu-affinity auto)" in err
    if pool == "threads":
        assert ran_on == str(cpu)
    else:  # the child running the task has the CPUs the worker had before
        assert ran_on == ",".join(map(str, sorted(ALLOWED)))


@linux
@two_cpus
def test_a_background_worker_gives_the_cpus_back_when_it_stops() -> None:
    srv = Server(Config(broker="memory://aff", result_backend="memory://aff", worker_cpu_affinity=str(min(ALLOWED))))

    @srv.task("cpus")
    def cpus() -> str:
        return ",".join(map(str, sorted(os.sched_getaffinity(0))))

    w = srv.new_worker("aff", 2).launch_in_background()
    try:
        assert srv.send_task(Signature("cpus")).get(timeout=10) == str(min(ALLOWED))
        assert frozenset(os.sched_getaffinity(0)) == {min(ALLOWED)}  # the whole process, this thread too
    finally:
        w.quit()
    deadline = time.monotonic() + 5
    while set(_cpus_of_every_thread().values()) != {ALLOWED} and time.monotonic() < deadline:
        time.sleep(0.01)
    assert set(_cpus_of_every_thread().values()) == {ALLOWED}


@linux
@two_cpus
def test_a_worker_that_fails_to_start_gives_the_cpus_back() -> None:
    srv = Server(Config(broker="memory://aff2", result_backend="memory://aff2", worker_cpu_affinity=str(min(ALLOWED))))
    w = srv.new_worker("aff2", 1)
    w.pool = "fork"  # not a pool: the start fails after the pinning
    with pytest.raises(ValueError, match="unknown worker pool"):
        w.launch_in_background()
    assert set(_cpus_of_every_thread().values()) == {ALLOWED}
