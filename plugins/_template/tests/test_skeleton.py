"""What the suite cannot know: the registration, the URL and options, the lazy shared
connection, and what is left to implement.

TEMPLATE: keep these (with your URL forms and options), and add what is specific to your
server: Go's key layout read back raw, restarts against a private server on a free port...
"""

from __future__ import annotations

import inspect

import pytest

from machinery import Server
from machinery.plugin import Config, ConfigError
from machinery_template import ENV_OPTIONS
from machinery_template.backend import TemplateBackend
from machinery_template.broker import TemplateBroker
from machinery_template.lock import TemplateLock
from machinery_template.transport import TemplateTransport, parse_url


def test_registered_with_its_section_and_environment_variables() -> None:
    config = Config.from_mapping({"broker": "template://h", "template": {"visibility_timeout": 60}})
    assert config.section("template") == {"visibility_timeout": 60}  # a known section
    env = Config.from_env({"TEMPLATE_CONNECT_TIMEOUT": "2.5"}, config)
    assert TemplateTransport("template://h", env).options.connect_timeout == 2.5
    for role in (TemplateBroker, TemplateBackend, TemplateLock):  # what the registration declares
        assert (role.config_section, role.env_options) == ("template", ENV_OPTIONS), role


def test_url_forms() -> None:
    t = parse_url("template://user:s%40cret@db.example:7001/jobs?connect_timeout=2")
    assert (t.host, t.port, t.path, t.username, t.password) == ("db.example", 7001, "jobs", "user", "s@cret")
    assert parse_url("template://h").port == 7000
    for bad in ("template://", "template://h:notaport", "other://h"):
        with pytest.raises(ConfigError):
            parse_url(bad)
    with pytest.raises(ConfigError) as info:
        parse_url("template://user:secret@")
    assert "secret" not in str(info.value)


def test_options_from_the_section_and_the_query() -> None:
    config = Config(transport_options={"template": {"connect_timeout": 3, "visibility_timeout": 60}})
    t = TemplateTransport("template://h?connect_timeout=1.5", config)
    assert (t.options.connect_timeout, t.options.visibility_timeout) == (1.5, 60)
    with pytest.raises(ConfigError, match="connect_timeout"):
        TemplateTransport("template://h", Config(transport_options={"template": {"connect_timeout": 0}}))
    with pytest.raises(ConfigError):
        TemplateTransport("template://h", Config(transport_options={"template": {"no_such_option": 1}}))


def test_the_roles_share_one_transport_and_connect_lazily() -> None:
    server = Server(Config(broker="template://h", result_backend="template://h", lock="template://h"))
    broker, backend = server.broker, server.backend
    assert broker.transport is not None and broker.transport is backend.transport
    assert not broker.transport.is_open  # building a server connects to nothing
    server.close()
    assert broker.transport.holders == 0


def _left() -> list[str]:
    left = []
    for cls in (TemplateTransport, TemplateBroker, TemplateBackend, TemplateLock):
        for name, fn in vars(cls).items():
            if inspect.isfunction(fn) and 'NotImplementedError("TEMPLATE' in inspect.getsource(fn):
                left.append(f"{cls.__name__}.{name}")
    return left


def test_what_is_left() -> None:
    """Skips, naming the methods still raising ``NotImplementedError("TEMPLATE: ...")``, until
    there are none; then switch ``SERVER_URL`` in test_conformance.py to your server."""
    left = _left()
    if left:
        pytest.skip(f"TEMPLATE: still to implement: {', '.join(left)}")
