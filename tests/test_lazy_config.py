"""Reading a configuration imports no client library, with every plugin installed.

The plugins declare their config section and environment variables as plain data when they
register (``registry.add(scheme, "module:Transport", roles=..., section=..., env=...)``, or the
older ``register(scheme, "module:Class", section=..., env=...)``), so ``Config`` validates
sections and reads environment variables without importing the transport classes, and with
them redis-py, boto3, pika, google-cloud-pubsub, pymongo, pymemcache or nats-py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from machinery.plugins import get_plugin_host

CLIENTS = ("redis", "boto3", "botocore", "pika", "google", "pymongo", "bson", "pymemcache", "nats", "sqlite3")

PROBE = """
import json, sys
import machinery
from machinery import Config
cfg = Config.load(sys.argv[1], env={"REDIS_MAX_ACTIVE": "7", "AMQP_EXCHANGE": "x", "NATS_ACK_WAIT": "5"})
print(json.dumps({"options": cfg.transport_options, "modules": sorted(sys.modules)}))
"""


def test_config_load_imports_no_client_library(tmp_path: Path) -> None:
    """``import machinery`` and ``Config.load("machinery.yml")`` with a ``redis:`` section and
    every plugin installed: no client library in ``sys.modules``, none in ``-X importtime``."""
    path = tmp_path / "machinery.yml"
    path.write_text("broker: redis://127.0.0.1:6379/0\nredis:\n  max_idle: 3\nnats:\n  stream: S\n")
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", PROBE, str(path)], capture_output=True, text=True, check=True
    )
    out = json.loads(proc.stdout)
    assert out["options"] == {
        "redis": {"max_idle": 3, "max_active": "7"},
        "amqp": {"exchange": "x"},
        "nats": {"stream": "S", "ack_wait": "5"},
    }
    loaded = {m.split(".")[0] for m in out["modules"]}
    assert {"machinery_redis", "machinery_nats", "machinery_sqs"} <= loaded, "the plugins' hook modules must load"
    assert not loaded & set(CLIENTS), f"client libraries imported: {sorted(loaded & set(CLIENTS))}"
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not {m.split(".")[0] for m in imported} & set(CLIENTS)


def test_declared_metadata_matches_the_classes() -> None:
    """What a plugin declares at registration is what its class says (``config_section``,
    ``env_options``), for every registered scheme of every installed plugin."""
    host = get_plugin_host()
    host.load()
    checked = 0
    for (kind, scheme), (section, env) in host._meta.items():
        cls = host._class(kind, f"{scheme}://", object)  # type: ignore[arg-type]
        assert getattr(cls, "config_section", None) == section, (kind, scheme)
        assert dict(getattr(cls, "env_options", None) or {}) == dict(env), (kind, scheme)
        checked += 1
    for (kind, scheme), spec in host._transports.items():
        cls = host._class(kind, f"{scheme}://", object)  # type: ignore[arg-type]
        assert getattr(cls, "config_section", None) == spec.section, (kind, scheme)
        assert dict(getattr(cls, "env_options", None) or {}) == dict(spec.env), (kind, scheme)
        checked += 1
    undeclared = [
        (kind, scheme)
        for kind, table in host._registry.items()
        for scheme, (target, _) in table.items()
        if isinstance(target, str) and (kind, scheme) not in host._meta
    ]
    assert not undeclared, f"registered by name without section metadata (imports the class): {undeclared}"
    assert checked >= 15
