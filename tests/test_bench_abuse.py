"""`python -m bench.abuse` starts, and its attacks stay within the relay's default limits.

The attacks themselves are a benchmark (bench/README.md), never run here: these only check
that the module loads and that what it sends is what issue 12 describes, frames within the
default size limits (no Session: its API is the part being rewritten), so that a refusal
can only come from a budget.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench import abuse
from relay.core.event import event_from_raw
from relay.core.limits import Limits
from relay.core.messages import EventMessage, ReqMessage, parse_message
from relay.core.policy import check_write, default_write_checks

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


def within_default_limits(frames: list[bytes]) -> list[ReqMessage]:
    """The REQs, checked against the size limits a relay had before any budget."""
    limits = Limits()
    assert len(frames) <= limits.max_subscriptions
    reqs = []
    for frame in frames:
        assert len(frame) <= limits.max_message_length
        message = parse_message(frame)
        assert isinstance(message, ReqMessage)
        assert len(message.filters) <= limits.max_filters
        for flt in message.filters:
            for _, tag_values in flt.tags:
                assert len(tag_values) <= limits.max_filter_values
        reqs.append(message)
    return reqs


def test_live_filter_reqs_fit_the_default_limits_with_distinct_values() -> None:
    values: set[str] = set()
    frames = abuse.distinct_tag_reqs(0)
    assert len(frames) == abuse.LIVE_REQS
    for message in within_default_limits(frames):
        for flt in message.filters:
            (tag_values,) = [v for name, v in flt.tags if name == "t"]
            assert len(tag_values) == abuse.LIVE_VALUES
            values |= tag_values
    assert len(values) == abuse.LIVE_REQS * abuse.LIVE_FILTERS * abuse.LIVE_VALUES


def test_big_notes_are_about_124_kb_and_acceptable_by_default() -> None:
    limits = Limits()
    checks = default_write_checks(limits)
    notes = abuse.big_notes(2)
    assert notes[0] != notes[1]
    for raw in notes:
        assert 120_000 < len(raw) <= limits.max_event_size
        frame = b'["EVENT",' + raw + b"]"
        assert len(frame) <= limits.max_message_length
        message = parse_message(frame)
        assert isinstance(message, EventMessage)
        check_write(checks, event_from_raw(raw), int(time.time()))


def test_never_matching_filters_fit_the_default_limits_and_all_differ() -> None:
    seen = set()
    for connection in range(2):
        frames = abuse.future_since_reqs(connection)
        assert len(frames) == abuse.TAX_SUBSCRIPTIONS
        for message in within_default_limits(frames):
            for flt in message.filters:
                assert flt.kinds == frozenset({1})
                assert flt.since is not None
                assert flt.since >= 2**40
                seen.add(flt)
    assert len(seen) == 2 * abuse.TAX_SUBSCRIPTIONS * abuse.TAX_FILTERS
