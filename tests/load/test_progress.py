"""Load progress: the exact lines on a terminal and in a log, driven by a fake clock."""

from __future__ import annotations

import io

import pytest

from fhir_server.load.progress import Progress, format_duration, summary
from fhir_server.load.sources import LoadError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_output_prints_a_line_every_ten_intervals() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(900, out, clock=clock)
    clock.now = 5.0
    progress.advance(100, 100)
    clock.now = 9.9
    progress.advance(0, 0)
    assert out.getvalue() == ""
    clock.now = 10.0
    # The rate is over the last five seconds: 250 resources and 200 bytes since t=5.
    progress.advance(250, 200)
    assert out.getvalue() == "loaded 350 resources (50/s), 33% of input, ETA 0:00:15, 0 errors\n"
    clock.now = 12.0
    progress.advance(10, 0, errors=1)
    clock.now = 20.0
    progress.advance(40, 600)
    clock.now = 21.0
    progress.finish()
    progress.finish()
    assert out.getvalue().splitlines() == [
        "loaded 350 resources (50/s), 33% of input, ETA 0:00:15, 0 errors",
        # Since t=12 (the newest sample at or before t=15): 40 resources and 600 bytes in 8 s.
        "loaded 400 resources (5/s), 100% of input, ETA 0:00:00, 1 error",
        "loaded 400 resources (19/s), 100% of input, 1 error",
    ]


def test_terminal_output_redraws_one_line() -> None:
    clock, out = FakeClock(), FakeTerminal()
    progress = Progress(1000, out, clock=clock)
    clock.now = 0.5
    progress.advance(10, 10)
    assert out.getvalue() == ""
    clock.now = 1.0
    progress.advance(10, 10)
    first = "loaded 20 resources (20/s), 2% of input, ETA 0:00:49, 0 errors"
    assert out.getvalue() == "\r" + first
    clock.now = 2.0
    progress.advance(0, 0, errors=1)
    # One character shorter ("1 error"): a blank overwrites what the last line left behind.
    second = "loaded 20 resources (10/s), 2% of input, ETA 0:01:38, 1 error"
    assert out.getvalue() == f"\r{first}\r{second} "
    clock.now = 4.0
    progress.finish()
    final = "loaded 20 resources (5/s), 2% of input, 1 error"
    assert out.getvalue() == f"\r{first}\r{second} \r{final}{' ' * (len(second) - len(final))}\n"


def test_without_a_total_there_is_no_percentage_or_eta() -> None:
    clock, out = FakeClock(), FakeTerminal()
    progress = Progress(None, out, clock=clock)
    clock.now = 1.0
    progress.advance(1, 500)
    progress.finish()
    assert out.getvalue() == "\rloaded 1 resource (1/s), 0 errors\rloaded 1 resource (1/s), 0 errors\n"


def test_nothing_moving_shows_no_rate_or_eta() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(100, out, tty=False, interval_s=0.1, clock=clock)
    clock.now = 1.0
    progress.advance(0, 0)
    progress.finish()
    assert out.getvalue().splitlines() == [
        "loaded 0 resources (0/s), 0% of input, ETA -:--:--, 0 errors",
        "loaded 0 resources (0/s), 0% of input, 0 errors",
    ]
    instant = io.StringIO()
    Progress(100, instant, clock=clock).finish()
    assert instant.getvalue() == "loaded 0 resources (-/s), 0% of input, 0 errors\n"


def test_tty_can_be_forced_and_defaults_to_standard_error(capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    progress = Progress(None, tty=True, clock=clock)
    progress.finish()
    assert capsys.readouterr().err == "\rloaded 0 resources (-/s), 0 errors\n"


def test_summary_lists_counts_by_type_then_errors() -> None:
    errors = [
        LoadError("/data/a.json", None, "invalid JSON: Expecting value at line 1 column 1"),
        LoadError("/data/b.tgz:fhir/p.json", 3, "Patient.gender: unknown code 'x'"),
    ]
    text = summary({"Patient": 100, "Observation": 16315, "Device": 4}, errors, 62.4)
    assert text == "\n".join([
        "loaded 16419 resources in 0:01:02 (263/s)",
        "  Device           4",
        "  Observation  16315",
        "  Patient        100",
        "  total        16419",
        "2 errors:",
        "  /data/a.json: invalid JSON: Expecting value at line 1 column 1",
        "  /data/b.tgz:fhir/p.json [entry 3]: Patient.gender: unknown code 'x'",
    ])


def test_summary_of_nothing() -> None:
    assert summary({}, [], 0.0) == "loaded 0 resources in 0:00:00\n  total  0\nno errors"


def test_summary_caps_the_error_listing() -> None:
    errors = [LoadError("/data/o.ndjson", line, "not a FHIR resource") for line in range(1, 54)]
    lines = summary({"Patient": 1}, errors, 1.0).splitlines()
    assert lines[3] == "53 errors:"
    assert lines[4] == "  /data/o.ndjson [entry 1]: not a FHIR resource"
    assert lines[53] == "  /data/o.ndjson [entry 50]: not a FHIR resource"
    assert lines[54:] == ["  ... and 3 more"]
    assert summary({}, errors, 1.0, max_errors=2).splitlines()[-1] == "  ... and 51 more"


@pytest.mark.parametrize(("seconds", "text"), [(0, "0:00:00"), (59.6, "0:01:00"), (3725, "1:02:05"), (-1, "0:00:00")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
