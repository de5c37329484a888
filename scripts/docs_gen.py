"""Pages of the documentation site generated from the code at build time (a MkDocs hook).

``mkdocs.yml`` loads this file as a hook. It adds, without writing anything into ``docs/``:

- ``reference/configuration.md``: every core key and every transport option, with its
  environment variable, type, default, owning plugin and Go Machinery's name, read from
  :class:`machinery.Config`, each registered transport class (``config_section``,
  ``env_options``) and the options dataclass the transport parses its section into;
- ``reference/cli.md``: every ``machinery`` command and option, from
  :func:`machinery.cli.build_parser`;
- ``changelog.md``: the project's history from ``git log``;
- ``reliability.md``: a placeholder, only while ``docs/reliability.md`` does not exist.

Go's names come from Go Machinery's ``config/config.go`` (``$GO_MACHINERY_SRC``, else
``../shared/go-machinery/v2`` next to the checkout). Anything that cannot be matched (a
section with no options class, an environment variable naming no field, a Go source that is
missing) is logged as a warning, which ``mkdocs build --strict`` turns into a failure.

Run ``python scripts/docs_gen.py configuration|cli|changelog`` to print one page.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import io
import os
import re
import subprocess
import sys
import typing
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

try:  # a MkDocs hook: warnings go through MkDocs' logger (fatal with --strict)
    from mkdocs.plugins import get_plugin_logger

    log = get_plugin_logger("docs_gen")
except ImportError:  # run as a script
    import logging

    logging.basicConfig(format="%(levelname)s: %(message)s")
    log = logging.getLogger("docs_gen")  # type: ignore[assignment]

#: The dataclass each config section is parsed into (the one hand-kept table here: a section
#: found on a registered transport and missing from it is a build warning).
OPTION_CLASSES = {
    "sqlite": "machinery.builtin.sqlite.transport:SQLiteOptions",
    "redis": "machinery_redis.transport:RedisOptions",
    "amqp": "machinery_amqp.transport:AMQPOptions",
    "sqs": "machinery_sqs.broker:SQSOptions",
    "dynamodb": "machinery_sqs.backend:DynamoDBOptions",
    "gcp_pubsub": "machinery_gcp.transport:GCPPubSubOptions",
    "mongodb": "machinery_mongo.transport:MongoOptions",
    "memcache": "machinery_memcache.transport:MemcacheOptions",
    "nats": "machinery_nats.transport:NatsOptions",
}

#: Go Machinery's struct for each section ("" = the top-level Config).
GO_STRUCTS = {
    "": "Config",
    "amqp": "AMQPConfig",
    "redis": "RedisConfig",
    "sqs": "SQSConfig",
    "dynamodb": "DynamoDBConfig",
    "gcp_pubsub": "GCPPubSubConfig",
    "mongodb": "MongoDBConfig",
}

#: Python option -> Go YAML key where the spellings differ (the plugins accept Go's as aliases).
GO_YAML_ALIASES = {
    ("sqs", "wait_time_seconds"): "receive_wait_time_seconds",
    ("sqs", "visibility_timeout"): "receive_visibility_timeout",
    ("redis", "idle_timeout"): "max_idle_timeout",
}


# -- Go's config.go ---------------------------------------------------------------------------


@dataclasses.dataclass
class GoField:
    name: str
    yaml: str
    env: str


def go_source() -> Path | None:
    """Go Machinery v2's source folder, or None."""
    candidates = [os.environ.get("GO_MACHINERY_SRC", ""), str(ROOT.parent / "shared" / "go-machinery" / "v2")]
    candidates.append("/work/shared/go-machinery/v2")
    for c in candidates:
        if c and (Path(c) / "config" / "config.go").is_file():
            return Path(c)
    return None


def go_fields() -> dict[str, dict[str, GoField]] | None:
    """Go struct name -> {yaml key or snake-cased field name: GoField}, from config/config.go."""
    src = go_source()
    if src is None:
        return None
    text = (src / "config" / "config.go").read_text(encoding="utf-8")
    out: dict[str, dict[str, GoField]] = {}
    for m in re.finditer(r"type (\w+) struct \{(.*?)\n\}", text, re.S):
        fields: dict[str, GoField] = {}
        for line in m.group(2).splitlines():
            fm = re.match(r"\s*([A-Z]\w*)\s+[^\s`]+\s*(`.*`)?", line)
            if not fm:
                continue
            name, tags = fm.group(1), fm.group(2) or ""
            yaml_tag = re.search(r'yaml:"([^"]*)"', tags)
            env_tag = re.search(r'envconfig:"([^"]*)"', tags)
            key = yaml_tag.group(1) if yaml_tag and yaml_tag.group(1) not in ("", "-") else _snake(name)
            fields[key] = GoField(name, yaml_tag.group(1) if yaml_tag else "", env_tag.group(1) if env_tag else "")
        out[m.group(1)] = fields
    return out


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


# -- docstrings and types -----------------------------------------------------------------------


def param_docs(obj: Any) -> dict[str, str]:
    """``:param name: text`` entries of a docstring (continuation lines joined)."""
    doc = obj.__doc__ or ""
    out: dict[str, str] = {}
    current = None
    for line in doc.splitlines():
        m = re.match(r"\s*:param (\w+):\s*(.*)", line)
        if m:
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current and line.strip() and not line.strip().startswith(":"):
            out[current] += " " + line.strip()
        else:
            current = None
    return out


def type_name(t: Any) -> str:
    """A short readable type (``float``, ``int | None``, ``dict[str, str]``)."""
    if isinstance(t, type) and not typing.get_args(t):
        return t.__name__
    text = str(t).replace("typing.", "").replace("collections.abc.", "")
    return re.sub(r"\bNoneType\b", "None", text)


def default_of(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if value is None:
        return "`None`"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    return f"`{value!r}`"


def cell(text: str) -> str:
    """Table-cell text: Sphinx roles (``:class:`~a.B```) as code, pipes escaped."""
    text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    return text.replace("|", "\\|").replace("\n", " ")


# -- configuration reference ----------------------------------------------------------------------


def _transports() -> dict[str, dict[str, Any]]:
    """section -> {"kinds": {(kind, scheme)}, "env": {VAR: key}, "dists": {dist}} for every
    registered transport class."""
    from machinery.plugins import get_plugin_host

    host = get_plugin_host()
    host.load()
    dist_of_scheme: dict[tuple[str, str], str] = {}
    for info in host.infos():
        for kind in ("broker", "backend", "lock"):
            for scheme in info.schemes.get(kind, []):
                dist_of_scheme[(kind, scheme)] = info.distribution
    out: dict[str, dict[str, Any]] = {}
    for kind in ("broker", "backend", "lock"):
        for scheme in host.schemes(kind):  # type: ignore[arg-type]
            cls = host._class(kind, f"{scheme}://", object)  # type: ignore[arg-type]
            section = getattr(cls, "config_section", None)
            if not section:
                continue
            entry = out.setdefault(section, {"kinds": set(), "env": {}, "dists": set(), "classes": set()})
            entry["kinds"].add((kind, scheme))
            entry["env"].update(getattr(cls, "env_options", None) or {})
            entry["classes"].add(f"{cls.__module__}.{cls.__qualname__}")
            entry["dists"].add(dist_of_scheme.get((kind, scheme)) or _dist_of_module(cls.__module__))
    return out


def _dist_of_module(module: str) -> str:
    top = module.split(".")[0]
    return "machinery-core" if top == "machinery" else top.replace("_", "-")


def configuration_page() -> str:
    from machinery.config import _CORE_ENV, Config

    go = go_fields()
    if go is None:
        log.warning("Go Machinery's config/config.go not found (set GO_MACHINERY_SRC): Go names are missing")
        go = {}
    buf = io.StringIO()
    w = buf.write
    w("# Configuration reference\n\n")
    w(
        "<!-- Generated at build time by scripts/docs_gen.py from machinery.Config, the registered transports "
        "and Go Machinery's config/config.go. Do not edit. -->\n\n"
    )
    w(
        "Generated from the code when the site is built: the core `Config` fields, then each section "
        "a transport owns (the dataclass its options are parsed into, the environment variables its "
        "classes declare in `env_options`). *Go* gives Go Machinery's struct field, YAML key and "
        "environment variable for the same setting (from Go Machinery v2's `config/config.go`); "
        "\"—\" means Go has no such setting.\n\n"
        "Precedence: YAML file (`Config.load(path)`, `--config`) < environment < keyword arguments "
        "(`--broker`/`--backend` on the command line). For the transports with URL options "
        "(sqlite, redis, sqs, dynamodb, gcp_pubsub) the URL's query string wins over the section. "
        "Strings from the environment or a URL are converted to the option's type; unknown keys and "
        "bad values are `ConfigError`s naming `section.key`.\n\n"
    )
    core_docs = param_docs(Config)
    env_of = {key: var for var, key in _CORE_ENV.items()}
    go_core = go.get("Config", {})
    w("## Core keys (`machinery.Config`)\n\n")
    w("| key | env var | type | default | description | Go |\n|---|---|---|---|---|---|\n")
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        gf = go_core.get(f.name)
        w(
            f"| `{f.name}` | {_code(env_of.get(f.name, ''))} | `{cell(type_name(hints[f.name]))}` | {default_of(f)} "
            f"| {cell(core_docs.get(f.name, ''))} | {_go_cell(gf)} |\n"
        )
    w(
        "\n`MACHINERY_DEFAULT_URL` (environment only) replaces the embedded default broker URL "
        "`sqlite:///machinery.db` used when no broker is configured.\n\n"
    )
    transports = _transports()
    for section in sorted(set(transports) - set(OPTION_CLASSES)):
        log.warning("config section %r (%s) has no options class in OPTION_CLASSES", section, transports[section])
    w("## Transport sections\n\n")
    w(
        "Each section is a mapping under its name in the YAML file (`redis:`), or "
        "`Config(transport_options={\"redis\": {...}})`. A section is only read when its transport "
        "is installed and used.\n\n"
    )
    for section, target in OPTION_CLASSES.items():
        module, _, name = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except ImportError as exc:
            log.warning("section %r: cannot import %s (%s); install every plugin", section, target, exc)
            continue
        info = transports.get(section)
        if info is None:
            log.warning("section %r: no registered transport declares config_section = %r", section, section)
            continue
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        env_by_key: dict[str, list[str]] = defaultdict(list)
        for var, key in sorted(info["env"].items()):
            if key not in fields:
                log.warning("section %r: env var %s names %r, which %s does not have", section, var, key, name)
            env_by_key[key].append(var)
        go_struct = GO_STRUCTS.get(section)
        go_sec = go.get(go_struct, {}) if go_struct else {}
        roles = ", ".join(f"{kind} `{scheme}://`" for kind, scheme in sorted(info["kinds"]))
        w(f"### `{section}:`\n\n")
        w(f"Owned by **{', '.join(sorted(info['dists']))}** ({roles}); parsed into `{module}.{name}`. ")
        w(f"Go: `{go_struct}`.\n\n" if go_struct else "Go Machinery has no such section.\n\n")
        w("| key | env var | type | default | description | Go |\n|---|---|---|---|---|---|\n")
        docs = param_docs(cls)
        hints = typing.get_type_hints(cls)
        for fname, f in fields.items():
            go_key = GO_YAML_ALIASES.get((section, fname), fname)
            gf = go_sec.get(go_key)
            envs = ", ".join(f"`{v}`" for v in env_by_key.get(fname, [])) or "—"
            if not docs.get(fname):
                log.warning("section %r: option %r has no :param: description in %s", section, fname, name)
            w(
                f"| `{fname}` | {envs} | `{cell(type_name(hints.get(fname, Any)))}` | {default_of(f)} "
                f"| {cell(docs.get(fname, ''))} | {_go_cell(gf)} |\n"
            )
        if go_sec:
            ours = {GO_YAML_ALIASES.get((section, k), k) for k in fields}
            missing = [g for k, g in go_sec.items() if k not in ours and g.name not in ("Client",)]
            if missing:
                w(
                    "\nGo settings of `"
                    + go_struct  # type: ignore[operator]
                    + "` this plugin does not read: "
                    + ", ".join(f"`{g.name}`" + (f" (`{g.yaml}`)" if g.yaml else "") for g in missing)
                    + ".\n"
                )
        w("\n")
    if "tls" in _go_sections_names():
        w(
            "Go's `TLSConfig` (a `*tls.Config` set in code) has no YAML form; TLS is set per transport "
            "(`rediss://` with the `ssl_*` options, `amqps://`).\n"
        )
    return buf.getvalue()


def _go_sections_names() -> frozenset[str]:
    from machinery.config import GO_SECTIONS

    return GO_SECTIONS


def _code(text: str) -> str:
    return f"`{text}`" if text else "—"


def _go_cell(gf: GoField | None) -> str:
    if gf is None:
        return "—"
    parts = [f"`{gf.name}`"]
    if gf.yaml and gf.yaml != "-":
        parts.append(f"yaml `{gf.yaml}`")
    if gf.env:
        parts.append(f"`{gf.env}`")
    return ", ".join(parts)


# -- CLI reference --------------------------------------------------------------------------------


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().split())[len("usage: ") :]


def _option_rows(parser: argparse.ArgumentParser) -> list[tuple[str, str, str]]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            names = ", ".join(action.option_strings)
            if action.nargs != 0:
                choices = "{" + ",".join(map(str, action.choices)) + "}" if action.choices else ""
                names += f" {action.metavar or choices or action.dest.upper()}"
        else:
            names = action.metavar or action.dest
            if action.nargs in ("*", "+"):
                names += " ..."
        help_text = action.help or ""
        if action.choices and not isinstance(action, argparse._VersionAction):
            help_text += f" (one of: {', '.join(map(str, action.choices))})"
        default = action.default
        shown = ""
        if default not in (None, False, argparse.SUPPRESS) and action.nargs != 0 and not action.required:
            shown = f"`{default}`"
        if action.required and action.nargs not in ("*", "?"):
            shown = "required"
        rows.append((names, help_text, shown))
    return rows


def cli_page() -> str:
    os.environ["COLUMNS"] = "100"
    from machinery import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    buf = io.StringIO()
    w = buf.write
    w("# CLI reference\n\n")
    w("<!-- Generated at build time by scripts/docs_gen.py from machinery.cli.build_parser(). Do not edit. -->\n\n")
    w(
        "Generated from the `argparse` parser of `machinery.cli` when the site is built. The same "
        "text is printed by `machinery COMMAND --help`. The command is installed with "
        "`machinery-core` (also `python -m machinery`).\n\n"
    )
    w(f"```text\n{parser.format_help()}```\n\n")
    doc = (cli.__doc__ or "").split("\n\n")
    tail = [p for p in doc if "Exit status" in p or "Every command" in p]
    if tail:
        w(" ".join(" ".join(tail).split()) + "\n\n")
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, p in sub.choices.items():
        w(f"## `machinery {name}`\n\n{helps.get(name) or ''}\n\n")
        w(f"```text\n{_usage(p)}\n```\n\n")
        w("| argument | meaning | default |\n|---|---|---|\n")
        for names, help_text, shown in _option_rows(p):
            w(f"| `{cell(names)}` | {cell(help_text)} | {shown} |\n")
        w("\n")
    return buf.getvalue()


# -- changelog --------------------------------------------------------------------------------------


def changelog_page() -> str:
    buf = io.StringIO()
    w = buf.write
    w("# Changelog\n\n")
    w("<!-- Generated at build time by scripts/docs_gen.py from `git log`. Do not edit. -->\n\n")
    try:
        out = subprocess.run(
            ["git", "log", "--no-merges", "--date=short", "--format=%ad%x09%h%x09%s"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("changelog: git log failed: %s", exc)
        return buf.getvalue() + "The history could not be read (no git checkout).\n"
    w(
        "Generated from the git history when the site is built: every commit, newest first, grouped "
        "by day and by the component its message names (`redis:`, `core:`, `docs:`...). Issue "
        "numbers mentioned in a message are shown as written.\n\n"
    )
    by_day: dict[str, dict[str, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for line in out.splitlines():
        day, sha, subject = line.split("\t", 2)
        m = re.match(r"([\w .,/()-]{1,40}?):\s+(.*)", subject)
        scope = m.group(1).strip() if m else "other"
        text = m.group(2) if m else subject
        by_day[day][scope].append((sha, text))
    for day in sorted(by_day, reverse=True):
        scopes = by_day[day]
        count = sum(len(v) for v in scopes.values())
        w(f"## {day} ({count} commits)\n\n")
        for scope in sorted(scopes, key=lambda s: (-len(scopes[s]), s)):
            w(f"### {scope}\n\n")
            for sha, text in scopes[scope]:
                w(f"- {_escape_md(text)} (`{sha}`)\n")
            w("\n")
    return buf.getvalue()


def _escape_md(text: str) -> str:
    for ch in "\\`*_[]":  # backslash first; brackets would read as reference links
        text = text.replace(ch, "\\" + ch)
    return text.replace("<", "&lt;").replace(">", "&gt;")


RELIABILITY_PLACEHOLDER = """# Reliability

This page is being written alongside the fault-injection suite (`nox -s faults`). Until it lands,
see each transport's page for its delivery guarantee and [Concepts](concepts.md#at-least-once)
for at-least-once delivery.
"""

# -- MkDocs hook --------------------------------------------------------------------------------------

PAGES = {
    "reference/configuration.md": configuration_page,
    "reference/cli.md": cli_page,
    "changelog.md": changelog_page,
}


def on_files(files: Any, config: Any) -> Any:
    """MkDocs hook: add the generated pages to the site."""
    from mkdocs.structure.files import File

    for path, build in PAGES.items():
        files.append(File.generated(config, path, content=build()))
    if files.get_file_from_path("reliability.md") is None:
        files.append(File.generated(config, "reliability.md", content=RELIABILITY_PLACEHOLDER))
    return files


if __name__ == "__main__":
    names = {"configuration": configuration_page, "cli": cli_page, "changelog": changelog_page}
    if len(sys.argv) != 2 or sys.argv[1] not in names:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(names)}")
    sys.stdout.write(names[sys.argv[1]]())
