"""Parsers of the worker settings given as text (config, environment, command line): memory
sizes (``max_memory_per_child``) and CPU lists (``worker_cpu_affinity``).

Imported by :mod:`machinery.config`; nothing here imports more than the standard library's core.
"""

from __future__ import annotations

__all__ = ["AUTO", "cpu_list", "parse_cpu_affinity", "parse_memory"]

#: The CPU-affinity setting that lets the worker choose its CPU (:mod:`machinery.affinity`).
AUTO = "auto"
_OFF = ("", "none", "off")
#: CPU numbers at or above this are refused (Linux's own limit, ``NR_CPUS``, is at most 8192).
MAX_CPU = 8192


def parse_memory(value: object) -> int:
    """A memory size in KiB: a whole number is KiB (Celery's ``--max-memory-per-child``), or a
    number with a unit ``K``/``KB``/``KiB``, ``M``/``MB``/``MiB``, ``G``/``GB``/``GiB`` (binary
    multiples: ``200MB`` is 204800 KiB).

    :raises ValueError: not a size.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a memory size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value
    text = str(value).strip().lower().replace(" ", "")
    units = {"": 1, "k": 1, "kb": 1, "kib": 1, "m": 1024, "mb": 1024, "mib": 1024}
    units.update({"g": 1024**2, "gb": 1024**2, "gib": 1024**2})
    num = text.rstrip("kmgib")
    unit = text[len(num) :]
    try:
        n = float(num)
    except ValueError:
        raise ValueError(f"expected a memory size such as 512000 (KiB), 200MB or 1G, got {value!r}") from None
    if unit not in units or n < 0 or n != n:
        raise ValueError(f"expected a memory size such as 512000 (KiB), 200MB or 1G, got {value!r}")
    return int(n * units[unit])


def cpu_list(spec: str) -> frozenset[int]:
    """The CPUs of a list such as ``0``, ``2-3`` or ``0,4-5``.

    :raises ValueError: not such a list.
    """
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi if sep else lo)
        except ValueError:
            raise ValueError(f"expected auto, none or a CPU list such as 0, 2-3 or 0,4; got {spec!r}") from None
        if first < 0 or last < first:
            raise ValueError(f"expected auto, none or a CPU list such as 0, 2-3 or 0,4; got {spec!r}")
        if last >= MAX_CPU:
            raise ValueError(f"CPU {last} is out of range (CPUs are numbered below {MAX_CPU}); got {spec!r}")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def parse_cpu_affinity(value: object) -> str:
    """The setting in its canonical form: ``""`` (off), ``"auto"``, or a sorted CPU list
    (``"0,2,3"``).

    :raises ValueError: none of these.
    """
    if value is None:
        return ""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ValueError(f"expected auto, none or a CPU list such as 0, 2-3 or 0,4; got {value!r}")
    text = str(value).strip().lower()
    if text in _OFF:
        return ""
    if text == AUTO:
        return AUTO
    return ",".join(map(str, sorted(cpu_list(text))))
