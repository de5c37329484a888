"""The fault suite: :class:`FaultConformance`, run by every broker plugin against its real server.

Three scenarios, each measured and written down as figures:

* **SIGKILL under load** (:meth:`FaultConformance.test_sigkill_workers_under_load`): a few
  hundred tasks, two ``machinery worker`` subprocesses (the real command line), one of them
  SIGKILLed every ``kill_every`` seconds and started again. Every execution is counted in an
  append-only file (``O_APPEND`` lines written by the task itself, independent of the broker and
  the backend): sent, completed at least once, lost, duplicated (completed more than once), and
  the recovery time (from a kill to the moment a task the dead worker was running starts again
  elsewhere).
* **Broker restart** (:meth:`FaultConformance.test_broker_restart`): a private server of the
  plugin's own (the ``restartable_server`` fixture, a :class:`RestartableServer`) is stopped with
  SIGTERM and later with SIGKILL while a producer sends; the producer must get a clear
  :class:`~machinery.errors.MachineryError` during the outage, the worker must reconnect, and
  nothing accepted may be lost when the server persists what it accepted.
* **Malformed messages** (:meth:`FaultConformance.test_fuzz_malformed_messages`): a seeded
  generator (:func:`malformed_bodies`) makes ``fuzz_bodies`` (10,000) bodies: garbage bytes,
  truncated JSON, wrong types per field, huge values, unknown task names, bad argument types,
  lone surrogates, empty UUIDs, nested junk. They are published raw onto the worker's queue;
  every one must be dead-lettered or refused with a reason, the worker must stay alive (and log
  no unexpected error), and a control task sent afterwards must still be served.

Use it like the conformance suite::

    class TestRedisFaults(FaultConformance):
        fault_label = "redis"

        @pytest.fixture
        def broker_oracle(self, ...): ...          # as for BrokerConformance

        @pytest.fixture
        def restartable_server(self, tmp_path):     # optional: a private server
            ...

Figures: when ``MACHINERY_FAULTS_FIGURES`` names a directory, each scenario writes one JSON file
there; ``python -m machinery.testing.faults report DIR --write docs/reliability.md`` merges them
into ``docs/reliability-figures.json`` and regenerates the table of ``docs/reliability.md``
(``nox -s faults`` does both).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from machinery.errors import DecodeError, MachineryError
from machinery.signature import Arg, Signature, decode_signature
from machinery.testing._guard import SuiteBase
from machinery.testing._support import SubprocessWorker, wait_until
from machinery.wire.fields import SIGNATURE

if TYPE_CHECKING:
    from machinery.config import Config
    from machinery.interfaces import Broker
    from machinery.server import Server
    from machinery.testing.oracle import BrokerOracle

__all__ = [
    "FIGURES_ENV",
    "CliWorker",
    "FaultConformance",
    "FuzzBody",
    "RestartableServer",
    "main",
    "malformed_bodies",
    "render_table",
]

#: The environment variable naming the directory the scenarios write their figures to.
FIGURES_ENV = "MACHINERY_FAULTS_FIGURES"

#: Task names the fuzz may address that are registered and harmless whatever their arguments
#: (no file paths, no sleeps, no retries): a decodable message naming one must run to a final state.
_SAFE_TASKS = ("add", "multiply", "echo", "raise_error", "record_error", "now")

#: Worker log lines that show a message handled by accident, not on purpose: an exception that
#: escaped to the worker's catch-all, or a redelivery although the backend is healthy (a message
#: that can never be stored comes back for ever).
_UNEXPECTED = re.compile(r"unexpected error|giving the message back for redelivery|could not settle", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Workers: the real command line
# ---------------------------------------------------------------------------------------------


class CliWorker(SubprocessWorker):
    """``python -m machinery worker --app machinery.testing.app:worker_server``: a real worker
    process, configured through the ``MACHINERY_TEST_*`` variables of
    :func:`machinery.testing.app.config_to_env`.

    :param config: the configuration (URLs, queue, transport options).
    :param log_path: file receiving the worker's stdout and stderr.
    :param concurrency: task threads.
    """

    def __init__(self, config: Config, log_path: Path, concurrency: int = 2) -> None:
        from machinery.testing.app import config_to_env

        self.name = f"machinery worker ({log_path.name})"
        self.log_path = log_path
        env = {**os.environ, **config_to_env(config, concurrency), "PYTHONUNBUFFERED": "1"}
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "machinery",
                "worker",
                "--app",
                "machinery.testing.app:worker_server",
                "--concurrency",
                str(concurrency),
                "--consumer-tag",
                f"fault-{log_path.stem}",
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


# ---------------------------------------------------------------------------------------------
# Private servers the plugin can restart
# ---------------------------------------------------------------------------------------------


class RestartableServer(ABC):
    """A private server of the plugin under test, which the restart scenario stops and starts.

    Never the shared server other tests use. Return one (started) from the ``restartable_server``
    fixture of your :class:`FaultConformance` subclass.
    """

    #: What it is, for the figures table (e.g. ``"redis, private, AOF appendfsync always"``).
    description: ClassVar[str] = ""
    #: True when what the server accepted survives a stop (an AOF, a durable queue on disk):
    #: the scenario then asserts that nothing accepted is lost.
    persistent: ClassVar[bool] = True

    @property
    @abstractmethod
    def broker_url(self) -> str:
        """The broker URL of this server."""

    @property
    def backend_url(self) -> str | None:
        """A result backend URL on this server, or None (the suite's default backend is used)."""
        return None

    @abstractmethod
    def start(self) -> None:
        """Start (or start again) and return once the server accepts clients."""

    @abstractmethod
    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server with ``sig`` (SIGTERM: clean shutdown, SIGKILL: crash) and wait for it."""


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def write_figures(label: str, scenario: str, figures: Mapping[str, Any]) -> None:
    """Write one scenario's figures to ``$MACHINERY_FAULTS_FIGURES/<label>--<scenario>.json`` (when set)."""
    out = os.environ.get(FIGURES_ENV)
    print(f"fault figures [{label} / {scenario}]: {json.dumps(figures, sort_keys=True)}")
    if not out:
        return
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{label}--{scenario}").strip("-").lower()
    data = {"configuration": label, "scenario": scenario, "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    data.update(figures)
    (path / f"{slug}.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def render_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The figures as a Markdown table, one row per configuration and scenario."""
    order = {"sigkill": 0, "restart": 1, "fuzz": 2}
    lines = [
        "| configuration | scenario | sent | completed | lost | duplicated | recovery (s, max) "
        "| bad inputs tried | notes |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in sorted(rows, key=lambda r: (str(r["configuration"]), order.get(str(r["scenario"]), 9))):
        lines.append(
            "| "
            + " | ".join(
                _fmt(r.get(k))
                for k in (
                    "configuration",
                    "scenario",
                    "sent",
                    "completed",
                    "lost",
                    "duplicated",
                    "recovery_s",
                    "bad_inputs",
                    "notes",
                )
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


_BEGIN = "<!-- faults-table:begin (generated by `python -m machinery.testing.faults report`) -->"
_END = "<!-- faults-table:end -->"


def _report(args: argparse.Namespace) -> int:
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    store = Path(args.store) if args.store else None
    if store is not None and store.exists():
        for row in json.loads(store.read_text()):
            merged[(row["configuration"], row["scenario"])] = row
    for d in args.figures:
        for f in sorted(Path(d).glob("*.json")):
            row = json.loads(f.read_text())
            merged[(row["configuration"], row["scenario"])] = row
    rows = list(merged.values())
    table = render_table(rows)
    print(table, end="")
    if store is not None and args.write:
        store.write_text(json.dumps(sorted(rows, key=lambda r: (r["configuration"], r["scenario"])), indent=1) + "\n")
    if args.write:
        doc = Path(args.write)
        text = doc.read_text()
        if _BEGIN not in text or _END not in text:
            print(f"{doc}: no table markers ({_BEGIN} ... {_END})", file=sys.stderr)
            return 1
        head, _, rest = text.partition(_BEGIN)
        _, _, tail = rest.partition(_END)
        doc.write_text(f"{head}{_BEGIN}\n{table}{_END}{tail}")
        print(f"wrote the table into {doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m machinery.testing.faults report DIR... [--write DOC] [--store JSON]``."""
    parser = argparse.ArgumentParser(prog="python -m machinery.testing.faults")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="print (and write) the figures table")
    rep.add_argument("figures", nargs="*", help="directories of figure files written by a fault run")
    rep.add_argument("--write", metavar="DOC", help="replace the table between the markers of this Markdown file")
    rep.add_argument(
        "--store",
        metavar="JSON",
        default="docs/reliability-figures.json",
        help="all figures so far, merged with the new ones (default: docs/reliability-figures.json)",
    )
    args = parser.parse_args(argv)
    return _report(args)


# ---------------------------------------------------------------------------------------------
# The malformed-message generator
# ---------------------------------------------------------------------------------------------


@dataclass
class FuzzBody:
    """One generated message body and what the generator meant by it.

    :param kind: the family (``garbage``, ``truncated``, ``wrong_type``...).
    :param body: the bytes published.
    :param uuid: a UUID unique to this body when it is a well-formed one (else "").
    """

    kind: str
    body: bytes
    uuid: str = ""


def _good(rng: random.Random, uid: str, name: str | None = None) -> dict[str, Any]:
    return {
        "UUID": uid,
        "Name": name or rng.choice(_SAFE_TASKS),
        "RoutingKey": "",
        "ETA": None,
        "GroupUUID": "",
        "GroupTaskCount": 0,
        "Args": [{"Name": "", "Type": "int64", "Value": rng.randint(-5, 5)}],
        "Headers": {},
        "Priority": 0,
        "Immutable": False,
        "RetryCount": 0,
        "RetryTimeout": 0,
        "OnSuccess": None,
        "OnError": None,
        "ChordCallback": None,
        "BrokerMessageGroupId": "",
        "SQSReceiptHandle": "",
        "StopTaskDeletionOnError": False,
        "IgnoreWhenTaskNotRegistered": False,
    }


# Go's Signature fields (the codec's list) a fuzzed body gets junk in; SQSReceiptHandle is SQS bookkeeping.
_FIELDS = tuple(f for f in SIGNATURE.names() if f != SIGNATURE.sqs_receipt_handle)
_JUNK: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1.5,
    2**70,
    -(2**63) - 1,
    1e308,
    "",
    "x",
    "\ud800",
    [],
    [1, "a"],
    {},
    {"a": [None]},
    "NaN",
    "2020-13-45T99:99:99Z",
)
_BAD_ARGS: tuple[Any, ...] = (
    {"Type": "int64", "Value": "abc"},
    {"Type": "int8", "Value": 300},
    {"Type": "uint", "Value": -1},
    {"Type": "float64", "Value": "NaN"},
    {"Type": "bool", "Value": "yes"},
    {"Type": "[]int64", "Value": "x"},
    {"Type": "[]string", "Value": [1, 2]},
    {"Type": "[]byte", "Value": "%%%not base64"},
    {"Type": "complex128", "Value": 1},
    {"Type": "", "Value": 1},
    {"Type": 5, "Value": 1},
    {"Value": 1},
    {"Type": "string"},
    {"Type": "string", "Value": "\udc80lone"},
    {"Type": "int64", "Value": 2**80},
    {"Type": "float32", "Value": 1e300},
    "not an object",
    None,
    [1, 2],
)


def _fresh_uuid(i: int) -> str:
    return f"fuzz_{i}_{uuid.uuid4().hex[:8]}"


def malformed_bodies(n: int, seed: int = 17) -> list[FuzzBody]:
    """``n`` message bodies a worker must survive, reproducible from ``seed``.

    Families (roughly equal shares): random bytes; truncated Go signatures; JSON that is not
    an object; a signature with one field of a wrong type; bad argument types for a registered
    task; unknown task names (half asking to be dropped when not registered); lone surrogates
    in names, UUIDs, arguments and headers; an empty or missing UUID; nested junk (bad
    callbacks, deep nesting); huge values (long names, many arguments, large strings); and
    well-formed tasks with impossible but decodable values. The bodies a well-formed message
    has get a UUID of their own (:attr:`FuzzBody.uuid`).
    """
    rng = random.Random(seed)
    out: list[FuzzBody] = []

    def dump(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=rng.random() < 0.5, allow_nan=True).encode("utf-8", "surrogatepass")

    for i in range(n):
        family = i % 12
        uid = _fresh_uuid(i)
        if family == 0:
            out.append(FuzzBody("garbage", rng.randbytes(rng.randint(0, 300))))
        elif family == 1:
            full = dump(_good(rng, uid))
            out.append(FuzzBody("truncated", full[: rng.randint(0, len(full) - 1)]))
        elif family == 2:
            value = rng.choice(([1, 2], "task", 42, None, True, 3.5, [{"UUID": uid}], ""))
            out.append(FuzzBody("not_object", json.dumps(value).encode()))
        elif family == 3:
            sig = _good(rng, uid)
            sig[rng.choice(_FIELDS)] = rng.choice(_JUNK)
            out.append(FuzzBody("wrong_type", dump(sig), uid))
        elif family == 4:
            sig = _good(rng, uid, name=rng.choice(("add", "echo", "multiply")))
            sig["Args"] = [rng.choice(_BAD_ARGS) for _ in range(rng.randint(1, 3))]
            out.append(FuzzBody("bad_arg", dump(sig), uid))
        elif family == 5:
            sig = _good(rng, uid, name=f"no_such_task_{rng.randint(0, 10**6)}")
            sig["IgnoreWhenTaskNotRegistered"] = rng.random() < 0.5
            out.append(FuzzBody("unknown_name", dump(sig), uid))
        elif family == 6:
            sig = _good(rng, uid, name="echo")
            where = rng.choice(("Name", "UUID", "arg", "header", "group"))
            if where == "Name":
                sig["Name"] = "echo\ud800"
            elif where == "UUID":
                sig["UUID"] = uid + "\ud800"
            elif where == "arg":
                sig["Args"] = [{"Name": "", "Type": "string", "Value": "a\udfffb"}]
            elif where == "header":
                sig["Headers"] = {"k\ud800": "v", "v": "\udc00"}
            else:
                sig["GroupUUID"] = "\ud800"
            out.append(FuzzBody("lone_surrogate", dump(sig), uid))
        elif family == 7:
            sig = _good(rng, uid)
            if rng.random() < 0.7:
                sig["UUID"] = ""
            else:
                del sig["UUID"]
            out.append(FuzzBody("empty_uuid", dump(sig)))
        elif family == 8:
            sig = _good(rng, uid, name="add")
            junk = rng.choice(
                (
                    [{"Name": 5}],
                    [None],
                    "callback",
                    [{"UUID": "x", "Name": "add", "Args": "junk"}],
                    {"UUID": 1},
                    json.loads("[" * 50 + "]" * 50),
                )
            )
            sig[rng.choice(("OnSuccess", "OnError", "ChordCallback", "Headers"))] = junk
            out.append(FuzzBody("nested_junk", dump(sig), uid))
        elif family == 9:
            # nesting deeper than any decoder recurses
            depth = rng.choice((600, 2000, 5000))
            out.append(FuzzBody("deep_nesting", b'{"UUID":"' + uid.encode() + b'","Name":"add","Args":' + b"[" * depth))
        elif family == 10:
            sig = _good(rng, uid, name=rng.choice(("echo", "add")))
            what = rng.choice(("name", "args", "string", "header"))
            big = rng.random() < 0.02  # a few really large ones (beyond what some brokers take)
            if what == "name":
                sig["Name"] = "n" * (300_000 if big else rng.choice((1000, 5000)))
            elif what == "args":
                sig["Args"] = [{"Name": "", "Type": "int64", "Value": 1}] * (20_000 if big else 300)
            elif what == "string":
                sig["Args"] = [{"Name": "", "Type": "string", "Value": "v" * (300_000 if big else 4000)}]
            else:
                sig["Headers"] = {f"h{k}": "x" * 100 for k in range(3000 if big else 30)}
            out.append(FuzzBody("huge", dump(sig), uid))
        else:
            sig = _good(rng, uid, name=rng.choice(("add", "multiply")))
            sig["Args"] = [{"Name": "", "Type": "int64", "Value": 2**62} for _ in range(rng.randint(1, 4))]
            sig["Priority"] = rng.choice((0, 9, 255))
            sig["ETA"] = rng.choice((None, "2001-01-01T00:00:00Z"))
            out.append(FuzzBody("odd_values", dump(sig), uid))
    return out


#: A lone surrogate in a body: a ``\\udXXX`` escape, or its raw (CESU-8) bytes, which Python's
#: ``json.loads`` accepts from bytes.
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}|\xed[\xa0-\xbf]")


def _expected(fb: FuzzBody) -> str:
    """What a correct worker does with ``fb``: ``dead`` (not a task), ``run`` (a registered task
    with a sound UUID: a final state must be stored), ``unknown`` (not registered here),
    ``refuse`` (no UUID: must never run, nothing stored under the empty key), ``settle`` (a lone
    surrogate: dead-lettered, or run with it replaced as Go's decoder does, but never stuck),
    by the decoder of this version."""
    if fb.kind == "empty_uuid":
        return "refuse"
    if fb.kind == "lone_surrogate" or _SURROGATE.search(fb.body):
        return "settle"
    try:
        sig = decode_signature(fb.body)
    except DecodeError:
        return "dead"
    if sig.name not in _SAFE_TASKS:
        return "unknown"
    return "run" if sig.uuid == fb.uuid else "refuse"


def _cycles(fb: FuzzBody) -> bool:
    """True when a correct worker gives ``fb`` back for another worker for as long as none knows
    its name (Go's way with unknown names): it decodes, has a UUID, names no task registered
    here (a lone surrogate read as U+FFFD included) and does not ask to be dropped."""
    try:
        sig = decode_signature(fb.body)
    except DecodeError:
        return False
    return bool(sig.uuid) and sig.name not in _SAFE_TASKS and not sig.ignore_when_task_not_registered


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------


def _work(path: Path, index: int, seconds: float) -> Signature:
    """A ``fault_work`` task (see :func:`machinery.testing.app.fault_work`)."""
    return Signature("fault_work", [Arg("string", str(path)), Arg("int64", index), Arg("float64", float(seconds))])


@dataclass
class _Runs:
    """The parsed append-only record of :func:`machinery.testing.app.fault_work`."""

    starts: dict[int, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))
    dones: dict[int, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def read(cls, path: Path) -> _Runs:
        runs = cls()
        if not path.exists():
            return runs
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 4:
                continue
            kind, idx, pid, at = parts
            (runs.starts if kind == "S" else runs.dones)[int(idx)].append((int(pid), float(at)))
        return runs

    def completed(self) -> set[int]:
        return {i for i, d in self.dones.items() if d}


class FaultConformance(SuiteBase):
    """Faults every broker must survive: worker SIGKILLs, a broker restart, malformed messages.

    Needs the fixtures ``url`` and ``broker_oracle`` (as :class:`~machinery.testing.BrokerConformance`),
    and optionally ``restartable_server``. Set :attr:`fault_label` to name the configuration in
    the figures.
    """

    _machinery_suite = True

    #: The configuration's name in the figures table (e.g. ``"redis (shared, no persistence)"``).
    fault_label: ClassVar[str] = ""
    #: Tasks sent in the SIGKILL scenario, and how long each one works.
    sigkill_tasks: ClassVar[int] = 400
    sigkill_task_seconds: ClassVar[float] = 0.1
    #: Seconds between two SIGKILLs, and how many at most.
    kill_every: ClassVar[float] = 2.5
    max_kills: ClassVar[int] = 5
    #: The redelivery timeout in effect with your ``transport_options`` (None: the broker class's).
    redelivery_timeout: ClassVar[float | None] = None
    #: Malformed bodies published in the fuzz scenario, their seed, and bodies per publish batch.
    fuzz_bodies: ClassVar[int] = 10_000
    fuzz_seed: ClassVar[int] = 17
    fuzz_batch: ClassVar[int] = 200
    #: Seconds the worker gets to work through the fuzz bodies.
    fuzz_timeout: ClassVar[float] = 120.0
    #: Seconds the oracle may take per count (slow counting oracles poll less often).
    oracle_interval: ClassVar[float] = 0.5

    # -- fixtures -------------------------------------------------------------------------------

    @pytest.fixture
    def fault_workers(self, machinery_config: Config, tmp_path: Path) -> Iterator[Callable[..., CliWorker]]:
        """Start ``machinery worker`` subprocesses: ``fault_workers(concurrency=2, config=None, ready=True)``."""
        started: list[CliWorker] = []

        def start(concurrency: int = 2, config: Config | None = None, ready: bool = True) -> CliWorker:
            w = CliWorker(config or machinery_config, tmp_path / f"cli-worker-{len(started)}.log", concurrency)
            started.append(w)
            if ready:
                w.wait_ready()
            return w

        yield start
        for w in started:
            try:
                w.stop()
            finally:
                out = w.output()
                if out:
                    tail = "\n".join(line[:300] for line in out[-20000:].splitlines()[-40:])
                    print(f"----- {w.name} -----\n{tail}")

    @pytest.fixture
    def restartable_server(self) -> RestartableServer | None:
        """A private, restartable server of the plugin (override it); None skips the restart scenario."""
        return None

    @pytest.fixture
    def fault_broker(self, machinery_server: Server) -> Broker:
        """The producer's broker."""
        return machinery_server.broker

    # -- helpers --------------------------------------------------------------------------------

    def label(self, broker_url: str) -> str:
        """The configuration's name in the figures."""
        if self.fault_label:
            return self.fault_label
        from machinery.plugins import scheme_of

        return scheme_of(broker_url)

    def effective_redelivery_timeout(self, broker: Broker) -> float:
        """How long a dead worker's messages may take to come back."""
        return float(self.redelivery_timeout or type(broker).redelivery_timeout)

    def push_raw(self, broker: Broker, queue: str, bodies: Sequence[bytes]) -> list[str | None]:
        """Publish ``bodies`` unchanged onto ``queue`` through the broker's own publish path, in
        batches; a batch the broker refuses is retried one body at a time.

        :returns: per body, None when published, else the reason the broker refused it.
        """
        out: list[str | None] = []
        for start in range(0, len(bodies), self.fuzz_batch):
            chunk = bodies[start : start + self.fuzz_batch]
            items = [
                (b, Signature("fuzz", routing_key=queue, uuid=f"fuzz_raw_{start + k}")) for k, b in enumerate(chunk)
            ]
            try:
                broker.publish_many(items)
                out.extend([None] * len(chunk))
                continue
            except MachineryError:
                pass
            for body, sig in items:
                try:
                    broker.publish(body, sig)
                    out.append(None)
                except MachineryError as exc:
                    assert str(exc), f"{type(exc).__name__} without a message"
                    out.append(f"{type(exc).__name__}: {exc}")
        return out

    def send_work(self, server: Server, path: Path, indices: Sequence[int], seconds: float) -> list[str]:
        """Send ``fault_work`` tasks; their UUIDs."""
        uuids = []
        for i in indices:
            uuids.append(server.send_task(_work(path, i, seconds)).task_uuid)
        return uuids

    # -- (a) SIGKILL under load -----------------------------------------------------------------

    @pytest.mark.slow
    @pytest.mark.machinery_subprocess
    def test_sigkill_workers_under_load(
        self,
        fault_workers: Callable[..., CliWorker],
        machinery_server: Server,
        broker_url: str,
        tmp_path: Path,
    ) -> None:
        """Two workers, one SIGKILLed every few seconds and restarted: every task completes at least
        once (none lost where the broker redelivers unacknowledged messages); duplicates and the
        recovery time are measured."""
        if self.process_local:
            pytest.skip("the transport lives inside one process: nothing to SIGKILL")
        broker = machinery_server.broker
        record = tmp_path / "runs.log"
        n = self.sigkill_tasks
        workers = [fault_workers(), fault_workers()]
        uuids = self.send_work(machinery_server, record, range(n), self.sigkill_task_seconds)
        sent_at = time.monotonic()
        kills: list[tuple[int, float]] = []  # (pid, wall time of the kill)
        redelivery = self.effective_redelivery_timeout(broker)
        deadline = sent_at + n * self.sigkill_task_seconds + 60 + 2 * redelivery
        next_kill = time.monotonic() + self.kill_every
        while time.monotonic() < deadline:
            done = _Runs.read(record).completed()
            if len(done) == n:
                break
            if len(kills) < self.max_kills and time.monotonic() >= next_kill and len(done) < n * 0.9:
                victim = len(kills) % 2
                pid = workers[victim].pid
                workers[victim].kill()
                kills.append((pid, time.time()))
                workers[victim] = fault_workers(ready=False)
                next_kill = time.monotonic() + self.kill_every
            time.sleep(0.1)
        runs = _Runs.read(record)
        completed = runs.completed()
        lost = sorted(set(range(n)) - completed)
        duplicated = sorted(i for i, d in runs.dones.items() if len(d) > 1)
        recoveries = self._recoveries(runs, kills)
        states = Counter(
            (s.state if s is not None else "MISSING") for s in (machinery_server.backend.get_state(u) for u in uuids)
        )
        alive = [w.alive() for w in workers]
        write_figures(
            self.label(broker_url),
            "sigkill",
            {
                "sent": n,
                "completed": len(completed),
                "lost": len(lost),
                "duplicated": len(duplicated),
                "recovery_s": max(recoveries) if recoveries else None,
                "notes": (
                    f"{len(kills)} SIGKILLs every {self.kill_every:g}s, 2 workers x 2 threads, "
                    f"{self.sigkill_task_seconds:g}s tasks; redelivery timeout {redelivery:g}s; "
                    f"recovery median {statistics.median(recoveries):.1f}s"
                    if recoveries
                    else f"{len(kills)} SIGKILLs every {self.kill_every:g}s; no task was in flight at a kill"
                ),
            },
        )
        assert kills, "no worker was killed (the tasks finished before the first kill: send more)"
        assert all(alive), "a worker that was not killed died"
        if type(broker).redelivers_unacked:
            assert not lost, f"{len(lost)} of {n} tasks never completed: {lost[:20]}"
            assert states.get("SUCCESS", 0) == n, f"final states: {dict(states)}"

    @staticmethod
    def _recoveries(runs: _Runs, kills: Sequence[tuple[int, float]]) -> list[float]:
        """Per task a killed worker was running: seconds from the kill to its next start elsewhere."""
        out = []
        for pid, at in kills:
            for idx, starts in runs.starts.items():
                mine = [t for p, t in starts if p == pid and t <= at]
                finished = any(p == pid for p, _ in runs.dones.get(idx, ()))
                if not mine or finished:
                    continue
                later = [t for p, t in starts if p != pid and t > at]
                if later:
                    out.append(min(later) - at)
        return out

    # -- (b) broker restart ---------------------------------------------------------------------

    @pytest.mark.slow
    @pytest.mark.machinery_subprocess
    def test_broker_restart(
        self,
        restartable_server: RestartableServer | None,
        fault_workers: Callable[..., CliWorker],
        machinery_config: Config,
        tmp_path: Path,
    ) -> None:
        """The broker is stopped (SIGTERM, later SIGKILL) while a producer sends: the producer gets
        a clear MachineryError, the worker reconnects, nothing accepted is lost where the server
        persists what it accepted."""
        from machinery.server import Server

        srv = restartable_server
        if srv is None:
            pytest.skip(f"{type(self).__name__} has no private server to restart (restartable_server fixture)")
        cfg = machinery_config.replace(
            broker=srv.broker_url, result_backend=srv.backend_url or machinery_config.result_backend
        )
        record = tmp_path / "runs.log"
        worker = fault_workers(config=cfg)
        producer = Server(cfg)
        accepted: list[int] = []
        accepted_at: dict[int, float] = {}
        refused: list[tuple[int, BaseException, str, float]] = []
        stop = threading.Event()

        def produce() -> None:
            i = 0
            while not stop.is_set():
                try:
                    producer.send_task(_work(record, i, 0.005))
                    accepted.append(i)
                    accepted_at[i] = time.time()
                except Exception as exc:  # noqa: BLE001 - every refusal is checked below
                    refused.append((i, exc, str(exc), time.time()))
                    time.sleep(0.05)
                i += 1
                time.sleep(0.01)

        t = threading.Thread(target=produce, daemon=True)
        outages: list[tuple[str, float, float]] = []
        try:
            t.start()
            for sig in (signal.SIGTERM, signal.SIGKILL):
                time.sleep(2.0)
                down = time.time()
                srv.stop(sig)
                time.sleep(1.5)
                srv.start()
                outages.append((signal.Signals(sig).name, down, time.time()))
            # go on until a few tasks were accepted after the last restart (or 30 s passed)
            back = outages[-1][2]
            until = time.monotonic() + 30
            time.sleep(2.0)
            while time.monotonic() < until and sum(1 for a in list(accepted_at.values()) if a > back) < 5:
                time.sleep(0.2)
        finally:
            stop.set()
            t.join(60)
        last_up = outages[-1][2]
        want = set(accepted)
        try:
            wait_until(
                lambda: want <= _Runs.read(record).completed(),
                60 + 2 * self.effective_redelivery_timeout(producer.broker),
                what="the accepted tasks to run",
            )
        except AssertionError:
            pass
        runs = _Runs.read(record)
        completed = runs.completed() & want
        lost = sorted(want - completed)
        after = [i for i in accepted if accepted_at[i] > last_up]
        after_restart_done = bool(after) and all(i in completed for i in after)
        recovery = min((t for i in runs.dones for _, t in runs.dones[i] if t > last_up), default=None)
        producer.close()
        kinds = Counter(type(exc).__name__ for _, exc, _, _ in refused)
        write_figures(
            f"{self.label(srv.broker_url).partition(' (')[0]} ({srv.description})",
            "restart",
            {
                "sent": len(accepted) + len(refused),
                "completed": len(completed),
                "lost": len(lost),
                "duplicated": sum(1 for i in completed if len(runs.dones[i]) > 1),
                "recovery_s": (recovery - last_up) if recovery else None,
                "notes": (
                    f"accepted {len(accepted)}, refused during the outages {len(refused)} "
                    f"({', '.join(f'{k} x{v}' for k, v in kinds.items()) or 'none'}); "
                    "SIGTERM then SIGKILL, 1.5 s down each"
                    + ("" if srv.persistent else "; the server keeps nothing across a restart: loss expected")
                ),
            },
        )
        assert worker.alive(), "the worker died when the broker went away"
        for _, exc, message, _ in refused:
            assert isinstance(exc, MachineryError), (
                f"the producer got {type(exc).__name__}: {message} (not a MachineryError)"
            )
            assert message, f"{type(exc).__name__} without a message"
        assert after, "the producer could not send for 30 s after the broker came back"
        assert after_restart_done, (
            f"the worker did not carry on: {sum(1 for i in after if i not in completed)} of {len(after)} tasks "
            "accepted after the restart never ran"
        )
        if srv.persistent:
            assert not lost, f"{len(lost)} accepted tasks lost across the restarts: {lost[:20]}"

    # -- (c) malformed messages -----------------------------------------------------------------

    @pytest.mark.slow
    @pytest.mark.machinery_subprocess
    def test_fuzz_malformed_messages(
        self,
        fault_workers: Callable[..., CliWorker],
        machinery_server: Server,
        machinery_queue: str,
        broker_oracle: BrokerOracle,
        broker_url: str,
    ) -> None:
        """Thousands of malformed bodies: every one dead-lettered or refused with a reason, the
        worker alive and free of unexpected errors, and a control task served afterwards."""
        if self.process_local:
            pytest.skip("the transport lives inside one process: no worker process to fuzz")
        broker = machinery_server.broker
        bodies = malformed_bodies(self.fuzz_bodies, self.fuzz_seed)
        expected = [_expected(fb) for fb in bodies]
        worker = fault_workers(concurrency=4)
        t0 = time.monotonic()
        refusals = self.push_raw(broker, machinery_queue, [fb.body for fb in bodies])
        pushed = time.monotonic() - t0
        control = machinery_server.send_task(Signature("add", [Arg("int64", 2), Arg("int64", 3)]))
        deadline = time.monotonic() + self.fuzz_timeout
        try:
            served = control.get(timeout=self.fuzz_timeout) == 5
        except MachineryError:
            served = False
        accepted = [fb for fb, r in zip(bodies, refusals, strict=True) if r is None]
        requeued = sum(1 for fb, r in zip(bodies, refusals, strict=True) if r is None and _cycles(fb))

        def drained() -> bool:
            return broker_oracle.message_count(machinery_queue) <= requeued

        try:
            left = max(deadline - time.monotonic(), 1.0)
            wait_until(drained, left, interval=self.oracle_interval, what="the queue to drain")
            stuck = 0
        except AssertionError:
            stuck = broker_oracle.message_count(machinery_queue) - requeued
        elapsed = time.monotonic() - t0
        backend = machinery_server.backend
        must_run = [fb for fb, e, r in zip(bodies, expected, refusals, strict=True) if r is None and e == "run"]
        final = {"SUCCESS", "FAILURE"}
        missing = [fb.uuid for fb in must_run if (s := backend.get_state(fb.uuid)) is None or s.state not in final]
        empty_key = backend.get_state("")
        log = worker.output()
        dead = log.count("dropping malformed message")
        unexpected = [line for line in log.splitlines() if _UNEXPECTED.search(line)]
        kinds = Counter(fb.kind for fb in bodies)
        write_figures(
            self.label(broker_url),
            "fuzz",
            {
                "bad_inputs": len(bodies),
                "notes": (
                    f"{len(accepted)} published, {len(bodies) - len(accepted)} refused by the broker at publish; "
                    f"{dead} dead-lettered, {len(must_run)} ran to a final state (wrong values), "
                    f"{sum(1 for e in expected if e == 'unknown')} unknown task names; "
                    f"{len(unexpected)} unexpected errors; {elapsed:.0f}s (publish {pushed:.0f}s); "
                    f"seed {self.fuzz_seed}"
                ),
                "kinds": dict(kinds),
            },
        )
        must_die = sum(1 for e, r in zip(expected, refusals, strict=True) if r is None and e == "dead")
        problems = []
        if not worker.alive():
            problems.append("the worker died on malformed input")
        if unexpected:
            problems.append(
                f"{len(unexpected)} messages handled by accident, not on purpose (an escaped exception, or a "
                "redelivery although the backend is healthy; "
                f"{sum(1 for line in unexpected if 'surrogate' in line)} of them name a lone surrogate), e.g.:\n    "
                + "\n    ".join(line[:300] for line in unexpected[:4])
            )
        if not served:
            problems.append(
                f"the control task sent after the malformed ones was not served within {self.fuzz_timeout:g}s"
            )
        if stuck > 0:
            problems.append(f"{stuck} messages still in the queue after {self.fuzz_timeout:g}s (stuck or looping)")
        if dead < must_die:
            problems.append(f"{must_die} undecodable bodies, only {dead} dead-lettered")
        if missing:
            problems.append(f"{len(missing)} well-formed tasks never reached a final state: {missing[:10]}")
        if empty_key is not None:
            problems.append(
                f"a message without a UUID ran and stored its state under the empty key: {empty_key!r}"[:400]
            )
        assert not problems, "\n".join(problems)


if __name__ == "__main__":
    raise SystemExit(main())
