"""Config from keywords, environment and Go Machinery YAML; errors name the key; redaction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from machinery import Config, ConfigError
from machinery.config import parse_options, redact_url

GO_YAML = """
---
broker: 'amqp://admin:SB0gzhcUjJVD@127.0.0.1:5672'
default_queue: machinery_tasks
result_backend: 'redis://127.0.0.1:6379'
results_expire_in: 3600000
amqp:
  binding_key: machinery_task
  exchange: machinery_exchange
  exchange_type: direct
  prefetch_count: 3
"""


def test_defaults_are_gos() -> None:
    cfg = Config()
    assert cfg.default_queue == "machinery_tasks"
    assert cfg.results_expire_in == 3600
    assert cfg.broker_url.startswith("sqlite://")


def test_go_yaml_file_loads_with_sections_kept_for_plugins(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(GO_YAML)
    cfg = Config.from_yaml(path)
    assert cfg.broker == "amqp://admin:SB0gzhcUjJVD@127.0.0.1:5672"
    assert cfg.results_expire_in == 3600000
    assert cfg.section("amqp")["prefetch_count"] == 3
    assert cfg.section("redis") == {}


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("brokr: 'redis://x'\n", "brokr"),
        ("results_expire_in: soon\n", "results_expire_in"),
        ("results_expire_in: -2\n", "results_expire_in"),
        ("default_queue: ''\n", "default_queue"),
        ("broker: not-a-url\n", "broker"),
        ("frobnicate:\n  a: 1\n", "frobnicate"),
        ("broker: [1, 2]\n", "broker"),
    ],
)
def test_bad_yaml_values_name_the_key(tmp_path: Path, yaml_text: str, key: str) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        Config.from_yaml(path)
    assert info.value.key == key
    assert key in str(info.value)


def test_invalid_yaml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "x.yml"
    bad.write_text("broker: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        Config.from_yaml(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        Config.from_yaml(tmp_path / "missing.yml")


def test_environment_uses_go_names() -> None:
    env = {
        "BROKER": "memory://e",
        "DEFAULT_QUEUE": "q",
        "RESULT_BACKEND": "memory://e",
        "RESULTS_EXPIRE_IN": "60",
        "NO_UNIX_SIGNALS": "true",
    }
    cfg = Config.from_env(env)
    assert (cfg.broker, cfg.default_queue, cfg.result_backend) == ("memory://e", "q", "memory://e")
    assert cfg.results_expire_in == 60 and cfg.no_unix_signals is True
    with pytest.raises(ConfigError, match="results_expire_in"):
        Config.from_env({"RESULTS_EXPIRE_IN": "an hour"})


def test_load_layers_file_env_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("default_queue: fromfile\nresults_expire_in: 5\n")
    cfg = Config.load(path, env={"DEFAULT_QUEUE": "fromenv"}, results_expire_in=7)
    assert cfg.default_queue == "fromenv" and cfg.results_expire_in == 7


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("amqp://guest:secret@host:5672/", "amqp://guest:***@host:5672/"),
        ("redis://password@localhost:6379/0", "redis://***@localhost:6379/0"),
        ("redis://:pw@h1:1,h2:2", "redis://:***@h1:1,h2:2"),
        ("mongodb://u:p@a,b/db?authSource=admin&password=x", "mongodb://u:***@a,b/db?authSource=admin&password=***"),
        ("memory://", "memory://"),
        ("amqp://a:b@h1;amqp://c:d@h2", "amqp://a:***@h1;amqp://c:***@h2"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_redacted_config_hides_credentials() -> None:
    cfg = Config(broker="amqp://u:topsecret@h/", transport_options={"sqs": {"secret_key": "x", "region": "r"}})
    shown = repr(cfg.redacted())
    assert "topsecret" not in shown and "'x'" not in shown and "'r'" in shown


SECRET = "S3cr3t"

_SECRET_URLS = [
    f"redis://:{SECRET}@localhost:6379/0",
    f"redis://{SECRET}@localhost:6379/0",  # Go's form: the password alone
    f"rediss://user:{SECRET}@host:6380",
    f"redis+socket://{SECRET}@/var/run/redis.sock:/1",
    f"redis://:{SECRET}@h1:1,h2:2",
    f"redis://:p@{SECRET}@host:6379",  # an '@' in the password (not percent-encoded)
    f"amqp://guest:{SECRET}@host:5672/",
    f"amqps://guest:{SECRET}@host:5671/vhost",
    f"amqp://a:{SECRET}@h1;amqp://c:{SECRET}@h2",
    f"mongodb://user:{SECRET}@a:27017,b:27017/db?replicaSet=rs",
    f"mongodb+srv://user:{SECRET}@cluster0.example.net/results",
    f"memcache://user:{SECRET}@host:11211",
    f"https://sqs.us-east-1.amazonaws.com/123?aws_secret_access_key={SECRET}",
    f"https://host/path?X-Amz-Signature={SECRET}&X-Amz-Credential={SECRET}",
    f"redis://host:6379/0?password={SECRET}",
    f"amqp://host/?auth_token={SECRET}&heartbeat=10",
    f"mongodb://host/db?authMechanism=PLAIN&pwd={SECRET}",
]


@pytest.mark.parametrize("url", _SECRET_URLS)
def test_repr_and_str_of_a_config_never_show_a_password(url: str) -> None:
    # Anything that logs a config (f"{config}", logging %r, a traceback's locals) must not leak.
    cfg = Config(broker=url, result_backend=url, lock=url)
    for shown in (repr(cfg), str(cfg), f"{cfg}", repr([cfg]), repr(cfg.redacted())):
        assert SECRET not in shown, shown
        assert "***" in shown
    assert cfg.broker == url  # the value itself is untouched


def test_repr_of_a_config_hides_secret_options_at_any_depth() -> None:
    cfg = Config(
        broker="redis://localhost:6379",
        transport_options={
            "sqs": {"aws_secret_access_key": SECRET, "region": "eu-west-1"},
            "amqp": {"ssl": {"keyfile_password": SECRET, "verify": True}},
            "redis": {"sentinel_url": f"redis://:{SECRET}@sentinel:26379", "max_idle": 3},
            "gcp_pubsub": {"credentials": {"private_key": SECRET}},
        },
    )
    shown = repr(cfg)
    assert SECRET not in shown, shown
    assert "eu-west-1" in shown and "max_idle" in shown and "redis://:***@sentinel:26379" in shown
    assert shown.startswith("Config(broker='redis://localhost:6379'")


@dataclass
class _Opts:
    max_idle: int = 3
    wait: bool = True
    read_timeout: float = 15.0
    name: str = ""


def test_parse_options_coerces_and_names_unknown_keys() -> None:
    opts = parse_options(_Opts, "redis", {"max_idle": "5"}, {"wait": "false", "read_timeout": 2})
    assert opts == _Opts(max_idle=5, wait=False, read_timeout=2.0)
    with pytest.raises(ConfigError) as info:
        parse_options(_Opts, "redis", {"max_idel": 1})
    assert info.value.key == "redis.max_idel"
    with pytest.raises(ConfigError, match=r"redis\.max_idle"):
        parse_options(_Opts, "redis", {"max_idle": "many"})
