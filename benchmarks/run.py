"""Benchmark machinery against Go Machinery, Celery, Dramatiq, RQ, arq, Huey and Taskiq, in one run.

    nox -s bench                               # the full run: writes benchmarks/RESULTS.md + results.png
    nox -s bench -- --no-scale                 # ... without the 1,000,000-task backlog (2 minutes)
    python benchmarks/run.py --smoke           # tiny N, machinery and whatever peers are installed
    python benchmarks/run.py --quick           # tiny N, every section, < 1 minute (a temporary file)
    python benchmarks/run.py --systems machinery,celery --n 2000 --sweep-systems machinery --sweep-c 8,64

A private ``redis-server`` (``--save '' --appendonly no``) on a free port is started and stopped
here; every system gets the same server, N, scenarios and clean state (``FLUSHALL`` of that
private server between runs). Each system's producer runs in a subprocess (``driver.py``) and its
worker is the system's own worker CLI, one process tree, concurrency 8. Scenarios:

1. enqueue: N tasks from one producer, one call each (machinery also as one group);
2. drain: N tasks queued, one worker started; throughput from the first task's start to the N-th
   task's end, as recorded by the worker itself (results on, and off where the system allows);
3. round trip: send one task, wait for its result; sequentially, after a warm-up;
4. ETA lateness: tasks due over a few seconds record ``start - due`` into a Redis list;
5. worker peak RSS (sum over the worker's process tree, from /proc) and import time;
6. the floor: raw redis-py LPUSH + BRPOP on the same server;
7. worker CPU per task: user + system time of the worker's process tree over the drain.

Then the sections of issue 23: a concurrency sweep (drain of a no-op and of a 10 ms I/O-bound task
at c = 1, 8, 32, 64 for machinery, Go Machinery v2 and the Python peers with a concurrency knob);
Go Machinery v2 itself (interop/go/cmd/gobench, built by interop/go/build.sh) on Redis and
RabbitMQ; Celery and Dramatiq on RabbitMQ and Huey's SQLite storage beside machinery's amqp and
sqlite:// transports; one vs two worker processes; a 1,000,000-task backlog (not with ``--no-scale``,
``--quick`` or ``--smoke``).
Last, plugin discovery at start-up: the plugin host's load with ``machinery._entrypoints`` against
``importlib.metadata``, in fresh interpreters, alternated (docs/performance.md).

A system that cannot do a scenario gets "n/a" with the reason; a failure is reported as one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SYSTEMS_DIR = HERE / "systems"
DRIVER = HERE / "driver.py"
sys.path.insert(0, str(SYSTEMS_DIR))

DONE_KEY = "bench:done"
FIRST_KEY = "bench:first"
PROGRESS_KEY = "bench:progress"
ETA_KEY = "bench:eta"
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

PEERS = ["celery", "dramatiq", "rq", "arq", "huey", "taskiq"]
MACHINERY = ["machinery", "machinery-sqlite", "machinery-amqp"]
#: Go Machinery v2 itself (interop/go/cmd/gobench, built by interop/go/build.sh), on Redis and RabbitMQ.
GO = ["go-machinery", "go-machinery-amqp"]
#: Peers on machinery's other transports: RabbitMQ (beside machinery-amqp) and SQLite (beside sqlite://).
TRANSPORT_PEERS = ["celery-amqp", "dramatiq-amqp", "celery-amqp-confirm", "dramatiq-amqp-confirm", "huey-sqlite"]
AMQP_ROWS = ["machinery-amqp", "go-machinery-amqp", "celery-amqp", "dramatiq-amqp", "celery-amqp-confirm", "dramatiq-amqp-confirm"]
SQLITE_ROWS = ["machinery-sqlite", "huey-sqlite"]
#: The concurrency sweep: systems with a concurrency knob, and the settings swept.
SWEEP_SYSTEMS = ["machinery", "machinery-affinity", "go-machinery", "celery", "dramatiq", "taskiq", "huey", "arq", "machinery-amqp",
                 "go-machinery-amqp"]  # fmt: skip
SWEEP_C = [1, 8, 32, 64]
SWEEP_TASKS = {"count": "no-op", "sleep_count": "I/O-bound (10 ms sleep)"}
#: The sweep's systems whose cells are the median of ``--sweep-repeats`` drains, run alternated
#: with one another at each setting: the pair behind the "Redis drain ≥ Go Machinery's" targets.
SWEEP_REPEATED = ("machinery", "machinery-affinity", "go-machinery")
#: The plugin discovery section: the plugin host's load with machinery._entrypoints (as shipped),
#: with importlib.metadata's reader swapped in, and the module import alone.
_LOAD = "from machinery.plugins import get_plugin_host; get_plugin_host().load()"
STARTUP_CODES = [
    ("entrypoints", _LOAD),
    ("importlib", "import machinery._entrypoints as e; e.entry_points = e._with_importlib_metadata; " + _LOAD),
    ("floor", "import machinery.plugins"),
]
STARTUP_LABELS = {
    "entrypoints": "plugin host loaded, entry points read by `machinery._entrypoints`",
    "importlib": "plugin host loaded, entry points read by `importlib.metadata.entry_points(group=...)`",
    "floor": "`import machinery.plugins` alone (no plugin loaded)",
}
#: machinery (redis) with one observability plugin enabled: the drain is compared with "machinery".
OBSERVABILITY = {
    "machinery-otel": "opentelemetry",
    "machinery-prometheus": "prometheus",
    "machinery-dashboard": "dashboard",  # its events recorder writes to the Redis backend
}
#: machinery (redis) pool variants, drain only, -c 2: (pool, drained task). The no-op ones count
#: in Redis (probe.count_shared, one round trip per task) so that processes can count.
POOLS = {
    "machinery-threads-c2": ("threads", "count_shared"),
    "machinery-processes-c2": ("processes", "count_shared"),
    "machinery-threads-cpu": ("threads", "cpu"),
    "machinery-processes-cpu": ("processes", "cpu"),
}
ALL = ["floor", *MACHINERY, *GO, *OBSERVABILITY, *POOLS, *PEERS, *TRANSPORT_PEERS]
ROOT = HERE.parent
GO_BUILD = Path(os.environ.get("MACHINERY_GO_BUILD", str(ROOT / ".nox" / "_go_interop")))
DRAIN_ONLY = "n/a"  # the other cells of a drain-only variant (the pool variants)
#: Every other variant runs with the observability plugins disabled (when they are installed).
NO_OBSERVABILITY = {"MACHINERY_DISABLE_PLUGINS": ",".join(OBSERVABILITY.values())}


class NA(str):
    """A cell that has no number: the reason (n/a) or the failure."""


def failed(reason: str) -> NA:
    return NA(f"FAILED: {reason}")


# -- the private Redis server and process helpers ----------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on a free port, started and stopped by the benchmark."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server not found on PATH (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        self.client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)
        self.version = self.client.info("server")["redis_version"]

    def flush(self) -> None:
        self.client.flushall()

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def tree_rss_kb(root: int) -> int:
    """Resident set size (kB) of ``root`` and all its descendants, from /proc."""
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu_s(root: int) -> float:
    """User + system CPU seconds used so far by ``root`` and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


class Worker:
    """A worker process tree under test, with a peak-RSS sampler."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        self._logf = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._logf, stderr=self._logf, start_new_session=True)
        self.peak_kb = 0
        #: the tree's CPU seconds when its first task was seen and when its N-th was (wait_done)
        self.cpu_first: float | None = None
        self.cpu_end: float | None = None
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, tree_rss_kb(self.proc.pid))
            self._stop.wait(0.05)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 6) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])[-400:]

    def stop(self) -> None:
        self._stop.set()
        self._sampler.join()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(3)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        else:
            try:  # children that outlived their parent
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._logf.close()


# -- systems ------------------------------------------------------------------------------------


@dataclass
class Variant:
    """One column of systems: a module under systems/ plus its environment."""

    name: str
    module: str
    label: str
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=dict)
    off_env: dict[str, str] | None = None  # extra env for "results off"; None = use BENCH_RESULTS=0
    results_off: str | None = None  # n/a reason when results cannot be switched off
    cleanup: Callable[[], None] | None = None
    note: str = ""
    drain_only: bool = False  # only the drains (the pool variants); other cells are n/a


@dataclass
class Row:
    variant: Variant
    cells: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    capped: dict[str, int] = field(default_factory=dict)  # drains measured over fewer tasks
    #: observability variants: (drain with the plugin, drain without), measured back to back
    paired: list[tuple[float, float]] = field(default_factory=list)


COLUMNS = [
    ("enqueue", "enqueue/s"),
    ("group", "group enqueue/s"),
    ("drain_on", "drain/s (results)"),
    ("drain_off", "drain/s (no results)"),
    ("cpu_us", "worker CPU µs/task"),
    ("rt_p50", "round trip p50 ms"),
    ("rt_p99", "round trip p99 ms"),
    ("eta_p50", "ETA late p50 ms"),
    ("eta_p99", "ETA late p99 ms"),
    ("rss", "worker peak RSS MB"),
    ("import", "import ms"),
    ("import_api", "import + main API ms"),
]

#: The name a producer uses first, per package: the second import column times loading it.
API_NAMES = {
    "machinery": "Server",
    "redis": "Redis",
    "celery": "Celery",
    "dramatiq": "actor",
    "rq": "Queue",
    "arq": "create_pool",
    "huey": "RedisHuey",
    "taskiq": "AsyncBroker",
}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="machinery-bench-"))
        self.redis = RedisServer(self.tmp)
        self.token = secrets.token_hex(4)
        self.rows: list[Row] = []
        self.log_dir = self.tmp / "logs"
        self.log_dir.mkdir()
        self._info: dict[tuple[str, bool], dict[str, Any]] = {}
        self._gobench: str | NA | None = None
        #: the extra sections: sweep[(system, task)][c] = (rate, cpu µs/task, capped task count or 0)
        self.sweep: dict[tuple[str, str], dict[int, tuple[float, float | None, int] | NA]] = {}
        #: every drain behind a repeated cell (SWEEP_REPEATED): sweep_runs[(system, task)][c] = rates
        self.sweep_runs: dict[tuple[str, str], dict[int, list[float]]] = {}
        self.procs: dict[str, float | NA] = {}  # one vs two worker processes
        self.scale: dict[str, Any] = {}  # the backlog run (not with --no-scale)
        #: plugin discovery at start-up: reader -> sorted seconds of fresh interpreters
        self.startup: dict[str, list[float]] | NA = {}

    # environment -----------------------------------------------------------------------------

    def base_env(self, v: Variant, results: bool, n: int) -> dict[str, str]:
        # Byte-code caches are written and used (PYTHONDONTWRITEBYTECODE would make every
        # process compile its imports again: slower starts, inflated RSS for every system).
        env = {k: val for k, val in os.environ.items() if not k.startswith("BENCH_") and k != "PYTHONDONTWRITEBYTECODE"}
        env.update(
            PYTHONPATH=str(SYSTEMS_DIR),
            PYTHONUNBUFFERED="1",
            BENCH_REDIS_URL=self.redis.url,
            BENCH_RESULTS="1" if results else "0",
            BENCH_N=str(n),
            # the sweep's variants keep their base variant's queue (BENCH_QUEUE_NAME): its cleanup deletes it
            BENCH_QUEUE=f"bench_{v.env.get('BENCH_QUEUE_NAME', v.name).replace('-', '_')}_{self.token}",
        )
        env.update(v.env)
        if not results and v.off_env:
            env.update(v.off_env)
        if v.module == "go":  # Go Machinery reads its own variables (config.NewFromEnvironment)
            env["DEFAULT_QUEUE"] = env["BENCH_QUEUE"]
            env["AMQP_BINDING_KEY"] = env["BENCH_QUEUE"]
            env["AMQP_PREFETCH_COUNT"] = env.get("BENCH_CONCURRENCY") or "8"
        return env

    def driver(self, v: Variant, scenario: str, *, results: bool = True, timeout: float = 300, **opts: Any) -> dict[str, Any]:
        if v.module == "go":
            if scenario not in ("enqueue", "prefill", "roundtrip"):
                raise RuntimeError(f"{scenario}: not in gobench")
            cmd = [self.gobench(), scenario, *(f"-{k}={opts[k]}" for k in ("n", "warmup") if k in opts)]
        else:
            cmd = [v.python, str(DRIVER), v.module, scenario, "--results", "1" if results else "0"]
            for k, val in opts.items():
                cmd += [f"--{k.replace('_', '-')}", str(val)]
        proc = subprocess.run(cmd, env=self.base_env(v, results, 0), capture_output=True, text=True, timeout=timeout, cwd=self.tmp)
        if proc.returncode != 0:
            err = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise RuntimeError(f"{scenario} producer: {err[:300]}")
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))

    def gobench(self) -> str:
        """interop/go/build.sh's gobench (built, or found up to date, on first use)."""
        if self._gobench is None:
            proc = subprocess.run(
                ["bash", str(ROOT / "interop" / "go" / "build.sh")], capture_output=True, text=True,
                env={**os.environ, "MACHINERY_GO_BUILD": str(GO_BUILD)},
            )
            exe = Path(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else GO_BUILD) / "bin" / "gobench"
            if proc.returncode != 0 or not exe.exists():
                last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
                self._gobench = NA(f"interop/go/build.sh failed: {last[:200]}")
            else:
                self._gobench = str(exe)
        if isinstance(self._gobench, NA):
            raise RuntimeError(self._gobench)
        return self._gobench

    def info(self, v: Variant, results: bool) -> dict[str, Any]:
        """The system module's worker command, note and ETA support, asked in its own environment."""
        key = (v.name, results)
        if key not in self._info and v.module == "go":
            c = v.env.get("BENCH_CONCURRENCY") or "8"
            go = subprocess.run(["go", "version"], capture_output=True, text=True).stdout.split()
            self._info[key] = {
                "cmd": [self.gobench(), "worker", "-c", c],
                "note": f"`server.NewWorker(tag, {c}).Launch()` (interop/go/cmd/gobench: Go Machinery v2 at "
                "26dbe030 from ../shared/go-machinery, built by interop/go/build.sh; its DEBUG/INFO loggers silenced)"
                + ("; RabbitMQ broker (publisher confirms on, Go Machinery's own behaviour), "
                   f"`AMQP_PREFETCH_COUNT={c}` (= concurrency, as machinery's worker sets it)" if "amqp" in v.name else ""),
                "eta": "not measured for Go Machinery",
                "versions": {"go": go[2] if len(go) > 2 else "?"},
            }
        if key not in self._info:
            code = (
                f"import json, importlib.metadata as md, bench_{v.module} as m\n"
                "def version(d):\n    try:\n        return md.version(d)\n    except md.PackageNotFoundError:\n"
                "        return None\n"
                f"vs = {{d: version(d) for d in {self.dists(v)!r}}}\n"
                f"print(json.dumps({{'cmd': m.worker_cmd({v.python!r}, {results!r}), "
                "'note': getattr(m, 'WORKER_NOTE', ''), 'eta': getattr(m, 'ETA_UNSUPPORTED', ''), "
                "'versions': {k: x for k, x in vs.items() if x}}))"
            )
            out = subprocess.run(
                [v.python, "-c", code], env=self.base_env(v, results, 0), capture_output=True, text=True, cwd=self.tmp
            )
            if out.returncode != 0:
                last = (out.stderr.strip().splitlines() or ["?"])[-1]
                raise RuntimeError(f"cannot load bench_{v.module}: {last[:200]}")
            self._info[key] = json.loads(out.stdout)
        return self._info[key]

    def worker(self, v: Variant, results: bool, n: int) -> Worker:
        cmd = list(self.info(v, results)["cmd"])
        log = self.log_dir / f"{v.name}-{'on' if results else 'off'}-{int(time.time() * 1000)}.log"
        return Worker(cmd, self.base_env(v, results, n), self.tmp, log)

    def clean(self, v: Variant) -> None:
        self.redis.flush()
        if v.cleanup is not None:
            v.cleanup()

    # scenarios -------------------------------------------------------------------------------

    def wait_done(
        self, w: Worker, timeout: float, n: int | None = None, cap: float | None = None, others: tuple[Worker, ...] = ()
    ) -> tuple[float, float, int]:
        """Wait for the N-th task; returns (first start, end, tasks counted). A drain still
        running ``--drain-cap`` seconds after its first task started is measured over the
        tasks done by then (progress marks every 500 tasks) and reported with a star. The
        worker tree's CPU time is sampled on every look; the sample taken last before the first
        task's start (the time the worker wrote) is the start of the CPU count, so a short drain
        that begins and ends between two looks on a loaded machine still has one."""
        n = self.args.n if n is None else n
        deadline = time.monotonic() + timeout
        cap = self.args.drain_cap if cap is None else cap
        started: bytes | None = None
        samples: list[tuple[float, float]] = []  # (wall time, worker tree CPU seconds)

        def cpu_before(t: float) -> float:
            before = [cpu for at, cpu in samples if at <= t]
            return before[-1] if before else samples[0][1]

        while time.monotonic() < deadline:
            samples.append((time.time(), tree_cpu_s(w.proc.pid)))
            raw = self.redis.client.get(DONE_KEY)
            if raw is not None:
                w.cpu_end = tree_cpu_s(w.proc.pid)
                first, last = (float(x) for x in raw.split())
                w.cpu_first = cpu_before(first)
                return first, last, n
            for x in (w, *others):
                if not x.alive():
                    raise RuntimeError(f"worker exited with {x.proc.returncode}: {x.tail()}")
            if started is None:
                started = self.redis.client.get(FIRST_KEY)
            if cap and started is not None and time.time() - float(started) > cap:
                marks = self.redis.client.lrange(PROGRESS_KEY, -1, -1)
                if marks:
                    w.cpu_end = tree_cpu_s(w.proc.pid)
                    w.cpu_first = cpu_before(float(started))
                    k, at = marks[0].split()
                    return float(started), float(at), int(k)
            time.sleep(0.01)
        raise RuntimeError(f"not all {n} tasks done within {timeout:.0f}s: {w.tail()}")

    @staticmethod
    def cpu_us(w: Worker, done: int) -> float | None:
        """Worker CPU per task (µs) between the first task seen and the end of the drain."""
        if w.cpu_first is None or w.cpu_end is None or done <= 0:
            return None
        return (w.cpu_end - w.cpu_first) / done * 1e6

    def drain(self, v: Variant, row: Row, results: bool, prefilled: bool) -> None:
        key = "drain_on" if results else "drain_off"
        n = self.args.n
        if not prefilled:
            self.driver(v, "prefill", results=results, n=n)
        w = self.worker(v, results, n)
        try:
            first, last, done = self.wait_done(w, self.args.drain_timeout)
        finally:
            w.stop()
        row.cells[key] = done / max(last - first, 1e-9)
        if done < n:
            row.capped[key] = done
        if results:
            row.cells["rss"] = w.peak_kb / 1024
            cpu = self.cpu_us(w, done)
            if cpu is not None:
                row.cells["cpu_us"] = cpu

    def drain_rate(self, v: Variant) -> float:
        """One more drain with results of N prefilled tasks (the rate only; clean state after)."""
        n = self.args.n
        try:
            self.driver(v, "prefill", n=n)
            w = self.worker(v, True, n)
            try:
                first, last, done = self.wait_done(w, self.args.drain_timeout)
            finally:
                w.stop()
        finally:
            self.clean(v)
        return done / max(last - first, 1e-9)

    def paired_drains(self, v: Variant, plain: Variant, row: Row) -> None:
        """The overhead of an observability plugin: ``--pairs`` drains without it and with it,
        alternated, so both sides of each ratio ran under the same conditions (a single drain of
        each, minutes apart, differs by more than the 15% asked of the plugins on a busy machine)."""
        for i in range(self.args.pairs):
            without = self.drain_rate(plain)
            with_ = self.drain_rate(v)
            row.paired.append((with_, without))
            print(f"   pair {i + 1}: {with_:,.0f} vs {without:,.0f}/s ({with_ / without:.0%})", flush=True)

    def latency(self, v: Variant, row: Row) -> None:
        w = self.worker(v, True, 0)
        try:
            try:
                out = self.driver(v, "roundtrip", n=self.args.rt, warmup=self.args.rt_warmup, timeout=120)
                lat = sorted(x * 1000 for x in out["latencies"])
                row.cells["rt_p50"] = pct(lat, 50)
                row.cells["rt_p99"] = pct(lat, 99)
            except Exception as exc:
                row.cells["rt_p50"] = row.cells["rt_p99"] = failed(str(exc))
            if not w.alive():
                raise RuntimeError(f"worker exited: {w.tail()}")
            reason = self.info(v, True)["eta"]
            if reason:
                row.cells["eta_p50"] = row.cells["eta_p99"] = NA(f"n/a: {reason}")
                return
            try:
                out = self.driver(v, "eta", n=self.args.eta, spread=self.args.eta_spread, timeout=60)
                deadline = time.time() + (out["last_due"] - time.time()) + self.args.eta_grace
                got: list[bytes] = []
                while time.time() < deadline:
                    got = self.redis.client.lrange(ETA_KEY, 0, -1)
                    if len(got) >= self.args.eta:
                        break
                    time.sleep(0.05)
                if len(got) < self.args.eta:
                    raise RuntimeError(f"only {len(got)}/{self.args.eta} delayed tasks ran within {self.args.eta_grace:.0f}s of the last ETA")
                late = sorted(float(x) * 1000 for x in got)
                row.cells["eta_p50"] = pct(late, 50)
                row.cells["eta_p99"] = pct(late, 99)
            except Exception as exc:
                row.cells["eta_p50"] = row.cells["eta_p99"] = failed(str(exc))
        finally:
            w.stop()

    def import_time(self, v: Variant, api: bool = False) -> float:
        """Best of N fresh interpreters: ``import <package>`` alone, or (``api``) followed by the
        first use of its main producer-side name (``machinery.Server``, ``celery.Celery``...),
        which is what a lazily-loading package pays on first use."""
        mod = {"floor": "redis"}.get(v.module, v.module)
        touch = f"; {mod}.{API_NAMES[mod]}" if api else ""
        code = f"import time; t = time.perf_counter(); import {mod}{touch}; print(time.perf_counter() - t)"
        best = float("inf")
        for _ in range(self.args.import_runs):
            out = subprocess.run([v.python, "-c", code], capture_output=True, text=True, check=True, cwd=self.tmp)
            best = min(best, float(out.stdout))
        return best * 1000

    @staticmethod
    def dists(v: Variant) -> list[str]:
        """The distributions whose versions the results name for ``v``."""
        if v.name == "machinery-amqp":
            return ["machinery-core", "machinery-amqp", "pika"]
        if v.name == "machinery-sqlite":
            return ["machinery-core"]
        if v.name.startswith("celery-amqp"):
            return ["celery", "kombu", "amqp", "redis"]
        if v.name.startswith("dramatiq-amqp"):
            return ["dramatiq", "pika", "redis"]
        if v.name == "huey-sqlite":
            return ["huey"]
        if v.name == "machinery-otel":
            return ["machinery-core", "machinery-redis", "machinery-opentelemetry", "opentelemetry-sdk"]
        if v.name == "machinery-prometheus":
            return ["machinery-core", "machinery-redis", "machinery-prometheus", "prometheus-client"]
        if v.name == "machinery-dashboard":
            return ["machinery-core", "machinery-redis", "machinery-dashboard"]
        return {
            "floor": ["redis", "hiredis"],
            "machinery": ["machinery-core", "machinery-redis", "redis", "hiredis"],
            "celery": ["celery", "kombu", "redis", "hiredis"],
            "dramatiq": ["dramatiq", "redis", "hiredis"],
            "rq": ["rq", "redis", "hiredis"],
            "arq": ["arq", "redis", "hiredis"],
            "huey": ["huey", "redis", "hiredis"],
            "taskiq": ["taskiq", "taskiq-redis", "redis", "hiredis"],
        }[v.module]

    def available(self, v: Variant) -> str | None:
        try:
            self.info(v, True)
        except RuntimeError as exc:
            return f"not installed here ({exc})"
        return None

    def run_variant(self, v: Variant) -> Row:
        row = Row(v)
        t0 = time.monotonic()
        print(f"== {v.name}", flush=True)
        missing = self.available(v)
        if missing:
            for key, _ in COLUMNS:
                row.cells[key] = NA(f"n/a: {missing}")
            return row
        row.versions = dict(self.info(v, True)["versions"])
        steps: list[tuple[str, Callable[[], None]]] = []

        def enqueue() -> None:
            out = self.driver(v, "enqueue", n=self.args.n, warmup=self.args.warmup)
            row.cells["enqueue"] = out["n"] / out["seconds"]

        def drain_on() -> None:
            # the N tasks just enqueued are the drain's backlog (enqueue failed: prefill again)
            self.drain(v, row, True, prefilled=isinstance(row.cells.get("enqueue"), float))

        def drain_off() -> None:
            if v.results_off:
                row.cells["drain_off"] = NA(f"n/a: {v.results_off}")
                return
            self.drain(v, row, False, prefilled=False)

        def group() -> None:
            if v.module != "machinery":
                row.cells["group"] = NA("n/a")
                return
            out = self.driver(v, "group", n=self.args.n, send_concurrency=self.args.send_concurrency)
            row.cells["group"] = out["n"] / out["seconds"]

        steps = [("enqueue", enqueue), ("drain_on", drain_on), ("drain_off", drain_off), ("group", group)]
        if v.drain_only:
            for key, _ in COLUMNS:
                row.cells[key] = NA(DRAIN_ONLY)
            steps = [("drain_on", drain_on), ("drain_off", drain_off)]
        if v.name in OBSERVABILITY and self.args.pairs > 0:
            plain = plain_machinery(self)

            def paired() -> None:
                try:
                    self.paired_drains(v, plain, row)
                except Exception as exc:
                    print(f"   paired drains: FAILED: {exc}", flush=True)

            steps.append(("paired", paired))
        for key, fn in steps:
            try:
                fn()
            except Exception as exc:
                row.cells[key] = failed(str(exc))
                if key == "drain_on":
                    row.cells.setdefault("rss", failed("drain failed"))
                print(f"   {key}: {row.cells[key]}", flush=True)
                self.clean(v)
            else:
                if key != "enqueue":  # the enqueued tasks are the drain's backlog
                    self.clean(v)
        if v.drain_only:
            print("   " + ", ".join(f"{k}={fmt(row.cells.get(k), k)}" for k in ("drain_on", "drain_off")), flush=True)
            return row
        try:
            self.latency(v, row)
        except Exception as exc:
            for key in ("rt_p50", "rt_p99", "eta_p50", "eta_p99"):
                row.cells.setdefault(key, failed(str(exc)))
        finally:
            self.clean(v)
        for key, api in (("import", False), ("import_api", True)):
            if v.module == "go" or v.name in TRANSPORT_PEERS:
                row.cells[key] = NA("n/a: not a Python package" if v.module == "go" else "n/a: the same package as its Redis row")
                continue
            try:
                row.cells[key] = self.import_time(v, api)
            except Exception as exc:
                row.cells[key] = failed(str(exc))
        print("   " + ", ".join(f"{k}={fmt(row.cells.get(k), k)}" for k, _ in COLUMNS) + f" ({time.monotonic() - t0:.0f}s)", flush=True)
        return row

    # the issue-23 sections ---------------------------------------------------------------------

    def drain_once(self, v: Variant, n: int, *, workers: int = 1, cap: float | None = None,
                   prefill_timeout: float = 300) -> tuple[float, float | None, int, float]:
        """Prefill ``n`` tasks, start ``workers`` worker processes, wait for the n-th task:
        (tasks/s, worker CPU µs per task of the first worker process tree or None when
        several, tasks counted, peak RSS MB of the first worker). Clean state after."""
        try:
            self.driver(v, "prefill", n=n, timeout=prefill_timeout)
            ws = [self.worker(v, True, n) for _ in range(workers)]
            try:
                first, last, done = self.wait_done(ws[0], max(30.0, n / 50), n=n, cap=cap, others=tuple(ws[1:]))
            finally:
                for w in ws:
                    w.stop()
        finally:
            self.clean(v)
        cpu = self.cpu_us(ws[0], done) if workers == 1 else None
        return done / max(last - first, 1e-9), cpu, done, ws[0].peak_kb / 1024

    def run_sweep(self, systems: list[str], cs: list[int]) -> None:
        """Drain a no-op and an I/O-bound (10 ms sleep) task at each concurrency in ``cs``.
        The I/O-bound drain gets min(N, 400 x c) tasks (about 4 s at the ideal c x 100/s).

        Setting by setting (task, then c), every system drains once in turn; machinery and Go
        Machinery (:data:`SWEEP_REPEATED`) then drain ``--sweep-repeats - 1`` more times,
        alternated, and their cell is the median drain (its CPU the median CPU): a drain
        disturbed by the machine (one cell of a full run once read 170 µs of CPU per task
        against 106 in the main table, same worker and setting) then decides no ratio alone."""
        bases = []
        for base in build_variants(self, systems, self.args.arq_python):
            if "BENCH_UNAVAILABLE" in base.env or self.available(base):
                reason = base.env.get("BENCH_UNAVAILABLE") or self.available(base) or ""
                for task in SWEEP_TASKS:
                    self.sweep[(base.name, task)] = {c: NA(f"n/a: {reason}") for c in cs}
                continue
            bases.append(base)
        repeats = max(1, self.args.sweep_repeats)
        for task in SWEEP_TASKS:
            for c in cs:
                n = self.args.n if task == "count" else min(self.args.n, 400 * c)
                runs: dict[str, list[tuple[float, float | None, int]]] = {}
                errors: dict[str, str] = {}
                for rep in range(repeats):
                    for base in bases:
                        if rep and base.name not in SWEEP_REPEATED:
                            continue
                        v = Variant(
                            f"{base.name}-c{c}-{task}", base.module, base.label, python=base.python,
                            env={**base.env, "BENCH_CONCURRENCY": str(c), "BENCH_TASK": task, "BENCH_QUEUE_NAME": base.name},
                            cleanup=base.cleanup,
                        )
                        got: tuple[float, float | None, int] | NA
                        try:
                            rate, cpu, done, _ = self.drain_once(v, n)
                            drained = (rate, cpu, done if done < n else 0)
                            runs.setdefault(base.name, []).append(drained)
                            got = drained
                        except Exception as exc:
                            got = failed(str(exc))
                            errors[base.name] = got
                        shown = got if isinstance(got, NA) else f"{got[0]:,.0f}/s" + (f", {got[1]:.0f} µs CPU/task" if got[1] else "")
                        print(f"   sweep {base.name} {SWEEP_TASKS[task]} c={c}" + (f" ({rep + 1}/{repeats})" if base.name in SWEEP_REPEATED and repeats > 1 else "") + f": {shown}", flush=True)
                for base in bases:
                    cells = self.sweep.setdefault((base.name, task), {})
                    got_runs = runs.get(base.name, [])
                    if not got_runs:
                        cells[c] = NA(errors.get(base.name, "FAILED: no drain"))
                        continue
                    cpus = [r[1] for r in got_runs if r[1] is not None]
                    cells[c] = (statistics.median(r[0] for r in got_runs), statistics.median(cpus) if cpus else None,
                                max(r[2] for r in got_runs))
                    if base.name in SWEEP_REPEATED and repeats > 1:
                        self.sweep_runs.setdefault((base.name, task), {})[c] = [r[0] for r in got_runs]

    def run_procs(self) -> None:
        """machinery (redis), ``-c 8``: N no-op tasks counted in Redis (probe.count_shared) drained
        by one worker process, then by two."""
        base = plain_machinery(self)
        v = Variant("machinery-procs", "machinery", base.label, env={**base.env, "BENCH_TASK": "count_shared"})
        for workers in (1, 2):
            try:
                rate, *_ = self.drain_once(v, self.args.n, workers=workers)
                self.procs[str(workers)] = rate
            except Exception as exc:
                self.procs[str(workers)] = failed(str(exc))
            print(f"   {workers} worker process(es): {fmt(self.procs[str(workers)], 'drain_on')}/s", flush=True)

    def run_scale(self, big: int) -> None:
        """machinery (redis) ``-c 8``: peak worker RSS draining a 10,000-task backlog, then a
        ``big`` one (the whole backlog, no drain cap)."""
        v = plain_machinery(self)
        for n in (10_000, big):
            t0 = time.monotonic()
            try:
                rate, cpu, _, rss = self.drain_once(v, n, cap=0, prefill_timeout=max(300, n / 200))
                self.scale[str(n)] = {"rate": rate, "cpu_us": cpu, "rss": rss, "seconds": time.monotonic() - t0}
            except Exception as exc:
                self.scale[str(n)] = failed(str(exc))
            print(f"   scale {n:,}: {self.scale[str(n)]}", flush=True)

    def run_startup(self, runs: int) -> None:
        """Plugin discovery at start-up: a fresh interpreter that loads the plugin host (every
        installed plugin's hook module), with ``machinery._entrypoints`` reading the entry points
        and with ``importlib.metadata.entry_points(group=...)`` instead, alternated, ``runs`` each;
        and ``import machinery.plugins`` alone (the floor). Keeps ``_entrypoints.py`` honest."""
        codes = dict(STARTUP_CODES)
        out: dict[str, list[float]] = {name: [] for name in codes}
        try:
            for code in codes.values():  # warm the byte-code caches
                subprocess.run([sys.executable, "-c", code], check=True, cwd=self.tmp)
            for i in range(runs):
                for name, code in (STARTUP_CODES if i % 2 == 0 else STARTUP_CODES[::-1]):
                    t0 = time.perf_counter()
                    subprocess.run([sys.executable, "-c", code], check=True, cwd=self.tmp)
                    out[name].append(time.perf_counter() - t0)
        except Exception as exc:
            self.startup = failed(str(exc))
            print(f"   start-up: {self.startup}", flush=True)
            return
        self.startup = {name: sorted(v) for name, v in out.items()}
        print("   start-up: " + ", ".join(f"{n} {pct(v, 50) * 1000:.1f} ms" for n, v in self.startup.items()), flush=True)

    def close(self) -> None:
        self.redis.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- variants -----------------------------------------------------------------------------------


def amqp_cleanup(queue: str, exchange: str, *more_queues: str) -> Callable[[], None]:
    def run() -> None:
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            ch = conn.channel()
            for q in (queue, *more_queues):
                ch.queue_delete(q)
            if exchange:
                ch.exchange_delete(exchange)
        finally:
            conn.close()

    return run


def amqp_reachable() -> str | None:
    try:
        import pika
    except ImportError:
        return "pika not installed here"
    try:
        pika.BlockingConnection(pika.URLParameters(AMQP_URL + "?connection_attempts=1&socket_timeout=2")).close()
    except Exception as exc:
        return f"RabbitMQ not reachable at 127.0.0.1:5672 ({type(exc).__name__})"
    return None


def plain_machinery(bench: Bench) -> Variant:
    """machinery on the bench's Redis, observability plugins disabled (the "machinery" row)."""
    url = bench.redis.url
    return Variant(
        "machinery", "machinery", "machinery (redis)",
        env={"BENCH_BROKER": url, "BENCH_BACKEND": url, **NO_OBSERVABILITY},
        off_env={"BENCH_BACKEND": "memory://"},
    )


def build_variants(bench: Bench, names: list[str], arq_python: str) -> list[Variant]:
    url = bench.redis.url
    out: list[Variant] = []
    for name in names:
        if name == "floor":
            out.append(Variant("floor", "floor", "floor: redis-py LPUSH + BRPOP", results_off="no results to switch off"))
        elif name == "machinery":
            out.append(plain_machinery(bench))
        elif name == "machinery-affinity":  # the sweep's: the worker's threads kept on one CPU
            plain = plain_machinery(bench)
            out.append(Variant(
                name, "machinery", "machinery (redis) --cpu-affinity auto",
                env={**plain.env, "BENCH_CPU_AFFINITY": "auto"}, off_env=plain.off_env,
            ))  # fmt: skip
        elif name in OBSERVABILITY:
            plugin = OBSERVABILITY[name]
            others = ",".join(p for p in OBSERVABILITY.values() if p != plugin)
            env = {"BENCH_BROKER": url, "BENCH_BACKEND": url, "MACHINERY_DISABLE_PLUGINS": others}
            if plugin == "opentelemetry":
                env["BENCH_OTEL_SDK"] = "1"
            elif plugin == "prometheus":
                env["MACHINERY_METRICS_PORT"] = "0"
            v = Variant(
                name, "machinery", f"machinery (redis) + machinery-{plugin}",
                env=env, off_env={"BENCH_BACKEND": "memory://"},
            )
            import importlib.util

            if importlib.util.find_spec(f"machinery_{plugin}") is None:
                v.env["BENCH_UNAVAILABLE"] = f"machinery-{plugin} is not installed"
            out.append(v)
        elif name in POOLS:
            pool, task = POOLS[name]
            what = "CPU-bound task (~5 ms of Python)" if task == "cpu" else "no-op task counted in Redis"
            out.append(Variant(
                name, "machinery", f"machinery (redis) --pool {pool} -c 2, {what}",
                env={"BENCH_BROKER": url, "BENCH_BACKEND": url, "BENCH_POOL": pool, "BENCH_CONCURRENCY": "2",
                     "BENCH_TASK": task, **NO_OBSERVABILITY},
                off_env={"BENCH_BACKEND": "memory://"}, drain_only=True,
            ))
        elif name == "machinery-sqlite":
            db = bench.tmp / "machinery.db"

            def rm_db(db: Path = db) -> None:
                for suffix in ("", "-wal", "-shm"):
                    Path(str(db) + suffix).unlink(missing_ok=True)

            out.append(Variant(
                "machinery-sqlite", "machinery", "machinery (embedded sqlite://)",
                env={"BENCH_BROKER": f"sqlite:///{db}", "BENCH_BACKEND": f"sqlite:///{db}", **NO_OBSERVABILITY},
                off_env={"BENCH_BACKEND": "memory://"}, cleanup=rm_db,
            ))
        elif name == "machinery-amqp":
            reason = amqp_reachable()
            queue = f"bench_machinery_amqp_{bench.token}"
            exchange = f"bench_exchange_{bench.token}"
            options = {"amqp": {"exchange": exchange, "binding_key": queue}}
            v = Variant(
                "machinery-amqp", "machinery", "machinery (RabbitMQ broker, redis backend)",
                env={"BENCH_BROKER": AMQP_URL, "BENCH_BACKEND": url, "BENCH_OPTIONS": json.dumps(options), **NO_OBSERVABILITY},
                off_env={"BENCH_BACKEND": "memory://"}, cleanup=None if reason else amqp_cleanup(queue, exchange),
            )
            if reason:
                v.env["BENCH_UNAVAILABLE"] = reason
            out.append(v)
        elif name in GO:
            env = {"BROKER": url, "RESULT_BACKEND": url, "NO_UNIX_SIGNALS": "false"}
            label, cleanup = "Go Machinery v2 (redis)", None
            reason = None
            if name == "go-machinery-amqp":
                reason = amqp_reachable()
                exchange = f"bench_go_exchange_{bench.token}"
                env.update(BROKER=AMQP_URL, AMQP_EXCHANGE=exchange, AMQP_EXCHANGE_TYPE="direct")
                label = "Go Machinery v2 (RabbitMQ broker, redis backend)"
                cleanup = None if reason else amqp_cleanup(f"bench_{name.replace('-', '_')}_{bench.token}", exchange)
            v = Variant(name, "go", label, env=env, results_off="Go Machinery v2 has no switch", cleanup=cleanup)
            try:
                bench.gobench()
            except RuntimeError as exc:
                reason = str(exc)
            if reason:
                v.env["BENCH_UNAVAILABLE"] = reason
            out.append(v)
        elif name in ("celery-amqp", "dramatiq-amqp", "celery-amqp-confirm", "dramatiq-amqp-confirm"):
            reason = amqp_reachable()
            peer = name.split("-")[0]
            queue = f"bench_{name.replace('-', '_')}_{bench.token}"
            extra = [f"{queue}.DQ", f"{queue}.XQ"] if peer == "dramatiq" else []
            confirm = name.endswith("-confirm")
            v = Variant(
                name, peer, f"{peer} (RabbitMQ broker, redis backend{', publisher confirms' if confirm else ''})",
                env={"BENCH_BROKER": AMQP_URL, "BENCH_CONFIRM": "1" if confirm else "0"},
                cleanup=None if reason else amqp_cleanup(queue, queue if peer == "celery" else "", *extra),
            )
            if reason:
                v.env["BENCH_UNAVAILABLE"] = reason
            out.append(v)
        elif name == "huey-sqlite":
            db = bench.tmp / "huey.db"

            def rm_huey(db: Path = db) -> None:
                for suffix in ("", "-wal", "-shm"):
                    Path(str(db) + suffix).unlink(missing_ok=True)

            out.append(Variant("huey-sqlite", "huey", "huey (SqliteHuey)", env={"BENCH_SQLITE": str(db)}, cleanup=rm_huey))
        elif name == "arq":
            out.append(Variant("arq", "arq", "arq", python=arq_python))
        elif name in PEERS:
            out.append(Variant(name, name, name))
        else:
            raise SystemExit(f"unknown system {name!r}; known: {', '.join(ALL)}")
    return out


# -- output -------------------------------------------------------------------------------------


def pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        raise ValueError("no values")
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def fmt(value: Any, key: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, NA):
        return "n/a" if value.startswith("n/a") else "FAILED"
    if key in ("enqueue", "group", "drain_on", "drain_off", "cpu_us"):
        return f"{value:,.0f}"
    if key in ("rss",):
        return f"{value:.1f}"
    if key in ("import", "import_api"):
        return f"{value:.1f}"
    return f"{value:.2f}"


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "ram": ram, "os": platform.platform(), "python": platform.python_version()}


def numeric(row: Row, key: str) -> float | None:
    v = row.cells.get(key)
    return v if isinstance(v, float) else None


def targets(rows: list[Row]) -> list[tuple[str, str, str]]:
    by = {r.variant.name: r for r in rows}
    m = by.get("machinery")
    if m is None:
        return []
    peers = [r for r in rows if r.variant.name in PEERS]
    out: list[tuple[str, str, str]] = []

    def best(key: str) -> tuple[float, str] | None:
        vals = [(numeric(r, key), r.variant.name) for r in peers]
        vals2 = [(x, n) for x, n in vals if x is not None]
        return max(vals2) if vals2 else None

    def ok(cond: bool) -> str:
        return "met" if cond else "NOT met"

    md, bp = numeric(m, "drain_on"), best("drain_on")
    if md and bp:
        r = md / bp[0]
        out.append(("drain ≥ 1.5x fastest peer", f"{r:.2f}x ({md:,.0f} vs {bp[1]} {bp[0]:,.0f}/s)", ok(r >= 1.5)))
    floor = by.get("floor")
    fd = numeric(floor, "drain_on") if floor else None
    if md and fd:
        r = md / fd
        out.append(("drain ≥ 40% of the LPUSH/BRPOP floor", f"{r:.0%} ({md:,.0f} vs {fd:,.0f}/s)", ok(r >= 0.4)))
    me, mg, be = numeric(m, "enqueue"), numeric(m, "group"), best("enqueue")
    if be:
        if me:
            r = me / be[0]
            out.append(("enqueue ≥ 2x fastest peer (one call per task)", f"{r:.2f}x ({me:,.0f} vs {be[1]} {be[0]:,.0f}/s)", ok(r >= 2)))
        if mg:
            r = mg / be[0]
            out.append(("enqueue ≥ 2x fastest peer (as one group)", f"{r:.2f}x ({mg:,.0f} vs {be[1]} {be[0]:,.0f}/s)", ok(r >= 2)))
    for name in OBSERVABILITY:
        if name not in by:
            continue
        label = f"drain with {by[name].variant.label.split(' + ')[-1]} ≥ 85% of without"
        pairs = by[name].paired
        od = numeric(by[name], "drain_on")
        if pairs:
            # the median of the paired ratios (each pair ran back to back); the table's single
            # drains are given beside it
            ratios = sorted(w / wo for w, wo in pairs)
            r = pct(ratios, 50)
            each = ", ".join(f"{w:,.0f}/{wo:,.0f}" for w, wo in pairs)
            single = f"; single drains {od:,.0f} vs {md:,.0f}/s" if md and od else ""
            out.append((label, f"{r:.0%} (median of {len(pairs)} paired drains, with/without: {each}{single})", ok(r >= 0.85)))
        elif md and od:
            r = od / md
            out.append((label, f"{r:.0%} ({od:,.0f} vs {md:,.0f}/s)", ok(r >= 0.85)))
    for proc, thr, want, label in (
        ("machinery-processes-cpu", "machinery-threads-cpu", 1.7, "CPU-bound drain, processes -c 2 ≥ 1.7x threads -c 2"),
        ("machinery-processes-c2", "machinery-threads-c2", 0.75, "no-op drain, processes -c 2 within 25% of threads -c 2"),
    ):
        pd = numeric(by[proc], "drain_on") if proc in by else None
        td = numeric(by[thr], "drain_on") if thr in by else None
        if pd and td:
            out.append((label, f"{pd / td:.2f}x ({pd:,.0f} vs {td:,.0f}/s)", ok(pd / td >= want)))
    p50, p99 = numeric(m, "rt_p50"), numeric(m, "rt_p99")
    if p50 is not None:
        out.append(("round trip p50 ≤ 1 ms", f"{p50:.2f} ms", ok(p50 <= 1)))
    if p99 is not None:
        out.append(("round trip p99 ≤ 5 ms", f"{p99:.2f} ms", ok(p99 <= 5)))
    e99 = numeric(m, "eta_p99")
    if e99 is not None:
        out.append(("ETA lateness p99 ≤ 20 ms", f"{e99:.2f} ms", ok(e99 <= 20)))
    rss = numeric(m, "rss")
    prss = [(numeric(r, "rss"), r.variant.name) for r in peers if numeric(r, "rss") is not None]
    if rss is not None and prss:
        low = min(prss)
        out.append(("worker RSS below every peer", f"{rss:.1f} MB vs lowest peer {low[1]} {low[0]:.1f} MB", ok(rss < low[0])))
    imp = numeric(m, "import")
    if imp is not None:
        out.append(("`import machinery` ≤ 30 ms", f"{imp:.1f} ms", ok(imp <= 30)))
    api = numeric(m, "import_api")
    if api is not None:  # not a target of its own: what a producer pays on first use
        out.append(("(for reference) `import machinery; machinery.Server`", f"{api:.1f} ms", "info"))
    return out


def sweep_rate(bench: Bench, system: str, task: str, c: int) -> float | None:
    cell = bench.sweep.get((system, task), {}).get(c)
    return cell[0] if isinstance(cell, tuple) else None


def ratio_target(label: str, mine: float | None, theirs: float | None, want: float, what: str) -> tuple[str, str, str] | None:
    if mine is None or theirs is None:
        return None
    r = mine / theirs
    return (label, f"{r:.2f}x ({mine:,.0f} vs {what} {theirs:,.0f})", "met" if r >= want else "NOT met")


def issue23_targets(bench: Bench, rows: list[Row]) -> list[tuple[str, str, str]]:
    """The targets of issue 23, each met / NOT met with its ratio (or "not measured")."""
    by = {r.variant.name: r for r in rows}
    out: list[tuple[str, str, str] | None] = []

    def missing(label: str, why: str) -> None:
        out.append((label, why, "not measured"))

    for c in SWEEP_C:
        label = f"Redis drain ≥ Go Machinery's at c = {c}"
        t = ratio_target(label, sweep_rate(bench, "machinery", "count", c), sweep_rate(bench, "go-machinery", "count", c), 1.0, "Go")
        out.append(t) if t else missing(label, "sweep of machinery and go-machinery not run")
    t = ratio_target("Redis drain at c = 64 ≥ 90% of c = 8", sweep_rate(bench, "machinery", "count", 64),
                     sweep_rate(bench, "machinery", "count", 8), 0.9, "c = 8:")
    out.append(t) if t else missing("Redis drain at c = 64 ≥ 90% of c = 8", "sweep not run")
    io64 = sweep_rate(bench, "machinery", "sleep_count", 64)
    if io64 is not None:
        out.append(("I/O-bound (10 ms) drain at c = 64 ≥ 80% of the ideal 6,400/s", f"{io64 / 6400:.0%} ({io64:,.0f}/s)",
                    "met" if io64 >= 0.8 * 6400 else "NOT met"))
        t = ratio_target("I/O-bound (10 ms) drain at c = 64 ≥ Go Machinery's", io64,
                         sweep_rate(bench, "go-machinery", "sleep_count", 64), 1.0, "Go")
        if t:
            out.append(t)
    else:
        missing("I/O-bound (10 ms) drain at c = 64", "sweep not run")
    # the same targets with the worker's threads kept on one CPU (an option, off by default)
    for c in SWEEP_C:
        t = ratio_target(f"Redis drain ≥ Go Machinery's at c = {c}, `--cpu-affinity auto`",
                         sweep_rate(bench, "machinery-affinity", "count", c), sweep_rate(bench, "go-machinery", "count", c), 1.0, "Go")
        if t:
            out.append(t)
    io64a = sweep_rate(bench, "machinery-affinity", "sleep_count", 64)
    if io64a is not None:
        out.append(("I/O-bound (10 ms) drain at c = 64 ≥ 80% of the ideal 6,400/s, `--cpu-affinity auto`",
                    f"{io64a / 6400:.0%} ({io64a:,.0f}/s)", "met" if io64a >= 0.8 * 6400 else "NOT met"))
    m = by.get("machinery")
    cpu = numeric(m, "cpu_us") if m else None
    if cpu is not None:
        out.append(("worker CPU per no-op task ≤ 200 µs (-c 8 drain, results on)", f"{cpu:.0f} µs", "met" if cpu <= 200 else "NOT met"))
    else:
        missing("worker CPU per no-op task ≤ 200 µs", "machinery drain not run")
    floor = by.get("floor")
    t = ratio_target("enqueue ≥ 85% of the raw LPUSH rate", numeric(m, "enqueue") if m else None,
                     numeric(floor, "enqueue") if floor else None, 0.85, "LPUSH")
    out.append(t) if t else missing("enqueue ≥ 85% of the raw LPUSH rate", "machinery and floor rows needed")
    ma = by.get("machinery-amqp")
    amqp_peers = [(numeric(by[n], k), n) for n in ("celery-amqp", "dramatiq-amqp") if n in by for k in ("enqueue",)]
    amqp_peers = [(x, n) for x, n in amqp_peers if x is not None]
    if ma and numeric(ma, "enqueue") and amqp_peers:
        best = max(amqp_peers)
        t = ratio_target("RabbitMQ enqueue (publisher confirms) ≥ 2x best of Celery/Dramatiq (their defaults: neither confirms)",
                         numeric(ma, "enqueue"), best[0], 2.0, best[1])
        out.append(t)
        confirming = [(numeric(by[n], "enqueue"), n) for n in ("celery-amqp-confirm", "dramatiq-amqp-confirm") if n in by]
        confirming = [(x, n) for x, n in confirming if x is not None]
        if confirming:
            best = max(confirming)
            t = ratio_target("(for reference) the same against Celery/Dramatiq with publisher confirms on",
                             numeric(ma, "enqueue"), best[0], 2.0, best[1])
            if t:
                out.append((t[0], t[1], "info"))
    else:
        missing("RabbitMQ enqueue ≥ 2x best of Celery/Dramatiq", "machinery-amqp and celery-amqp/dramatiq-amqp rows needed")
    drains = [(numeric(by[n], "drain_on"), n) for n in ("celery-amqp", "dramatiq-amqp") if n in by]
    drains = [(x, n) for x, n in drains if x is not None]
    if ma and numeric(ma, "drain_on") and drains:
        best = max(drains)
        out.append(ratio_target("RabbitMQ drain ≥ 1.5x best of Celery/Dramatiq", numeric(ma, "drain_on"), best[0], 1.5, best[1]))
    else:
        missing("RabbitMQ drain ≥ 1.5x best of Celery/Dramatiq", "rows needed")
    ga = by.get("go-machinery-amqp")
    t = ratio_target("RabbitMQ drain ≥ Go Machinery's", numeric(ma, "drain_on") if ma else None,
                     numeric(ga, "drain_on") if ga else None, 1.0, "Go")
    out.append(t) if t else missing("RabbitMQ drain ≥ Go Machinery's", "machinery-amqp and go-machinery-amqp rows needed")
    ms, hs = by.get("machinery-sqlite"), by.get("huey-sqlite")
    p50 = numeric(ms, "rt_p50") if ms else None
    if p50 is not None:
        out.append(("embedded sqlite round trip p50 ≤ 2 ms (cross-process)", f"{p50:.2f} ms", "met" if p50 <= 2 else "NOT met"))
    else:
        missing("embedded sqlite round trip p50 ≤ 2 ms", "machinery-sqlite row needed")
    t = ratio_target("embedded sqlite drain ≥ 2x Huey's SQLite storage", numeric(ms, "drain_on") if ms else None,
                     numeric(hs, "drain_on") if hs else None, 2.0, "huey")
    out.append(t) if t else missing("embedded sqlite drain ≥ 2x Huey's SQLite storage", "machinery-sqlite and huey-sqlite rows needed")
    small, big = bench.scale.get("10000"), [v for k, v in bench.scale.items() if k != "10000"]
    if isinstance(small, dict) and big and isinstance(big[0], dict):
        d = big[0]["rss"] - small["rss"]
        out.append(("1M backlog: peak worker RSS within 10 MB of a 10k backlog", f"{d:+.1f} MB ({big[0]['rss']:.1f} vs {small['rss']:.1f} MB)",
                    "met" if d <= 10 else "NOT met"))
    else:
        missing("1M backlog: peak worker RSS within 10 MB of a 10k backlog", "not run (--no-scale, --quick or --smoke)")
    return [t for t in out if t is not None]


def render_sections(bench: Bench, rows: list[Row]) -> list[str]:
    """The issue-23 sections: sweep, Go peer, other transports, processes and scale, targets."""
    a = bench.args
    by = {r.variant.name: r for r in rows}
    lines: list[str] = []
    if bench.sweep:
        cs = sorted({c for cells in bench.sweep.values() for c in cells})
        lines += ["", "## Concurrency sweep (drain, tasks/s; one worker process; results on, in this Redis)", "",
                  "| system | task | " + " | ".join(f"c = {c}" for c in cs) + f" | c = {cs[-1]} / c = 8 |",
                  "| --- | --- | " + " | ".join("---:" for _ in cs) + " | ---: |"]
        stars = False
        for (system, task), cells in bench.sweep.items():
            vals = []
            for c in cs:
                cell = cells.get(c)
                if isinstance(cell, tuple):
                    vals.append(f"{cell[0]:,.0f}" + ("*" if cell[2] else ""))
                    stars = stars or bool(cell[2])
                else:
                    vals.append(fmt(cell, "drain_on"))
            r8, rl = sweep_rate(bench, system, task, 8), sweep_rate(bench, system, task, cs[-1])
            rel = f"{rl / r8:.0%}" if r8 and rl and cs[-1] != 8 else "-"
            label = {"go-machinery": "Go Machinery v2", "go-machinery-amqp": "Go Machinery v2 (RabbitMQ)",
                     "machinery-affinity": "machinery `--cpu-affinity auto`",
                     "machinery-amqp": "machinery (RabbitMQ)"}.get(system, system)
            lines.append(f"| {label} | {SWEEP_TASKS[task]} | " + " | ".join(vals) + f" | {rel} |")
        if stars:
            lines.append(f"\\* measured over the tasks done {a.drain_cap:g} s after the first started.")
        cpu_rows = [(sys_, cells) for (sys_, task), cells in bench.sweep.items() if task == "count"]
        if cpu_rows:
            lines += ["", "Worker CPU per no-op task (µs: user + system time of the worker's process tree from its first task "
                      "to its last, over the tasks; /proc ticks of 10 ms, so use N ≥ 10,000), same drains:", "",
                      "| system | " + " | ".join(f"c = {c}" for c in cs) + " |", "| --- | " + " | ".join("---:" for _ in cs) + " |"]
            for system, cells in cpu_rows:
                vals = [f"{cell[1]:,.0f}" if isinstance(cell, tuple) and cell[1] is not None else "-" for cell in (cells.get(c) for c in cs)]
                lines.append(f"| {system} | " + " | ".join(vals) + " |")
        notes = sorted({f"- {s}, {SWEEP_TASKS[t]}, c = {c}: {cell}" for (s, t), cells in bench.sweep.items()
                        for c, cell in cells.items() if isinstance(cell, NA) and cell.startswith("FAILED")})
        if notes:
            lines += ["", *notes]
        lines += ["", "Each cell: min(N, 400 x c) tasks for the I/O-bound one, N for the no-op; a fresh worker per drain; "
                  "setting by setting, the systems drain in turn"
                  + (f", and machinery's and Go Machinery's cells are the median of {a.sweep_repeats} drains, alternated "
                     "(each drain is listed under \"Go Machinery v2 beside machinery\")" if bench.sweep_runs else "") + ". "
                  "Settings: machinery `worker -c C` (threads); Go Machinery `NewWorker(tag, C)`; Celery `--pool threads -c C` "
                  "(prefork with 32 or 64 processes on 2 cores is not a setting anyone runs); Dramatiq `--processes 1 --threads C`; "
                  "Taskiq `--workers 1 --max-async-tasks C` and arq `max_jobs = C` (their I/O task awaits `asyncio.sleep`); "
                  "Huey `-k thread -w C`. RQ (one job at a time per forked work horse) has no concurrency knob in one worker and is left out. "
                  "machinery's worker runs with its defaults: it takes C messages, plus one read ahead while its tasks are quick (`--prefetch`); on RabbitMQ (results in Redis) its `basic.qos` is 4 x that, and Go Machinery's `AMQP_PREFETCH_COUNT` is C. "
                  "The `--cpu-affinity auto` row is the same worker with one option set: its threads kept on one CPU, which it picks "
                  "(docs/worker.md; off by default, since the tasks' C code that releases the GIL and their child processes are then kept there too)."]
    go, mach = by.get("go-machinery"), by.get("machinery")
    if go is not None and mach is not None:
        lines += ["", "## Go Machinery v2 beside machinery (Redis broker and backend, -c 8)", "",
                  "| system | enqueue/s | drain/s | worker CPU µs/task | round trip p50 ms | p99 ms | worker peak RSS MB |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in (mach, go):
            lines.append(f"| {r.variant.label} | " + " | ".join(fmt(r.cells.get(k), k) for k in ("enqueue", "drain_on", "cpu_us", "rt_p50", "rt_p99", "rss")) + " |")
        pairs = []
        for broker, gname, mname in (("Redis", "go-machinery", "machinery"), ("Redis, `--cpu-affinity auto`", "go-machinery", "machinery-affinity"),
                                     ("RabbitMQ", "go-machinery-amqp", "machinery-amqp")):
            for task in SWEEP_TASKS:
                for c in SWEEP_C:
                    g, m = sweep_rate(bench, gname, task, c), sweep_rate(bench, mname, task, c)
                    if g and m:
                        each = [bench.sweep_runs.get((name, task), {}).get(c) for name in (gname, mname)]
                        runs = " / ".join(", ".join(f"{x:,.0f}" for x in r) for r in each) if all(each) else "-"
                        pairs.append(f"| {broker} | {c} | {SWEEP_TASKS[task]} | {g:,.0f} | {m:,.0f} | {m / g:.2f} | {runs} |")
        if pairs:
            repeats = a.sweep_repeats if bench.sweep_runs else 1
            lines += ["", "Drains of the sweep (tasks/s; results on, in Redis"
                      + (f"; on Redis, each cell the median of {repeats} drains, Go's and machinery's alternated" if repeats > 1 else "")
                      + "):", "",
                      "| broker | concurrency | task | Go Machinery v2 | machinery | ratio | each drain (Go / machinery) |",
                      "| --- | ---: | --- | ---: | ---: | ---: | --- |", *pairs]
    trows = [by[n] for n in (*AMQP_ROWS, *SQLITE_ROWS) if n in by]
    if trows:
        confirms = {"machinery-amqp": "yes (always)", "go-machinery-amqp": "yes (always)", "celery-amqp": "no (kombu's default)",
                    "dramatiq-amqp": "no (its default)", "celery-amqp-confirm": "yes (`confirm_publish=True`)",
                    "dramatiq-amqp-confirm": "yes (`confirm_delivery=True`)", "machinery-sqlite": "-", "huey-sqlite": "-"}
        lines += ["", "## Other transports: RabbitMQ and SQLite, beside their peers (-c 8)", "",
                  "| system | publisher confirms | enqueue/s | drain/s (results) | drain/s (no results) | round trip p50 ms | p99 ms | worker peak RSS MB |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in trows:
            lines.append(f"| {r.variant.label} | {confirms[r.variant.name]} | "
                         + " | ".join(fmt(r.cells.get(k), k) for k in ("enqueue", "drain_on", "drain_off", "rt_p50", "rt_p99", "rss")) + " |")
        lines += ["", "RabbitMQ rows keep results in this Redis. The SQLite rows use one database file per system in the "
                  "run's temporary directory (results in the same file); both are cross-process (producer and worker are "
                  "separate processes)."]
    if bench.procs or bench.scale:
        lines += ["", "## Processes and scale (machinery, redis, -c 8)", ""]
        if bench.procs:
            one, two = bench.procs.get("1"), bench.procs.get("2")
            ratio = f" ({two / one:.2f}x)" if isinstance(one, float) and isinstance(two, float) else ""
            lines.append(f"- N = {a.n:,} no-op tasks counted in Redis (`probe.count_shared`): one worker process "
                         f"{fmt(one, 'drain_on')}/s, two worker processes {fmt(two, 'drain_on')}/s{ratio} on {os.cpu_count()} cores.")
        for n, cell in bench.scale.items():
            if isinstance(cell, dict):
                cpu = f", {cell['cpu_us']:.0f} µs CPU/task" if cell.get("cpu_us") else ""
                lines.append(f"- backlog of {int(n):,} tasks drained to the end by one worker: peak RSS {cell['rss']:.1f} MB, "
                             f"{cell['rate']:,.0f}/s{cpu} ({cell['seconds']:.0f} s with the prefill)")
            else:
                lines.append(f"- backlog of {int(n):,}: {cell}")
        if not bench.scale:
            lines.append("- the 1,000,000-task backlog (about 2 minutes; skipped by `--no-scale`, `--quick`, `--smoke`): not run here.")
    if isinstance(bench.startup, NA):
        lines += ["", "## Plugin discovery at start-up", "", f"- {bench.startup}"]
    elif bench.startup:
        med = {n: pct(v, 50) * 1000 for n, v in bench.startup.items()}
        runs = len(next(iter(bench.startup.values())))
        lines += ["", "## Plugin discovery at start-up (fresh interpreter, this environment's plugins)", "",
                  "| process | median ms | p10 ms | p90 ms |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {label} | {med[n]:.1f} | {pct(bench.startup[n], 10) * 1000:.1f} | {pct(bench.startup[n], 90) * 1000:.1f} |"
                  for n, label in STARTUP_LABELS.items()]
        lines += ["", f"{runs} runs of each, alternated. `machinery._entrypoints` saves "
                  f"{med['importlib'] - med['entrypoints']:.1f} ms per process that resolves a URL, as long as nothing "
                  "else imports `importlib.metadata` (redis-py, boto3, pymongo, nats-py and google-cloud-pubsub do; "
                  "pika, pymemcache and the sqlite:// and memory:// transports do not). See docs/performance.md."]
    tg = issue23_targets(bench, rows)
    if tg:
        lines += ["", "## Targets of issue 23 (ratios from this run)", "", "| target | measured | |", "| --- | --- | --- |"]
        lines += [f"| {t} | {m} | {s} |" for t, m, s in tg]
    return lines


def render(bench: Bench, rows: list[Row], wall: float, plot: str | None) -> str:
    a = bench.args
    mach = machine()
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `{' '.join(['python', 'benchmarks/run.py', *a.argv])}` (`nox -s bench`) on "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; whole run {wall:.0f} s.",
        "",
        f"- Machine: {mach['cpu']}, {mach['cores']} cores, {mach['ram']} RAM; {mach['os']}",
        f"- Python {mach['python']}; redis-server {bench.redis.version} (private instance, `--save '' --appendonly no`, "
        "same machine, loopback)",
        f"- N = {a.n:,} tasks for enqueue and drain; {a.rt} sequential round trips after {a.rt_warmup} warm-up ones; "
        f"{a.eta} ETA tasks due over {a.eta_spread:g} s; import time = best of {a.import_runs} fresh interpreters, "
        "for `import <package>` alone and followed by the first use of its main producer-side name "
        f"({', '.join(f'`{k}.{v}`' for k, v in API_NAMES.items())}), which lazily-loading packages "
        "(machinery, celery) only pay then.",
        "",
        "| system | " + " | ".join(h for _, h in COLUMNS) + " |",
        "| --- | " + " | ".join("---:" for _ in COLUMNS) + " |",
    ]
    for r in rows:
        cells = (fmt(r.cells.get(k), k) + ("*" if k in r.capped else "") for k, _ in COLUMNS)
        lines.append(f"| {r.variant.label} | " + " | ".join(cells) + " |")
    capped = [f"{r.variant.label} ({', '.join(f'{k}: {c:,} tasks' for k, c in r.capped.items())})" for r in rows if r.capped]
    if capped:
        lines += ["", f"\\* still draining {a.drain_cap:g} s after its first task started, so measured over the tasks "
                  "done by then (same backlog of N, same rate definition): " + "; ".join(capped) + "."]
    tg = targets(rows)
    if tg:
        lines += ["", "## Targets (machinery on Redis, ratios from this run)", "", "| target | measured | |", "| --- | --- | --- |"]
        lines += [f"| {t} | {m} | {s} |" for t, m, s in tg]
    lines += render_sections(bench, rows)
    notes = []
    for r in rows:
        for k, h in COLUMNS:
            v = r.cells.get(k)
            if isinstance(v, NA) and v not in ("n/a", DRAIN_ONLY):
                notes.append(f"- {r.variant.label}, {h}: {v}")
    if notes:
        lines += ["", "## n/a and failures", "", *sorted(set(notes))]
    lines += ["", "## How each system ran", ""]
    for r in rows:
        v = r.variant
        note = bench._info.get((v.name, True), {}).get("note", "")
        vers = ", ".join(f"{k} {val}" for k, val in r.versions.items())
        lines.append(f"- **{v.label}**: {note}{'; ' if note and vers else ''}{vers}")
    lines += [
        "",
        "Method: every system uses the same private Redis, the same N, a no-op task returning its int",
        "argument, and a clean server (`FLUSHALL`) between runs. *enqueue*: one producer process, one",
        "call per task, timed after a warm-up; machinery's *group enqueue* sends the N tasks as one",
        "`Group` (PENDING states and messages pipelined). *drain*: the N tasks are queued first, then one",
        "worker is started; the rate is N over the time from the first task's start to the N-th task's",
        "end, both recorded inside the worker (worker start-up is excluded for every system).",
        "*results off* uses each system's switch (Celery `ignore_result`, Dramatiq without the Results",
        "middleware, RQ `result_ttl=0`, arq `keep_result=0`, Huey `results=False`, Taskiq without a result",
        "backend; machinery has no switch, so its worker uses the in-process `memory://` backend: states",
        "are still recorded, in the worker's memory). *round trip*: send one task and block on its result",
        "with the system's own API (poll intervals set to 1 ms where the API polls). *ETA*: tasks due",
        "from 0.5 s to 0.5 + spread s from now record `start - due` in a Redis list (negative: started",
        "before its ETA). *RSS*: peak of the",
        "sum of VmRSS over the worker's process tree during the drain with results (the probe task",
        "records its progress in this Redis, so every worker, the sqlite:// one included, has redis-py",
        "loaded: 20 to 22 MB of each figure on this machine). The floor is raw",
        "redis-py: LPUSH per message and one BRPOP per message in one consumer process.",
        "*worker CPU µs/task*: user + system CPU time of the worker's process tree between the first",
        "task seen started and the N-th done (from /proc, 10 ms ticks), over the tasks.",
        "*Observability* rows: machinery (redis) with one plugin enabled (the other rows run with both",
        "disabled); the set-up is in its line above. Their 85% targets are the median ratio of",
        f"{a.pairs} further drains with and without the plugin, alternated (each pair back to back), besides",
        "the single drains of the table.",
    ]
    if plot:
        lines += ["", f"![results]({plot})"]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [
        ("drain_on", "drain, tasks/s (results on)"),
        ("enqueue", "enqueue, tasks/s (one call each)"),
        ("rt_p50", "round trip p50, ms (lower is better)"),
        ("eta_p99", "ETA lateness p99, ms (lower is better)"),
        ("rss", "worker peak RSS, MB (lower is better)"),
        ("import_api", "import + first use of the main API, ms (lower is better)"),
    ]
    fig, axes = plt.subplots(3, 2, figsize=(12, 11))
    for ax, (key, title) in zip(axes.flat, panels):
        names, vals, colors = [], [], []
        for r in rows:
            x = numeric(r, key)
            if x is None:
                continue
            names.append(r.variant.name)
            vals.append(x)
            colors.append("#d62728" if r.variant.name.startswith("machinery") else ("#7f7f7f" if r.variant.name == "floor" else "#1f77b4"))
        ax.barh(names[::-1], vals[::-1], color=colors[::-1])
        ax.set_title(title, fontsize=10)
        for i, x in enumerate(vals[::-1]):
            ax.text(x, i, f" {x:,.0f}" if x >= 100 else f" {x:.2f}", va="center", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.margins(x=0.2)
    fig.suptitle("machinery vs Go Machinery and Python task queues (same machine, same run; Redis unless named)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def compile_all(pythons: set[str]) -> None:
    """Write the byte-code caches of every environment (and of this repository) up front, so
    that no system's first worker compiles its imports during a measurement."""
    root = HERE.parent
    sources = [str(p) for p in (root / "core" / "src", *root.glob("plugins/machinery-*/src"), SYSTEMS_DIR) if p.is_dir()]
    code = "import compileall, sys, sysconfig; compileall.compile_dir(sysconfig.get_paths()['purelib'], quiet=1, workers=0)"
    for py in pythons:
        subprocess.run([py, "-c", code], check=False, capture_output=True)
        subprocess.run([py, "-m", "compileall", "-q", "-j", "0", *sources], check=False, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny N, for CI: checks the harness, not the speed")
    p.add_argument("--quick", action="store_true",
                   help="tiny N, few systems (floor, machinery, Go Machinery; sweep at c = 1, 8): the whole harness end to end "
                   "in well under a minute; writes to a temporary file unless --out is given")
    p.add_argument("--sweep-systems", default=",".join(SWEEP_SYSTEMS),
                   help=f"systems of the concurrency sweep ('' for none), a subset of: {', '.join(SWEEP_SYSTEMS)}")
    p.add_argument("--sweep-c", default=",".join(map(str, SWEEP_C)), help="concurrencies of the sweep")
    p.add_argument("--sweep-repeats", type=int, default=3,
                   help=f"drains per sweep cell of {' and '.join(SWEEP_REPEATED)}, alternated; the cell is their median (--quick: 1)")
    p.add_argument("--no-procs", action="store_true", help="skip the one vs two worker processes drain")
    p.add_argument("--no-scale", action="store_true", help="skip the --scale-n backlog (peak RSS vs 10k; about 2 minutes)")
    p.add_argument("--scale-n", type=int, default=1_000_000, help="the backlog of the scale section")
    p.add_argument("--systems", default=",".join(ALL), help=f"comma-separated subset of: {', '.join(ALL)}")
    p.add_argument("--n", type=int, default=10_000, help="tasks for enqueue and drain")
    p.add_argument("--rt", type=int, default=500, help="round trips")
    p.add_argument("--eta", type=int, default=200, help="ETA tasks")
    p.add_argument("--eta-spread", type=float, default=5.0, help="seconds the ETAs are spread over")
    p.add_argument("--out", default="", help="Markdown file to write (default benchmarks/RESULTS.md; --quick: a temporary file)")
    p.add_argument("--plot", default=str(HERE / "results.png"), help="PNG to write ('' for none)")
    p.add_argument("--json", default="", help="also write the raw numbers here")
    p.add_argument("--pairs", type=int, default=7,
                   help="extra drains without/with each observability plugin, alternated, for its overhead target (0: none)")
    p.add_argument("--drain-cap", type=float, default=45.0,
                   help="seconds after which a drain is measured over the tasks done so far (0: never)")
    p.add_argument("--startup-runs", type=int, default=40,
                   help="fresh interpreters per reader for the plugin discovery section (--smoke/--quick: 3)")
    p.add_argument("--arq-python", default=os.environ.get("BENCH_ARQ_PYTHON", sys.executable),
                   help="interpreter of an environment with arq (arq 0.28 needs redis-py < 6)")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    args.warmup, args.rt_warmup, args.import_runs = 100, 20, 5
    args.send_concurrency = 0
    args.eta_grace = 10.0
    if args.smoke:
        args.n, args.rt, args.eta, args.eta_spread = min(args.n, 300), min(args.rt, 30), min(args.eta, 20), min(args.eta_spread, 1.0)
        args.warmup, args.rt_warmup, args.import_runs, args.eta_grace = 10, 3, 2, 5.0
        args.pairs = min(args.pairs, 1)
    if args.quick:
        args.n, args.rt, args.eta, args.eta_spread = min(args.n, 300), min(args.rt, 30), min(args.eta, 20), min(args.eta_spread, 1.0)
        args.warmup, args.rt_warmup, args.import_runs, args.eta_grace, args.pairs = 10, 3, 2, 5.0, 0
        args.sweep_repeats = 1
        if "--systems" not in args.argv:
            args.systems = "floor,machinery,go-machinery"
        if "--sweep-systems" not in args.argv:
            args.sweep_systems = "machinery,go-machinery"
        if "--sweep-c" not in args.argv:
            args.sweep_c = "1,8"
        if not args.out:
            args.out = str(Path(tempfile.gettempdir()) / "machinery-bench-quick.md")
            args.plot = ""
    args.out = args.out or str(HERE / "RESULTS.md")
    args.drain_timeout = max(30.0, args.n / 50)
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    sweep_names = [s.strip() for s in args.sweep_systems.split(",") if s.strip()]
    unknown = [s for s in sweep_names if s not in SWEEP_SYSTEMS]
    if unknown:
        raise SystemExit(f"--sweep-systems: unknown {', '.join(unknown)}; known: {', '.join(SWEEP_SYSTEMS)}")
    sweep_cs = [int(c) for c in args.sweep_c.split(",") if c.strip()]
    t0 = time.monotonic()
    if not (args.smoke or args.quick):
        compile_all({sys.executable, args.arq_python} if "arq" in names else {sys.executable})
    bench = Bench(args)
    try:
        variants = build_variants(bench, names, args.arq_python)
        rows = []
        for v in variants:
            if "BENCH_UNAVAILABLE" in v.env:
                row = Row(v)
                for key, _ in COLUMNS:
                    row.cells[key] = NA(f"n/a: {v.env['BENCH_UNAVAILABLE']}")
                rows.append(row)
                continue
            rows.append(bench.run_variant(v))
        if sweep_names and not args.smoke:
            print(f"== concurrency sweep: {', '.join(sweep_names)} at c = {', '.join(map(str, sweep_cs))}", flush=True)
            bench.run_sweep(sweep_names, sweep_cs)
        if not args.no_procs and not args.smoke:
            print("== one vs two worker processes", flush=True)
            bench.run_procs()
        startup_runs = 3 if (args.smoke or args.quick) else args.startup_runs
        if startup_runs > 0:  # --startup-runs 0 leaves the section out
            print("== plugin discovery at start-up: machinery._entrypoints vs importlib.metadata", flush=True)
            bench.run_startup(startup_runs)
        if not (args.no_scale or args.smoke or args.quick):
            print(f"== scale: 10,000 and {args.scale_n:,} queued tasks", flush=True)
            bench.run_scale(args.scale_n)
        wall = time.monotonic() - t0
        plot_path = Path(args.plot) if args.plot else None
        plotted = plot_path is not None and plot(rows, plot_path)
        rel = os.path.relpath(plot_path, Path(args.out).resolve().parent) if plotted and plot_path else None
        text = render(bench, rows, wall, rel)
        Path(args.out).write_text(text)
        if args.json:
            raw: dict[str, Any] = {
                r.variant.name: {k: (v if not isinstance(v, NA) else str(v)) for k, v in r.cells.items()} for r in rows
            }
            raw["_sweep"] = {f"{s} {t}": {str(c): (list(x) if isinstance(x, tuple) else str(x)) for c, x in cells.items()}
                             for (s, t), cells in bench.sweep.items()}
            raw["_sweep_runs"] = {f"{s} {t}": {str(c): x for c, x in cells.items()} for (s, t), cells in bench.sweep_runs.items()}
            raw["_procs"] = {k: (x if isinstance(x, float) else str(x)) for k, x in bench.procs.items()}
            raw["_startup"] = bench.startup if isinstance(bench.startup, dict) else str(bench.startup)
            raw["_scale"] = {k: (x if isinstance(x, dict) else str(x)) for k, x in bench.scale.items()}
            Path(args.json).write_text(json.dumps(raw, indent=2))
        print(text)
        bad = [r.variant.name for r in rows if any(isinstance(v, NA) and v.startswith("FAILED") for v in r.cells.values())]
        bad += [f"sweep {s} {t}" for (s, t), cells in bench.sweep.items() if any(isinstance(c, NA) and c.startswith("FAILED") for c in cells.values())]
        bad += [f"{k} worker process(es)" for k, c in bench.procs.items() if isinstance(c, NA)]
        bad += ["plugin discovery at start-up"] if isinstance(bench.startup, NA) else []
        if (args.smoke or args.quick) and bad:
            print(f"FAILED: {', '.join(bad)}", file=sys.stderr)
            return 1
        return 0
    finally:
        bench.close()


if __name__ == "__main__":
    sys.exit(main())
