"""Sessions for every distribution in this repository.

    nox -s lint types tests_core          # the core
    nox -s "tests(plugin='redis')"        # one plugin against its real server
    nox -t plugins                        # every plugin (and plugins/_template's tests)
    nox -s e2e                            # cross-plugin and end-to-end tests (tests/)
    nox -s docs                           # the documentation site, every example in it run
    nox -s go_interop                     # against the real Go Machinery (builds it with Debian's Go)
    nox -s faults                         # the fault suite on every broker (docs/reliability.md)
    nox -s bench                          # benchmarks (not part of CI)

The plugin list is derived from the folders in plugins/, never written out. Each session
installs ``-e core -e plugins/machinery-<name>`` into its own environment, which proves the
plugin declares its own dependencies.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PLUGINS = sorted(p.name.removeprefix("machinery-") for p in (ROOT / "plugins").glob("machinery-*") if p.is_dir())

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "types", "tests_core"]

#: A test that hangs fails after this many seconds (pytest-timeout, with a traceback of every
#: thread) instead of holding CI until its own limit; the fault suite's tests get longer.
TEST_TIMEOUT = 300
PYTEST = ["pytest", "-q", "-p", "no:cacheprovider", f"--timeout={TEST_TIMEOUT}"]
TIMEOUT_PLUGIN = "pytest-timeout>=2.1"


def _test_group(path: Path) -> list[str]:
    """A plugin's ``test`` dependency group; an entry naming another plugin of this repository
    (``machinery-redis``) is installed from its folder."""
    pyproject = nox.project.load_toml(path / "pyproject.toml")
    out: list[str] = []
    for req in pyproject.get("dependency-groups", {}).get("test", []):
        local = ROOT / "plugins" / req
        out += ["-e", str(local)] if local.is_dir() else [req]
    return out


def _pytest_args(session: nox.Session) -> list[str]:
    return list(session.posargs)


@nox.session(tags=["lint"])
def lint(session: nox.Session) -> None:
    """ruff over the whole tree."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


@nox.session(tags=["lint"])
def types(session: nox.Session) -> None:
    """mypy --strict over the core and every plugin (plugins/*/src, the template included)."""
    plugins = [str(p) for p in sorted((ROOT / "plugins").glob("*/pyproject.toml"))]
    editable = [arg for p in plugins for arg in ("-e", str(Path(p).parent))]
    # hiredis: machinery-redis packs commands with it when it is installed (typed package)
    session.install("mypy>=1.10", "-e", "core[testing]", *editable, "types-PyYAML", "hiredis>=2")
    session.run("mypy", "--config-file", "pyproject.toml")


@nox.session(tags=["core"])
def tests_core(session: nox.Session) -> None:
    """Core unit tests plus the conformance suite on the memory and embedded transports."""
    session.install("-e", "core[testing]", TIMEOUT_PLUGIN)
    session.run(*PYTEST, "core/tests", *_pytest_args(session))


@nox.session(tags=["plugins"])
@nox.parametrize("plugin", PLUGINS)
def tests(session: nox.Session, plugin: str) -> None:
    """A plugin's own tests and the conformance suite, against its real server."""
    path = ROOT / "plugins" / f"machinery-{plugin}"
    session.install("-e", "core[testing]", "-e", str(path), *_test_group(path), TIMEOUT_PLUGIN)
    session.run(*PYTEST, str(path / "tests"), *_pytest_args(session))


@nox.session(tags=["plugins"])
def template(session: nox.Session) -> None:
    """plugins/_template's tests: its skeleton's own tests, and the conformance suite on the
    memory:// reference (the template's tests run there until an author switches the URL)."""
    path = ROOT / "plugins" / "_template"
    session.install("-e", "core[testing]", "-e", str(path), *_test_group(path), TIMEOUT_PLUGIN)
    session.run(*PYTEST, str(path / "tests"), *_pytest_args(session))


@nox.session(tags=["e2e"])
def e2e(session: nox.Session) -> None:
    """Cross-plugin and end-to-end tests (mixed brokers and backends, Go wire fixtures)."""
    session.install("-e", "core[testing]", TIMEOUT_PLUGIN)
    for plugin in PLUGINS:
        path = ROOT / "plugins" / f"machinery-{plugin}"
        session.install("-e", str(path), *_test_group(path))
    session.run(*PYTEST, "tests", "--ignore=tests/docs", *_pytest_args(session))


@nox.session(tags=["docs"])
def docs(session: nox.Session) -> None:
    """The documentation site (mkdocs build --strict, into site/) and every example in docs/ and
    README.md run against memory://, sqlite:// and the real servers (tests/docs)."""
    session.install("-r", "docs/requirements.txt", "-e", "core[yaml,testing]", TIMEOUT_PLUGIN)
    for plugin in PLUGINS:
        session.install("-e", str(ROOT / "plugins" / f"machinery-{plugin}"))
    session.run("mkdocs", "build", "--strict", "--clean", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"})
    session.run(*PYTEST, "tests/docs", *_pytest_args(session))


@nox.session(tags=["interop"])
def go_interop(session: nox.Session) -> None:
    """Interop tests against the real Go Machinery v2 (interop/).

    interop/go/build.sh installs Debian's golang-go and Go packages when missing, builds Go
    Machinery from ../shared/go-machinery (or $MACHINERY_SHARED) offline and the Go worker and
    producer; a failed build fails this session. Then Go and Python producers and workers run
    against each other on Redis and RabbitMQ.
    """
    plugins = ("-e", "plugins/machinery-redis", "-e", "plugins/machinery-amqp")
    session.install("-e", "core[testing]", *plugins, "pytest>=7.4", TIMEOUT_PLUGIN)
    build = ROOT / ".nox" / "_go_interop"
    env = {"MACHINERY_GO_BUILD": os.environ.get("MACHINERY_GO_BUILD", str(build))}
    session.run("bash", "interop/go/build.sh", env=env, external=True)
    session.run(*PYTEST, "interop/tests", *_pytest_args(session), env=env)


@nox.session(tags=["faults"])
def faults(session: nox.Session) -> None:
    """The fault suite (machinery.testing.faults) on the embedded transport and every broker plugin:
    SIGKILLed workers under load, broker restarts on private servers, 10,000 malformed messages.

    Each broker's ``faults_<name>.py`` runs in a pytest of its own (its conftest.py would clash
    with another's). The figures go to build/faults/; the table of docs/reliability.md (and
    docs/reliability-figures.json) is regenerated from them. ``-- -k fuzz`` passes pytest options.
    """
    session.install("-e", "core[testing]", TIMEOUT_PLUGIN)
    modules = [ROOT / "core" / "tests" / "faults_sqlite.py"]
    for plugin in PLUGINS:
        path = ROOT / "plugins" / f"machinery-{plugin}"
        found = sorted((path / "tests").glob("faults_*.py"))
        if found:
            session.install("-e", str(path), *_test_group(path))
            modules.extend(found)
    figures = ROOT / "build" / "faults"
    if figures.exists():
        for old in figures.glob("*.json"):
            old.unlink()
    env = {"MACHINERY_FAULTS_FIGURES": str(figures), "PYTHONUNBUFFERED": "1"}
    failed = []
    for module in modules:
        try:
            session.run(*PYTEST, "--timeout=900", "-rfEs", str(module), *_pytest_args(session), env=env)
        except nox.command.CommandFailed:
            failed.append(module.name)
    session.run(
        "python", "-m", "machinery.testing.faults", "report", str(figures),
        "--store", "docs/reliability-figures.json", "--write", "docs/reliability.md",
    )
    if failed:
        session.error(f"fault suite failed for: {', '.join(failed)}")


@nox.session(tags=["bench"])
def bench(session: nox.Session) -> None:
    """Benchmarks against Go Machinery, Celery, Dramatiq, RQ, arq, Huey and Taskiq (writes benchmarks/RESULTS.md).

    The peers are pinned in benchmarks/requirements.txt and live only in this session's
    environment; arq (which needs redis-py < 6) gets a second environment beside it (not for
    ``--quick``, which does not run arq). Go Machinery is built by interop/go/build.sh.
    """
    session.install("-e", "core", "-e", "plugins/machinery-redis[hiredis]", "-e", "plugins/machinery-amqp")
    # the observability plugins, enabled one at a time by the machinery-otel/-prometheus/-dashboard variants
    session.install("-e", "plugins/machinery-opentelemetry", "-e", "plugins/machinery-prometheus", "opentelemetry-sdk")
    session.install("-e", "plugins/machinery-dashboard")
    session.install("-r", "benchmarks/requirements.txt")
    arq_args: list[str] = []
    if "--quick" not in session.posargs:
        arq_env = Path(session.virtualenv.location).with_name(Path(session.virtualenv.location).name + "-arq")
        arq_python = arq_env / "bin" / "python"
        if not arq_python.exists():
            session.run("python", "-m", "venv", str(arq_env))
        arq_reqs = ["-r", "benchmarks/requirements-arq.txt"]
        session.run(str(arq_python), "-m", "pip", "install", "-q", *arq_reqs, external=True)
        arq_args = ["--arq-python", str(arq_python)]
    session.run(
        "python", "benchmarks/run.py", *arq_args, *session.posargs,
        env={"PYTHONUNBUFFERED": "1", **os.environ},
    )
