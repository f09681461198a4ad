"""hypothesis fuzzing: the sans-I/O parser never fails other than with a client error, and
the live server answers every frame, stays up, and leaves other connections alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from relay.core.errors import MessageError
from relay.core.limits import Limits
from relay.core.session import Send, Session, SessionPolicy, read_frame
from tests.conftest import RelayProcess
from tests.nostr import Keys

KEYS = Keys()
LONE_SURROGATES = st.sampled_from(["\ud800", "\udfff", "a\udc80b"])
VERBS = st.sampled_from(["EVENT", "REQ", "CLOSE", "COUNT", "AUTH", "NEG-OPEN", "", "event"])
FIELDS = st.sampled_from(
    [
        "id",
        "pubkey",
        "created_at",
        "kind",
        "tags",
        "content",
        "sig",
        "ids",
        "authors",
        "kinds",
        "#e",
        "#t",
        "since",
        "until",
        "limit",
        "search",
    ]
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**70),
    st.just(10**400),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    LONE_SURROGATES,
    st.just("ab" * 32),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(FIELDS, st.text(max_size=5)), inner, max_size=5),
    ),
    max_leaves=20,
)


@st.composite
def mutated_event(draw: st.DrawFn) -> dict[str, Any]:
    """A valid signed event with a field replaced, removed or added."""
    event: dict[str, Any] = KEYS.sign(content=draw(st.text(max_size=10)))
    field = draw(FIELDS)
    choice = draw(st.sampled_from(["replace", "remove", "keep"]))
    if choice == "replace":
        event[field] = draw(values)
    elif choice == "remove":
        event.pop(field, None)
    return event


messages = st.one_of(
    st.lists(values, max_size=4).map(lambda rest: ["EVENT", *rest]),
    st.tuples(VERBS, st.lists(values, max_size=4)).map(lambda t: [t[0], *t[1]]),
    mutated_event().map(lambda e: ["EVENT", e]),
    st.lists(st.dictionaries(FIELDS, values, max_size=4), max_size=3).map(
        lambda fs: ["REQ", "fuzz", *fs]
    ),
    values,
)


def encode(message: Any, ascii_only: bool) -> str:
    # ensure_ascii escapes lone surrogates as \udXXX; without it they stay raw in the str.
    return json.dumps(message, ensure_ascii=ascii_only)


depths = st.one_of(
    st.integers(min_value=1, max_value=5000),
    # Around Python's recursion limit and orjson's nesting limit of 1024.
    st.integers(min_value=900, max_value=1100),
)
nesting = depths.map(lambda depth: "[" * depth + "]" * depth)
garbage_text = st.one_of(
    st.text(max_size=50),
    nesting,
    st.just('["EVENT",' * 3000),
    depths.map(lambda depth: "[" * depth + '"EVENT"' + "]" * depth),
    depths.map(lambda depth: '["REQ","s",' + '{"a":' * depth + "1" + "}" * depth + "]"),
    st.just('{"a":' * 2000 + "1" + "}" * 2000),
)
frames = st.one_of(
    st.tuples(messages, st.booleans()).map(lambda t: encode(*t)),
    garbage_text,
)


# --- the sans-I/O parser -------------------------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(frame=frames)
@example(frame='["REQ", "fuzz", {"ids": []}]')
def test_session_answers_every_frame_with_actions_never_an_exception(frame: str) -> None:
    session = Session(SessionPolicy(limits=Limits(max_message_length=65536)))
    for action in session.receive(frame, 1_700_000_000.0):
        if not isinstance(action, Send):
            continue
        for reply in map(orjson.loads, action.frames):
            if reply[0] == "EOSE":
                # A well-formed REQ no event can match (`"ids": []`) ends at once.
                assert reply == ["EOSE", orjson.loads(frame)[1]]
                continue
            assert reply[0] in ("OK", "CLOSED", "NOTICE")
            # Never `error:`: that is the answer to a bug of ours.
            assert reply[-1].split(": ", 1)[0] in ("invalid", "unsupported")


@settings(max_examples=100, deadline=None)
@given(frame=st.binary(max_size=200))
def test_parser_takes_any_bytes(frame: bytes) -> None:
    with suppress(MessageError):
        read_frame(frame, Limits())


# --- the live server -----------------------------------------------------------------------


def next_reply(ws: ClientConnection) -> Any:
    """The next frame that is not the NIP-42 challenge every connection gets first."""
    while True:
        reply = orjson.loads(ws.recv(timeout=10))
        if reply[0] != "AUTH":
            return reply


def close_code(ws: ClientConnection) -> int | None:
    """Read until the relay closes the connection; the code it closed with."""
    try:
        while True:
            next_reply(ws)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


class Bystander:
    """A normal client pair: one publishes, the other is subscribed and must see it."""

    def __init__(self, url: str) -> None:
        self.connections = ExitStack()
        self.publisher = self.connections.enter_context(connect(url, open_timeout=5))
        self.watcher = self.connections.enter_context(connect(url, open_timeout=5))
        self.keys = Keys()
        self.count = 0
        self.watcher.send(orjson.dumps(["REQ", "watch", {"authors": [self.keys.pubkey]}]).decode())
        assert next_reply(self.watcher) == ["EOSE", "watch"]

    def check(self) -> None:
        self.count += 1
        event = self.keys.sign(content=f"bystander {self.count}")
        self.publisher.send(orjson.dumps(["EVENT", event]).decode())
        assert next_reply(self.publisher) == ["OK", event["id"], True, ""]
        assert next_reply(self.watcher) == ["EVENT", "watch", event]

    def close(self) -> None:
        self.connections.close()


@pytest.fixture
def live(relay_process: Any) -> Iterator[tuple[RelayProcess, Bystander]]:
    # Quiet: nobody reads the process's stderr pipe until it exits, and a full pipe
    # would block the relay's logging, and with it the relay.
    process: RelayProcess = relay_process(
        {"RELAY_MAX_MESSAGE_LENGTH": "65536", "RELAY_LOG_LEVEL": "CRITICAL"}
    )
    process.start()
    bystander = Bystander(process.url)
    yield process, bystander
    bystander.close()


def replies_until_sentinel(ws: ClientConnection, sentinel: str, want_reply: bool) -> list[Any]:
    """Frames up to the sentinel's EOSE, and past it until at least one other reply came
    when one is owed (an accepted event's OK may come after the sentinel's EOSE)."""
    replies: list[Any] = []
    seen_sentinel = False
    while not seen_sentinel or (want_reply and not replies):
        reply = orjson.loads(ws.recv(timeout=10))
        assert isinstance(reply, list)
        assert reply[0] in ("OK", "NOTICE", "CLOSED", "EVENT", "EOSE", "COUNT", "AUTH"), reply
        if reply[0] == "AUTH":
            continue  # the NIP-42 challenge every connection gets

        if reply == ["EOSE", sentinel]:
            seen_sentinel = True
        else:
            replies.append(reply)
    return replies


def is_close(frame: str) -> bool:
    try:
        message = json.loads(frame)
    except (ValueError, RecursionError):
        return False
    return isinstance(message, list) and bool(message) and message[0] == "CLOSE"


@settings(
    max_examples=150,
    deadline=None,
    # Shrinking against a live server takes minutes; the failing batch is printed whole.
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(frames, min_size=1, max_size=4))
def test_live_server_answers_fuzz_and_others_are_unaffected(
    live: tuple[RelayProcess, Bystander], batch: list[str]
) -> None:
    process, bystander = live
    # max_queue=None: replies left unread at the end (a REQ's stored events arriving after
    # the sentinel's EOSE) must not stop the client from reading the close frame.
    with connect(process.url, open_timeout=5, max_size=None, max_queue=None) as ws:
        for n, frame in enumerate(batch):
            try:
                payload = frame.encode()
            except UnicodeEncodeError:
                # Lone surrogates are not UTF-8: sent raw, the frame is invalid UTF-8.
                ws.send(frame.encode(errors="surrogatepass"), text=True)
                assert close_code(ws) == 1007
                break
            ws.send(payload, text=True)
            sentinel = f"sentinel-{n}"
            ws.send(orjson.dumps(["REQ", sentinel, {"limit": 0}]).decode())
            replies = replies_until_sentinel(ws, sentinel, want_reply=not is_close(frame))
            # `error:` answers a bug of ours (or a store failure, which there is none of).
            assert not [r for r in replies if str(r[-1]).startswith("error:")], replies
    bystander.check()


@settings(
    max_examples=40,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=st.binary(min_size=1, max_size=100))
def test_invalid_utf8_text_frames_close_only_that_connection(
    live: tuple[RelayProcess, Bystander], payload: bytes
) -> None:
    process, bystander = live
    with connect(process.url, open_timeout=5) as ws:
        ws.send(payload, text=True)
        try:
            payload.decode()
        except UnicodeDecodeError:
            assert close_code(ws) == 1007
        else:
            ws.send(orjson.dumps(["REQ", "sentinel", {"limit": 0}]).decode())
            replies_until_sentinel(ws, "sentinel", want_reply=not is_close(payload.decode()))
    bystander.check()
    assert process.proc is not None
    assert process.proc.poll() is None
