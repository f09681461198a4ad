"""`python -m bench.abuse` starts, and its attacks stay within the relay's default limits.

The attacks themselves are a benchmark (bench/README.md), never run here: these only check
that the module loads and that what it sends is what issue 12 describes, a frame the relay
accepts with its default limits, so that a refusal can only come from a budget.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench import abuse
from relay.core.event import event_from_raw
from relay.core.limits import Limits
from relay.core.messages import EventMessage, ReqMessage
from relay.core.policy import check_write, default_write_checks
from relay.core.session import Session

ROOT = Path(__file__).resolve().parent.parent


def test_help_names_the_attack_option() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.abuse", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--only N" in result.stdout


def test_live_filter_reqs_fit_the_default_limits_with_distinct_values() -> None:
    session = Session(Limits())
    values: set[str] = set()
    frames = abuse.distinct_tag_reqs(0)
    assert len(frames) == abuse.LIVE_REQS
    for frame in frames:
        message = session.receive(frame)
        assert isinstance(message, ReqMessage)
        session.open(message)
        for flt in message.filters:
            (tag_values,) = [v for name, v in flt.tags if name == "t"]
            assert len(tag_values) == abuse.LIVE_VALUES
            values |= tag_values
    assert len(values) == abuse.LIVE_REQS * abuse.LIVE_FILTERS * abuse.LIVE_VALUES


def test_big_notes_are_about_124_kb_and_acceptable_by_default() -> None:
    limits = Limits()
    session = Session(limits)
    checks = default_write_checks(limits)
    notes = abuse.big_notes(2)
    assert notes[0] != notes[1]
    for raw in notes:
        assert 120_000 < len(raw) <= limits.max_event_size
        message = session.receive(b'["EVENT",' + raw + b"]")
        assert isinstance(message, EventMessage)
        check_write(checks, event_from_raw(raw), int(time.time()))


def test_never_matching_filters_fit_the_default_limits_and_all_differ() -> None:
    seen = set()
    for connection in range(2):
        session = Session(Limits())
        frames = abuse.future_since_reqs(connection)
        assert len(frames) == abuse.TAX_SUBSCRIPTIONS
        for frame in frames:
            message = session.receive(frame)
            assert isinstance(message, ReqMessage)
            session.open(message)
            for flt in message.filters:
                assert flt.kinds == frozenset({1})
                assert flt.since is not None
                assert flt.since >= 2**40
                seen.add(flt)
    assert len(seen) == 2 * abuse.TAX_SUBSCRIPTIONS * abuse.TAX_FILTERS
