"""The cron parser: a table of specs and their next fire times, and a table of invalid specs."""

from __future__ import annotations

import itertools
import pickle
from datetime import datetime, timedelta, timezone

import pytest

from machinery.cron import CronSpecError, EverySchedule, parse_cron, parse_go_duration, resolve_timezone
from machinery.errors import ConfigError

UTC = timezone.utc


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[arg-type,misc]


def fires(spec: str, after: datetime, n: int, tz: str = "UTC") -> list[datetime]:
    sched = parse_cron(spec, tz)
    out = []
    t = after
    for _ in range(n):
        t = sched.next(t)
        out.append(t.astimezone(UTC))
    return out


# (spec, after, expected next fire times in UTC)
TABLE: list[tuple[str, datetime, list[datetime]]] = [
    # the seed documents' spec: 06:00 every day ("?" is "*")
    ("0 6 * * ?", utc(2024, 1, 30, 7, 0), [utc(2024, 1, 31, 6), utc(2024, 2, 1, 6), utc(2024, 2, 2, 6)]),
    # strictly after: a fire time is not its own next
    ("0 6 * * *", utc(2024, 1, 31, 6, 0), [utc(2024, 2, 1, 6)]),
    ("0 6 * * *", utc(2024, 1, 31, 5, 59, 59, 999999), [utc(2024, 1, 31, 6)]),
    # naive times are UTC
    ("0 6 * * *", datetime(2024, 1, 31, 5, 0), [utc(2024, 1, 31, 6)]),
    # year rollover
    ("*/15 * * * *", utc(2024, 12, 31, 23, 50), [utc(2025, 1, 1, 0, 0), utc(2025, 1, 1, 0, 15)]),
    ("59 23 31 12 *", utc(2024, 12, 31, 23, 59), [utc(2025, 12, 31, 23, 59)]),
    # month ends: the 31st skips 30-day months and February
    (
        "0 0 31 * *",
        utc(2024, 1, 31, 0, 0),
        [utc(2024, 3, 31), utc(2024, 5, 31), utc(2024, 7, 31), utc(2024, 8, 31), utc(2024, 10, 31)],
    ),
    ("0 0 30 * *", utc(2024, 1, 30, 0, 0), [utc(2024, 3, 30), utc(2024, 4, 30)]),
    ("0 12 28-31 2 *", utc(2023, 2, 27), [utc(2023, 2, 28, 12), utc(2024, 2, 28, 12), utc(2024, 2, 29, 12)]),
    # Feb 29: leap years only, and 2100 is not one
    ("0 0 29 2 *", utc(2023, 1, 1), [utc(2024, 2, 29), utc(2028, 2, 29)]),
    ("0 0 29 2 *", utc(2096, 3, 1), [utc(2104, 2, 29)]),
    ("0 0 29 2 *", utc(1999, 3, 1), [utc(2000, 2, 29)]),
    # ranges, steps, lists
    (
        "5/20 * * * *",
        utc(2024, 5, 1, 10, 0),
        [utc(2024, 5, 1, 10, 5), utc(2024, 5, 1, 10, 25), utc(2024, 5, 1, 10, 45)],
    ),
    ("10-50/20 8 * * *", utc(2024, 5, 1, 8, 30), [utc(2024, 5, 1, 8, 50), utc(2024, 5, 2, 8, 10)]),
    (
        "0 9-17/4 * * *",
        utc(2024, 5, 1),
        [utc(2024, 5, 1, 9), utc(2024, 5, 1, 13), utc(2024, 5, 1, 17), utc(2024, 5, 2, 9)],
    ),
    ("0 0 1,15 * *", utc(2024, 5, 2), [utc(2024, 5, 15), utc(2024, 6, 1)]),
    ("7,3,5 1 * * *", utc(2024, 5, 1, 1, 3), [utc(2024, 5, 1, 1, 5), utc(2024, 5, 1, 1, 7), utc(2024, 5, 2, 1, 3)]),
    ("*/20 * * * *", utc(2024, 5, 1, 1, 41), [utc(2024, 5, 1, 2, 0)]),
    ("0 0 1-5,25-31/3 * *", utc(2024, 4, 5), [utc(2024, 4, 25), utc(2024, 4, 28), utc(2024, 5, 1)]),
    # month and weekday names, any case, in ranges
    ("0 0 1 JAN,jul *", utc(2024, 2, 1), [utc(2024, 7, 1), utc(2025, 1, 1)]),
    ("0 12 * * MON-FRI", utc(2024, 3, 1, 13), [utc(2024, 3, 4, 12), utc(2024, 3, 5, 12)]),  # Fri -> Mon
    ("30 2 * feb-Mar sun", utc(2024, 1, 1), [utc(2024, 2, 4, 2, 30), utc(2024, 2, 11, 2, 30)]),
    ("0 0 * * 0", utc(2024, 3, 6), [utc(2024, 3, 10)]),  # 0 is Sunday
    ("0 0 * * 6", utc(2024, 3, 6), [utc(2024, 3, 9)]),
    # both day fields restricted: either matches (Friday, or the 13th)
    ("0 0 13 * FRI", utc(2024, 9, 1), [utc(2024, 9, 6), utc(2024, 9, 13), utc(2024, 9, 20)]),
    ("0 0 1 * MON", utc(2024, 3, 26), [utc(2024, 4, 1), utc(2024, 4, 8)]),
    # one day field starts with * or ?: both must match (Mondays that are the 1st, 11th, 21st or 31st)
    ("0 0 */10 * MON", utc(2024, 1, 1, 1), [utc(2024, 3, 11)]),
    ("0 0 ? * MON", utc(2024, 3, 6), [utc(2024, 3, 11)]),
    ("0 0 13 * ?", utc(2024, 3, 6), [utc(2024, 3, 13)]),
    # descriptors
    ("@yearly", utc(2024, 6, 1), [utc(2025, 1, 1), utc(2026, 1, 1)]),
    ("@annually", utc(2024, 12, 31, 23, 59, 59), [utc(2025, 1, 1)]),
    ("@monthly", utc(2024, 1, 31, 0, 0, 1), [utc(2024, 2, 1), utc(2024, 3, 1)]),
    ("@weekly", utc(2024, 3, 6), [utc(2024, 3, 10), utc(2024, 3, 17)]),  # Sundays
    ("@daily", utc(2024, 2, 28, 10), [utc(2024, 2, 29), utc(2024, 3, 1)]),
    ("@midnight", utc(2023, 2, 28, 10), [utc(2023, 3, 1)]),
    ("@hourly", utc(2024, 12, 31, 23, 0), [utc(2025, 1, 1, 0), utc(2025, 1, 1, 1)]),
    # @every: whole multiples of the interval since the Unix epoch
    ("@every 1s", utc(2024, 5, 1, 12, 0, 0, 500000), [utc(2024, 5, 1, 12, 0, 1), utc(2024, 5, 1, 12, 0, 2)]),
    ("@every 1s", utc(2024, 5, 1, 12, 0, 1), [utc(2024, 5, 1, 12, 0, 2)]),
    ("@every 10s", utc(2024, 5, 1, 12, 0, 3), [utc(2024, 5, 1, 12, 0, 10), utc(2024, 5, 1, 12, 0, 20)]),
    ("@every 1m30s", utc(2024, 5, 1, 0, 0, 59), [utc(2024, 5, 1, 0, 1, 30), utc(2024, 5, 1, 0, 3)]),
    ("@every 1h", utc(2024, 5, 1, 10, 20), [utc(2024, 5, 1, 11), utc(2024, 5, 1, 12)]),
    ("@every 24h", utc(2024, 12, 31, 10), [utc(2025, 1, 1)]),
    ("@every 1.5s", utc(2024, 5, 1, 0, 0, 0, 100), [utc(2024, 5, 1, 0, 0, 1)]),  # Go truncates to 1s
    ("@every 500ms", utc(2024, 5, 1, 0, 0, 0, 100), [utc(2024, 5, 1, 0, 0, 1)]),  # Go's minimum is 1s
    # time zones without DST: CRON_TZ= / TZ= prefixes
    ("CRON_TZ=Asia/Tokyo 0 9 * * *", utc(2024, 5, 1, 1), [utc(2024, 5, 2, 0), utc(2024, 5, 3, 0)]),
    ("TZ=Asia/Kolkata 0 0 * * *", utc(2024, 5, 1, 12), [utc(2024, 5, 1, 18, 30)]),
    ("TZ=UTC @daily", utc(2024, 5, 1, 12), [utc(2024, 5, 2)]),
    ("CRON_TZ=Asia/Tokyo @daily", utc(2024, 12, 31, 14, 59), [utc(2024, 12, 31, 15)]),
    ("  0   6 * *  *  ", utc(2024, 1, 1), [utc(2024, 1, 1, 6)]),
]


@pytest.mark.parametrize(("spec", "after", "expected"), TABLE, ids=[f"{i}:{row[0]}" for i, row in enumerate(TABLE)])
def test_next_fire_times(spec: str, after: datetime, expected: list[datetime]) -> None:
    assert fires(spec, after, len(expected)) == expected


def test_next_returns_aware_times_in_the_schedule_zone() -> None:
    nxt = parse_cron("0 9 * * *", "Asia/Tokyo").next(utc(2024, 5, 1, 1))
    assert nxt.utcoffset() == timedelta(hours=9)
    assert (nxt.hour, nxt.minute) == (9, 0)
    assert parse_cron("0 9 * * *").next(utc(2024, 5, 1, 1)).tzinfo is UTC


def test_configured_timezone_applies_unless_the_spec_names_one() -> None:
    assert fires("0 9 * * *", utc(2024, 5, 1, 1), 1, tz="Asia/Tokyo") == [utc(2024, 5, 2, 0)]
    assert fires("CRON_TZ=UTC 0 9 * * *", utc(2024, 5, 1, 1), 1, tz="Asia/Tokyo") == [utc(2024, 5, 1, 9)]
    # @every ignores zones: its ticks are instants
    assert fires("@every 1h", utc(2024, 5, 1, 1, 30), 1, tz="Asia/Kolkata") == [utc(2024, 5, 1, 2)]


def test_utc_schedule_every_minute_for_a_whole_leap_day() -> None:
    sched = parse_cron("* * * * *")
    t = utc(2024, 2, 28, 23, 59)
    seen = []
    for _ in range(24 * 60 + 1):
        t = sched.next(t)
        seen.append(t)
    assert seen[0] == utc(2024, 2, 29, 0, 0)
    assert seen[-1] == utc(2024, 3, 1, 0, 0)
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(seen))


# -- DST (documented behaviour: skipped wall times do not fire; repeated ones fire once
#    unless the hour field is *) -------------------------------------------------------------


def test_dst_spring_forward_skips_the_missing_wall_time() -> None:
    # 2024-03-10 02:30 does not exist in New York
    assert fires("CRON_TZ=America/New_York 30 2 * * *", utc(2024, 3, 9, 8), 2) == [
        utc(2024, 3, 11, 6, 30),
        utc(2024, 3, 12, 6, 30),
    ]


def test_dst_fall_back_fires_a_fixed_time_once() -> None:
    # 2024-11-03 01:30 happens twice in New York; a daily 01:30 job fires at the first
    assert fires("CRON_TZ=America/New_York 30 1 * * *", utc(2024, 11, 2, 12), 2) == [
        utc(2024, 11, 3, 5, 30),
        utc(2024, 11, 4, 6, 30),
    ]


def test_dst_fall_back_keeps_sub_hourly_rhythm() -> None:
    got = fires("CRON_TZ=America/New_York */30 * * * *", utc(2024, 11, 3, 4, 10), 6)
    assert got == [utc(2024, 11, 3, 4, 30) + timedelta(minutes=30 * i) for i in range(6)]


# -- invalid specs ---------------------------------------------------------------------------

INVALID = [
    ("", "empty spec"),
    ("   ", "empty spec"),
    ("* * * *", "expected exactly 5 fields"),
    ("0 * * * * *", "found 6"),
    ("60 * * * *", "minute field '60': 60 is above the maximum 59"),
    ("* 24 * * *", "hour field '24': 24 is above the maximum 23"),
    ("* * 0 * *", "day-of-month field '0': 0 is below the minimum 1"),
    ("* * 32 * *", "above the maximum 31"),
    ("* * * 13 *", "month field '13'"),
    ("* * * * 7", "use 0 or SUN for Sunday"),
    ("* * * * MON-SUN", "the range starts (1) after it ends (0)"),
    ("5-1 * * * *", "the range starts (5) after it ends (1)"),
    ("*/0 * * * *", "the step must be a positive number"),
    ("*/ * * * *", "missing step"),
    ("1/2/3 * * * *", "more than one '/'"),
    ("1-2-3 * * * *", "more than one '-'"),
    ("1- * * * *", "incomplete range"),
    ("-1 * * * *", "incomplete range"),
    ("1,,2 * * * *", "empty list item"),
    ("a * * * *", "minute field: value 'a' is not a number"),
    ("* * * FOO *", "not a number or a name (JAN"),
    ("* * * * MONDAY", "not a number or a name (SUN"),
    ("MON * * * *", "value 'MON' is not a number"),
    ("*/x * * * *", "step 'x' is not a number"),
    ("0 0 30 2 *", "never fires"),
    ("0 0 31 4,6,9,11 *", "never fires"),
    ("@fortnightly", "unknown descriptor '@fortnightly'"),
    ("@daily 5", "unknown descriptor"),
    ("@every", "@every needs a duration"),
    ("@every 10", "invalid duration '10'"),
    ("@every 5x", "unknown unit 'x'"),
    ("@every 0s", "must be positive"),
    ("@every -5s", "must be positive"),
    ("@every 1h-5m", "unknown unit"),
    ("CRON_TZ=Mars/Olympus 0 6 * * *", "unknown time zone 'Mars/Olympus'"),
    ("TZ= 0 6 * * *", "TZ= names no time zone"),
    ("CRON_TZ=UTC", "nothing follows the CRON_TZ=UTC prefix"),
]


@pytest.mark.parametrize(("spec", "message"), INVALID, ids=[row[0] or "<empty>" for row in INVALID])
def test_invalid_spec_is_a_config_error_quoting_the_spec(spec: str, message: str) -> None:
    with pytest.raises(CronSpecError) as info:
        parse_cron(spec)
    err = info.value
    assert isinstance(err, ConfigError)
    assert str(err).startswith(f"invalid cron spec {spec!r}: ")
    assert message in str(err)
    assert err.spec == spec


def test_non_string_spec() -> None:
    with pytest.raises(CronSpecError, match="expected a string, got int"):
        parse_cron(5)  # type: ignore[arg-type]


def test_spec_error_pickles() -> None:
    with pytest.raises(CronSpecError) as info:
        parse_cron("61 * * * *")
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value)
    assert copy.spec == "61 * * * *"


def test_bad_configured_timezone() -> None:
    with pytest.raises(ConfigError, match="unknown time zone 'Nowhere/City'"):
        parse_cron("0 6 * * *", "Nowhere/City")
    with pytest.raises(ConfigError, match="expected an IANA time zone name"):
        resolve_timezone("")


def test_utc_names_need_no_tz_database() -> None:
    for name in ("UTC", "utc", "Etc/UTC"):
        assert resolve_timezone(name) is UTC


def test_every_interval() -> None:
    sched = parse_cron("@every 2h45m")
    assert isinstance(sched, EverySchedule)
    assert sched.interval == timedelta(hours=2, minutes=45)


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("0", 0),
        ("1s", 10**9),
        ("1m30s", 90 * 10**9),
        ("1.5h", 5400 * 10**9),
        ("2h45m", (2 * 3600 + 45 * 60) * 10**9),
        ("300ms", 300 * 10**6),
        ("1us", 1000),
        ("1µs", 1000),
        ("10ns", 10),
        (".5s", 5 * 10**8),
        ("1.s", 10**9),
        ("+5s", 5 * 10**9),
        ("-1m", -60 * 10**9),
    ],
)
def test_go_durations(text: str, nanos: int) -> None:
    assert parse_go_duration(text) == nanos


@pytest.mark.parametrize("text", ["", "s", "1", "1.5", ".s", "1d", "1 s", "5s3"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)
