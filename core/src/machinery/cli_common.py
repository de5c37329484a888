"""What :mod:`machinery.cli`, :mod:`machinery.cli_commands` and :mod:`machinery.cli_ops` share:
the exit statuses, :class:`CLIError`, loading the ``--app`` (:func:`load_app`), the server a
command works on (:func:`build_server`), the argument types and :func:`parse_arg` (a task
argument typed on the command line). Below the command modules, so none imports another; as
light to import as :mod:`machinery.cli` (``--help`` loads no config or server).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from machinery.errors import ArgumentTypeError, MachineryError

# ``typing`` is not imported (see machinery.cli): type checkers treat ``TYPE_CHECKING`` as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import re
    from typing import Any

    from machinery.server import Server
    from machinery.signature import Arg

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "CLIError",
    "build_server",
    "load_app",
    "parse_arg",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 124, 130


class CLIError(MachineryError):
    """A command-line problem reported as one line on stderr.

    :param message: what is wrong.
    :param code: the exit status.
    """

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        self.code = code
        super().__init__(message)


# -- app and server ------------------------------------------------------------------------------


def load_app(spec: str) -> Server:
    """The :class:`~machinery.Server` named by ``MODULE[:ATTR]``.

    ``ATTR`` may be dotted and may name a factory returning a server. Without it, the module's
    ``server`` or ``app`` attribute is used, or the only Server the module defines. The current
    directory is importable, as with ``python -m``.

    :raises CLIError: the module cannot be imported or holds no (single) server.
    """
    import importlib

    from machinery.server import Server

    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise CLIError(f"--app {spec!r}: expected MODULE or MODULE:ATTR")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise CLIError(f"--app {spec!r}: no module named {module_name!r} (is it on PYTHONPATH?)") from None
        raise CLIError(f"--app {spec!r}: importing {module_name!r} failed: {exc}") from None
    except MachineryError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module raised while importing
        raise CLIError(f"--app {spec!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    if attr:
        obj: Any = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise CLIError(f"--app {spec!r}: module {module_name!r} has no attribute {attr!r}")
            obj = getattr(obj, part)
        if not isinstance(obj, Server) and callable(obj):
            obj = obj()
        if not isinstance(obj, Server):
            raise CLIError(f"--app {spec!r}: {attr!r} is a {type(obj).__name__}, not a machinery Server")
        return obj
    for name in ("server", "app"):
        obj = getattr(module, name, None)
        if isinstance(obj, Server):
            return obj
    found = {id(v): (k, v) for k, v in vars(module).items() if isinstance(v, Server)}
    if len(found) == 1:
        return next(iter(found.values()))[1]
    if not found:
        raise CLIError(f"--app {spec!r}: module {module_name!r} defines no machinery Server")
    names = ", ".join(sorted(k for k, _ in found.values()))
    raise CLIError(f"--app {spec!r}: module {module_name!r} defines several Servers ({names}); name one: {spec}:NAME")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in (("broker", args.broker), ("result_backend", args.backend)) if v}


def build_server(args: argparse.Namespace) -> Server:
    """The server a command works on: the ``--app``'s (re-configured when ``--config``,
    ``--broker`` or ``--backend`` is given), else one built from the config file, the
    environment and the flags."""
    from machinery.config import Config
    from machinery.server import Server

    app = load_app(args.app) if getattr(args, "app", None) else None
    overrides = _overrides(args)
    if app is None:
        return Server(Config.load(args.config, **overrides))
    if not args.config and not overrides:
        return app
    config = Config.load(args.config, **overrides) if args.config else app.config.replace(**overrides)
    server = Server(config, plugins=app.plugins, registry=app.registry)  # the app's tasks and periodic entries
    server.set_pre_publish_handler(app.producer.pre_publish)
    app.close()
    return server


# -- typed arguments ---------------------------------------------------------------------------

_numbers: tuple[re.Pattern[str], re.Pattern[str]] | None = None


def _number_patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    global _numbers
    if _numbers is None:
        import re

        _numbers = (re.compile(r"[+-]?\d+\Z"), re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)\Z"))
    return _numbers


def _infer(text: str) -> Any:
    int_re, float_re = _number_patterns()
    if int_re.match(text):
        return int(text)
    if float_re.match(text):
        value = float(text)
        return value if math.isfinite(value) else text
    if text in ("true", "false"):
        return text == "true"
    return text


def _candidates(text: str) -> list[Any]:
    # A value as JSON (1, true, [1,2], "x"), then as the raw text.
    import json

    out: list[Any] = []
    try:
        out.append(json.loads(text))
    except ValueError:
        pass
    out.append(text)
    return out


_GO_KINDS = ("int", "uint", "float", "complex", "bool", "string", "byte", "rune", "map[", "interface")


def _looks_like_a_type(prefix: str, known: frozenset[str]) -> bool:
    """True when ``prefix`` (the text before the first ``:``) was meant as a Go type name: it
    starts like one (``int99``, ``[]x``, ``map[...]``) or is a near miss of a known one
    (``strin``, ``bol``). Other prefixes (``http``, ``a``) are part of a plain string."""
    import difflib

    base = prefix.removeprefix("[]")
    if prefix.startswith("[]") or base.startswith(_GO_KINDS):
        return True
    return bool(base.isalnum() and difflib.get_close_matches(base, known, n=1, cutoff=0.8))


def parse_arg(text: str) -> Arg:
    """A task argument from the command line.

    ``TYPE:VALUE`` with a Go type name (``int64:1``, ``string:x``, ``bool:true``,
    ``[]int64:1,2``, ``[]string:a,b``, ``float64:2.5``); a slice's value may also be JSON
    (``[]int64:[1,2]``). Without a type prefix the type is inferred: ``1`` is ``int64``,
    ``1.5`` is ``float64``, ``true``/``false`` are ``bool``, anything else is a ``string``
    (``http://x``, ``a:b``). A prefix that looks like a Go type but is none (``int99:1``,
    ``strin:x``) is an error, never silently a string: to send such a text as it is, prefix
    it with ``string:`` (``string:int99:1`` sends ``"int99:1"``).

    :raises ArgumentTypeError: an unknown type, or a value that does not fit the named type.
    """
    from machinery.signature import GO_TYPES, Arg

    type_name, sep, value = text.partition(":")
    if not sep or type_name not in GO_TYPES:
        if sep and _looks_like_a_type(type_name, GO_TYPES):
            raise ArgumentTypeError(
                type_name,
                value,
                f"unknown Go type {type_name!r} in {text!r} (known: int, int8..int64, uint..uint64, float32, "
                f"float64, bool, string, []byte and []T of those); to send the text as it is, write "
                f"string:{text}",
            )
        return Arg.of(_infer(text))
    # The most telling error wins: the value read as JSON (300 for int8: out of range), then
    # the comma-separated list of a slice, then the raw text (abc for int64: not an integer).
    errors: list[ArgumentTypeError] = []
    tries = _candidates(value)
    if type_name.startswith("[]"):
        items = [v.strip() for v in value.split(",")] if value.strip() else []
        tries.insert(len(tries) - 1, [_infer(v) for v in items])
        tries.append(items)
    for candidate in tries:
        try:
            return Arg(type_name, candidate)
        except ArgumentTypeError as exc:
            errors.append(exc)
    raise ArgumentTypeError(type_name, value, f"cannot read {value!r} as {type_name}: {errors[0].reason}")


# -- argument types ----------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _priority(text: str) -> int:
    value = _positive_int(text)
    if value > 255:
        raise argparse.ArgumentTypeError(f"priority must be 0-255, got {value}")
    return value


def _retry_count(text: str) -> int:
    value = _positive_int(text)
    if value > 2**31 - 1:  # Go's int on every platform it runs on; a Go worker refuses more
        raise argparse.ArgumentTypeError(f"must be at most {2**31 - 1}, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number of seconds, got {text!r}")
    return value


def _cpu_affinity(text: str) -> str:
    from machinery.settings import parse_cpu_affinity

    try:
        return parse_cpu_affinity(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _memory(text: str) -> int:
    from machinery.settings import parse_memory

    try:
        return parse_memory(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
