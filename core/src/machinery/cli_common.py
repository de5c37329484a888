"""What :mod:`machinery.cli` and :mod:`machinery.cli_ops` share: the exit statuses,
:class:`CLIError`, loading the ``--app`` (:func:`load_app`), the server a command works on
(:func:`build_server`) and the argument types. Below both command modules, so neither imports
the other; as light to import as :mod:`machinery.cli` (``--help`` loads no config or server).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from machinery.errors import MachineryError

# ``typing`` is not imported (see machinery.cli): type checkers treat ``TYPE_CHECKING`` as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from machinery.server import Server

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "CLIError",
    "build_server",
    "load_app",
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


def _memory(text: str) -> int:
    from machinery.config import parse_memory

    try:
        return parse_memory(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
