from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from machinery.testing import require_server

pytest_plugins = ["machinery.testing.plugin"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def url() -> str:
    """The shared Redis under test (``REDIS_URL``, default the local 6379)."""
    url = os.environ.get("REDIS_URL", DEFAULT_URL)
    require_server(url, port=6379 if url == DEFAULT_URL else None)
    return url


@pytest.fixture
def raw(url: str) -> Iterator[redis.Redis]:
    """A raw redis-py client on the shared server, bypassing the plugin."""
    client = redis.Redis.from_url(url)
    yield client
    client.close()


@pytest.fixture
def queue() -> str:
    """A queue name no other test uses."""
    return f"rt_{uuid.uuid4().hex[:12]}"


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(cluster_bus: bool = False) -> int:
    """A free port; with ``cluster_bus``, one whose cluster-bus port (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not cluster_bus or (port + 10000 <= 65535 and _bindable(port + 10000)):
            return port
    if cluster_bus:
        for port in range(20000, 30000, 7):
            if _bindable(port) and _bindable(port + 10000):
                return port
    raise RuntimeError("no free port")


class PrivateRedis:
    """A redis-server of our own on a free port (and a Unix socket), safe to stop and restart."""

    def __init__(self, workdir: Path, cluster_bus: bool = False) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            if os.environ.get("CI"):
                pytest.fail("redis-server is not installed; CI must run the restart tests", pytrace=False)
            pytest.skip("redis-server is not installed")
        self.exe = exe
        self.dir = workdir
        self.port = free_port(cluster_bus)
        self.socket = str(workdir / "redis.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra: list[str] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            "--unixsocket", self.socket, "--unixsocketperm", "700", "--logfile", str(self.dir / "redis.log"),
            *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as c:
                    if c.ping():
                        return
            except redis.RedisError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        log = self.dir / "redis.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        raise RuntimeError(f"private redis-server on port {self.port} did not start:\n{tail}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private redis-server for tests that stop it or count its commands."""
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


class PrivateCluster:
    """Three private redis-server nodes joined into a Redis Cluster (masters only)."""

    def __init__(self, workdir: Path) -> None:
        self.nodes = []
        for i in range(3):
            d = workdir / f"node{i}"
            d.mkdir()
            self.nodes.append(PrivateRedis(d, cluster_bus=True))

    @property
    def url(self) -> str:
        return "redis://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        for n in self.nodes:
            n.extra = ["--cluster-enabled", "yes", "--cluster-config-file", str(n.dir / "nodes.conf")]
            n.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.skip("redis-cli is not installed")
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run([cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            infos = [n.client().execute_command("CLUSTER", "INFO") for n in self.nodes]
            if all(b"cluster_state:ok" in (i if isinstance(i, bytes) else str(i).encode()) for i in infos):
                return
            time.sleep(0.1)
        raise RuntimeError("the private cluster did not become ready")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


@pytest.fixture
def private_cluster(tmp_path: Path) -> Iterator[PrivateCluster]:
    """A private three-node Redis Cluster."""
    cluster = PrivateCluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def private_sentinel(private_redis: PrivateRedis, tmp_path: Path) -> Iterator[tuple[PrivateRedis, int]]:
    """A Sentinel watching ``private_redis`` as master ``mymaster``; yields (master, sentinel port)."""
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {private_redis.port} 1\n"
        "sentinel down-after-milliseconds mymaster 60000\n"
    )
    proc = subprocess.Popen([private_redis.exe, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=port, socket_timeout=1) as c:
                    if c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"):
                        break
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the private sentinel did not start")
            time.sleep(0.05)
        yield private_redis, port
    finally:
        proc.kill()
        proc.wait(10)
