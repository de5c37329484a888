"""Cron specs as Go Machinery accepts them (robfig/cron v3's standard parser), with no dependency.

Accepted forms (:func:`parse_cron`):

* five fields, ``minute hour day-of-month month day-of-week``: ``*``, ``?`` (same as ``*``),
  numbers, ranges ``1-5``, steps ``*/15``, ``10-50/20`` and ``5/15`` (= ``5-59/15``), lists
  ``1,15,30``, month names ``JAN``-``DEC`` and weekday names ``SUN``-``SAT`` (any case, also
  in ranges: ``MON-FRI``). Day of week 0 is Sunday; as in Go, 7 is rejected.
* descriptors ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily``
  (``@midnight``) and ``@hourly``.
* ``@every <duration>`` with Go's duration syntax (``10s``, ``1m30s``, ``1.5h``, ``2h45m``).
  As in Go, the interval is truncated to whole seconds, with a minimum of one second.
* a ``CRON_TZ=<IANA zone>`` or ``TZ=<IANA zone>`` prefix before any of the above.

Day of month and day of week combine as in cron: when both are restricted (neither starts
with ``*`` or ``?``) a day matches if *either* matches; otherwise both must match.

Differences from Go, both needed so that several schedulers agree on every tick:

* ``@every d`` ticks at whole multiples of ``d`` since the Unix epoch (so ``@every 1h`` fires on
  the hour, UTC), where Go counts from the moment its scheduler started.
* Schedules are in UTC unless the spec or :attr:`Config.timezone <machinery.config.Config.timezone>`
  names a zone (Go uses the machine's local time). In a zone with daylight saving time, a
  wall-clock time that does not exist (spring forward) is skipped, as in Go; a wall-clock time
  that occurs twice (fall back) fires once, at its first occurrence, unless the hour field is
  ``*``, in which case sub-hourly schedules keep firing through both copies of the hour.
"""

from __future__ import annotations

import bisect
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo

from machinery.errors import ConfigError

__all__ = ["CronSchedule", "CronSpecError", "EverySchedule", "Schedule", "parse_cron", "resolve_timezone"]

_UTC = timezone.utc
_MONTHS = {
    n: i for i, n in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)
}
_WEEKDAYS = {n: i for i, n in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February: leap years count
# Wall-clock times repeat for at most this long when clocks go back (1 h almost everywhere).
_FOLD = timedelta(hours=3)
_MINUTE = timedelta(minutes=1)


class CronSpecError(ConfigError):
    """A cron spec that cannot be parsed, or that never fires.

    :param spec: the spec as given.
    :param reason: what is wrong with it, naming the field where there is one.
    """

    def __init__(self, spec: str, reason: str) -> None:
        super().__init__("spec", reason)
        self.spec = spec
        self.args = (f"invalid cron spec {spec!r}: {reason}",)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[type[CronSpecError], tuple[str, str]]:
        return (type(self), (self.spec, self.reason))


def resolve_timezone(name: str) -> tzinfo:
    """The time zone called ``name`` (an IANA name such as ``Europe/Paris``, or ``UTC``).

    :raises ConfigError: no such zone (or no time zone database on this machine: ``pip install
        tzdata``).
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("timezone", f"expected an IANA time zone name, got {name!r}")
    name = name.strip()
    if name.upper() in ("UTC", "Z", "ETC/UTC", "GMT", "ETC/GMT"):
        return _UTC
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ConfigError(
            "timezone", f"unknown time zone {name!r} (an IANA name such as 'Europe/Paris'; {exc})"
        ) from None


class Schedule(ABC):
    """A parsed spec: tells when it fires next.

    :param spec: the spec it was parsed from (with any ``CRON_TZ=`` prefix).
    :param tz: the zone its wall-clock fields are read in.
    """

    def __init__(self, spec: str, tz: tzinfo) -> None:
        self.spec = spec
        self.tz = tz

    @abstractmethod
    def next(self, after: datetime) -> datetime:
        """The first fire time strictly after ``after``.

        :param after: a time; naive datetimes are taken as UTC.
        :returns: a timezone-aware datetime (in the schedule's zone).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((type(self), self.spec))


def _aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=_UTC) if dt.tzinfo is None else dt


@dataclass(frozen=True)
class _Field:
    name: str
    lo: int
    hi: int
    names: dict[str, int] | None = None


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTHS),
    _Field("day-of-week", 0, 6, _WEEKDAYS),
)


def _number(text: str, field: _Field, what: str) -> int:
    if field.names is not None and text.lower() in field.names:
        return field.names[text.lower()]
    if not text.isascii() or not text.isdigit():
        named = f" or a name ({', '.join(n.upper() for n in field.names)})" if field.names else ""
        raise ValueError(f"{field.name} field: {what} {text!r} is not a number{named}")
    return int(text)


def _parse_field(text: str, field: _Field) -> tuple[frozenset[int], bool]:
    """The values a field allows, and whether it counts as ``*`` for the day-of-month/week rule."""
    values: set[int] = set()
    star = False
    for part in text.split(","):
        if not part:
            raise ValueError(f"{field.name} field {text!r}: empty list item")
        rng, slash, step_text = part.partition("/")
        if "/" in step_text:
            raise ValueError(f"{field.name} field {part!r}: more than one '/'")
        if rng in ("*", "?"):
            lo, hi, star = field.lo, field.hi, True
        else:
            low_text, dash, high_text = rng.partition("-")
            if "-" in high_text:
                raise ValueError(f"{field.name} field {part!r}: more than one '-'")
            if not low_text or (dash and not high_text):
                raise ValueError(f"{field.name} field {part!r}: incomplete range")
            lo = _number(low_text, field, "value")
            hi = _number(high_text, field, "value") if dash else (field.hi if slash else lo)
        step = 1
        if slash:
            if not step_text:
                raise ValueError(f"{field.name} field {part!r}: missing step after '/'")
            step = _number(step_text, _Field(field.name, 0, 0), "step")
            if step == 0:
                raise ValueError(f"{field.name} field {part!r}: the step must be a positive number")
        if lo < field.lo:
            raise ValueError(f"{field.name} field {part!r}: {lo} is below the minimum {field.lo}")
        if hi > field.hi:
            hint = " (use 0 or SUN for Sunday)" if field.name == "day-of-week" and hi == 7 else ""
            raise ValueError(f"{field.name} field {part!r}: {hi} is above the maximum {field.hi}{hint}")
        if lo > hi:
            raise ValueError(f"{field.name} field {part!r}: the range starts ({lo}) after it ends ({hi})")
        values.update(range(lo, hi + 1, step))
    return frozenset(values), star


class CronSchedule(Schedule):
    """A five-field cron schedule (or a descriptor such as ``@daily``), minute resolution."""

    def __init__(
        self,
        spec: str,
        tz: tzinfo,
        minutes: frozenset[int],
        hours: frozenset[int],
        dom: frozenset[int],
        months: frozenset[int],
        dow: frozenset[int],
        *,
        dom_star: bool,
        dow_star: bool,
        hour_star: bool,
    ) -> None:
        super().__init__(spec, tz)
        self.minutes = sorted(minutes)
        self.hours = sorted(hours)
        self.dom = dom
        self.months = sorted(months)
        self.dow = dow
        # Cron's rule: both restricted -> either matches; otherwise both must.
        self.day_or = not dom_star and not dow_star
        self.hour_star = hour_star
        self._fixed_offset = isinstance(tz, timezone)

    def _day_matches(self, d: datetime) -> bool:
        in_dom = d.day in self.dom
        in_dow = (d.weekday() + 1) % 7 in self.dow
        return (in_dom or in_dow) if self.day_or else (in_dom and in_dow)

    def _next_wall(self, t: datetime) -> datetime:
        """The first matching naive wall-clock time at or after ``t`` (whole minutes)."""
        t = t.replace(second=0, microsecond=0)
        limit = t.year + 30  # parse-time checks guarantee a match within 8 years (Feb 29)
        while t.year <= limit:
            if t.month not in self.months:
                i = bisect.bisect_left(self.months, t.month)
                t = (
                    t.replace(month=self.months[i], day=1, hour=0, minute=0)
                    if i < len(self.months)
                    else t.replace(year=t.year + 1, month=self.months[0], day=1, hour=0, minute=0)
                )
                continue
            if not self._day_matches(t):
                t = (t + timedelta(days=1)).replace(hour=0, minute=0)
                continue
            if t.hour not in self.hours:
                i = bisect.bisect_left(self.hours, t.hour)
                if i < len(self.hours):
                    t = t.replace(hour=self.hours[i], minute=0)
                else:
                    t = (t + timedelta(days=1)).replace(hour=0, minute=0)
                continue
            if t.minute not in self.minutes:
                i = bisect.bisect_left(self.minutes, t.minute)
                if i < len(self.minutes):
                    t = t.replace(minute=self.minutes[i])
                else:
                    t = (t + timedelta(hours=1)).replace(minute=0)
                continue
            return t
        raise RuntimeError(f"cron spec {self.spec!r} found no fire time before {limit}")  # pragma: no cover

    def _instants(self, wall: datetime) -> list[datetime]:
        first = wall.replace(tzinfo=self.tz, fold=0)
        if first.astimezone(_UTC).astimezone(self.tz).replace(tzinfo=None) != wall:
            return []  # skipped by a spring-forward change
        second = wall.replace(tzinfo=self.tz, fold=1)
        if self.hour_star and second.utcoffset() != first.utcoffset():
            return [first, second]  # repeated by a fall-back change
        return [first]

    def next(self, after: datetime) -> datetime:
        """The first fire time strictly after ``after``, in the schedule's zone."""
        after = _aware(after)
        local = after.astimezone(self.tz).replace(tzinfo=None)
        if self._fixed_offset:  # no DST: wall clock and instants are in the same order
            return self._next_fixed(after, local)
        # Around a fall-back change an earlier wall-clock time can be a later instant, so look
        # from a little before and keep the earliest instant found within the fold window.
        # Instants are compared in UTC: aware datetimes sharing a tzinfo compare by wall clock.
        wall = self._next_wall(local - _FOLD)
        best: datetime | None = None
        horizon: datetime | None = None
        while horizon is None or wall <= horizon:
            for inst in self._instants(wall):
                utc = inst.astimezone(_UTC)
                if utc > after and (best is None or utc < best):
                    best = utc
                    if horizon is None:
                        horizon = wall + _FOLD
            wall = self._next_wall(wall + _MINUTE)
        assert best is not None
        return best.astimezone(self.tz)

    def _next_fixed(self, after: datetime, local: datetime) -> datetime:
        wall = self._next_wall(local)
        inst = wall.replace(tzinfo=self.tz)
        if inst <= after:
            inst = self._next_wall(wall + _MINUTE).replace(tzinfo=self.tz)
        return inst


class EverySchedule(Schedule):
    """``@every <duration>``: fires at whole multiples of the interval since the Unix epoch.

    :param seconds: the interval, in whole seconds (at least 1).
    """

    def __init__(self, spec: str, tz: tzinfo, seconds: int) -> None:
        super().__init__(spec, tz)
        self.seconds = seconds

    @property
    def interval(self) -> timedelta:
        """The interval between two ticks."""
        return timedelta(seconds=self.seconds)

    def next(self, after: datetime) -> datetime:
        """The first multiple of the interval (counted from the epoch) strictly after ``after``."""
        after = _aware(after)
        epoch = datetime(1970, 1, 1, tzinfo=_UTC)
        delta = after - epoch
        whole = delta.days * 86400 + delta.seconds
        k = whole // self.seconds + 1
        return (epoch + timedelta(seconds=k * self.seconds)).astimezone(self.tz)


# Go's time.ParseDuration units, in nanoseconds.
_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]+)")


def parse_go_duration(text: str) -> int:
    """Parse a Go duration (``1h30m``, ``1.5s``, ``300ms``) into nanoseconds.

    :raises ValueError: not a Go duration.
    """
    s = text
    sign = 1
    if s[:1] in "+-" and s:
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total = 0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None or (not m.group(1) and not m.group(2)):
            raise ValueError(f"invalid duration {text!r}")
        whole, frac, unit = m.group(1), m.group(2) or "", m.group(3)
        if unit not in _UNITS:
            raise ValueError(f"unknown unit {unit!r} in duration {text!r} (use ns, us, ms, s, m or h, e.g. 1m30s)")
        scale = _UNITS[unit]
        total += int(whole or 0) * scale
        if frac:
            total += int(frac) * scale // 10 ** len(frac)
        pos = m.end()
    if total > 2**63 - 1:
        raise ValueError(f"duration {text!r} is out of range")
    return sign * total


def _never_fires(dom: frozenset[int], months: list[int]) -> bool:
    return all(min(dom) > _DAYS_IN_MONTH[m - 1] for m in months)


def parse_cron(spec: str, timezone: str | tzinfo = "UTC") -> Schedule:
    """Parse a cron spec as Go Machinery's ``RegisterPeriodicTask`` accepts it.

    :param spec: ``"0 6 * * ?"``, ``"*/5 * * * MON-FRI"``, ``"@daily"``, ``"@every 10s"``,
        ``"CRON_TZ=Europe/Paris 0 6 * * *"``...
    :param timezone: the zone of the wall-clock fields when the spec has no ``CRON_TZ=``/``TZ=``
        prefix (an IANA name or a ``tzinfo``); UTC by default.
    :returns: a :class:`Schedule` whose :meth:`~Schedule.next` gives the fire times.
    :raises CronSpecError: the spec is invalid or never fires; the message quotes it.
    :raises ConfigError: ``timezone`` is not a known zone.
    """
    if not isinstance(spec, str):
        raise CronSpecError(repr(spec), f"expected a string, got {type(spec).__name__}")
    tz = timezone if isinstance(timezone, tzinfo) else resolve_timezone(timezone)
    rest = spec.strip()
    if not rest:
        raise CronSpecError(spec, "empty spec")
    if rest.startswith(("CRON_TZ=", "TZ=")):
        prefix, _, rest = rest.partition(" ")
        zone = prefix.partition("=")[2]
        rest = rest.strip()
        if not zone:
            raise CronSpecError(spec, f"{prefix.partition('=')[0]}= names no time zone")
        try:
            tz = resolve_timezone(zone)
        except ConfigError as exc:
            raise CronSpecError(spec, exc.reason) from None
        if not rest:
            raise CronSpecError(spec, f"nothing follows the {prefix} prefix")
    if rest.startswith("@"):
        word, _, arg = rest.partition(" ")
        word = word.lower()
        if word == "@every":
            arg = arg.strip()
            if not arg:
                raise CronSpecError(spec, "@every needs a duration, e.g. '@every 10s' or '@every 1h30m'")
            try:
                nanos = parse_go_duration(arg)
            except ValueError as exc:
                raise CronSpecError(spec, str(exc)) from None
            if nanos <= 0:
                raise CronSpecError(spec, f"the @every interval must be positive, got {arg!r}")
            return EverySchedule(spec, tz, max(1, nanos // 10**9))
        if word not in _DESCRIPTORS or arg.strip():
            known = ", ".join([*_DESCRIPTORS, "@every <duration>"])
            raise CronSpecError(spec, f"unknown descriptor {rest!r}; known: {known}")
        rest = _DESCRIPTORS[word]
    fields = rest.split()
    if len(fields) != 5:
        raise CronSpecError(
            spec,
            f"expected exactly 5 fields (minute hour day-of-month month day-of-week), found {len(fields)}",
        )
    try:
        parsed = [_parse_field(text, f) for text, f in zip(fields, _FIELDS)]
    except ValueError as exc:
        raise CronSpecError(spec, str(exc)) from None
    (minutes, _), (hours, hour_star), (dom, dom_star), (months, _), (dow, dow_star) = parsed
    if dow_star and _never_fires(dom, sorted(months)):
        raise CronSpecError(spec, "it never fires: no selected month has the selected day of month")
    return CronSchedule(
        spec, tz, minutes, hours, dom, months, dow, dom_star=dom_star, dow_star=dow_star, hour_star=hour_star
    )
