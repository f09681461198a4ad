"""A write-policy plugin process speaking strfry's protocol: one JSON object per line.

Input  {"type": "new", "event": {...}, "receivedAt": ts, "sourceType": "IP4", "sourceInfo": ip}
Output {"id": event id, "action": "accept" | "reject" | "shadowReject", "msg": "..."}

A plugin that crashes, hangs or answers garbage does not wedge the relay: the event gets
the fallback decision, the process is killed and started again for the next event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from typing import Any

import orjson

from relay.child import end_process
from relay.core.event import Event
from relay.core.write_policy import ACCEPT, Action, Decision, Source, reject

log = logging.getLogger("relay.plugin")

FAILED = reject("error: the relay's write policy failed on this event")
# A plugin's answer longer than this is garbage, not a decision.
MAX_ANSWER_BYTES = 1 << 20
# Seconds a plugin has to exit once its stdin is closed, before it is killed.
CLOSE_SECONDS = 1.0


class PluginFailure(Exception):
    pass


class WritePolicyPlugin:
    def __init__(self, command: str, timeout: float, fallback: Decision = FAILED) -> None:
        self.command = command
        self.timeout = timeout
        self.fallback = fallback
        self._proc: asyncio.subprocess.Process | None = None
        # strfry sends one event at a time; so do we, which keeps answers in order.
        self._lock = asyncio.Lock()
        self.restarts = 0
        self.closed = False

    async def decide(self, event: Event, source: Source) -> Decision:
        async with self._lock:
            if self.closed:
                return self.fallback
            try:
                return await asyncio.wait_for(self._ask(event, source), self.timeout)
            except (TimeoutError, PluginFailure, OSError, ValueError) as exc:
                log.warning("write policy plugin failed on %s: %r; restarting it", event.id, exc)
                await self._stop()
                return self.fallback

    async def _ask(self, event: Event, source: Source) -> Decision:
        proc = await self._running()
        assert proc.stdin is not None
        assert proc.stdout is not None
        request = {
            "type": "new",
            "event": orjson.loads(event.raw),
            "receivedAt": source.received_at,
            "sourceType": source.source_type,
            "sourceInfo": source.ip,
        }
        proc.stdin.write(orjson.dumps(request) + b"\n")
        await proc.stdin.drain()
        line = await proc.stdout.readline()
        if not line.endswith(b"\n"):
            raise PluginFailure("the plugin exited or sent a partial line")
        return _decision(event.id, line)

    async def _running(self) -> asyncio.subprocess.Process:
        if self._proc is None or self._proc.returncode is not None:
            if self._proc is not None:
                self.restarts += 1
            self._proc = await asyncio.create_subprocess_exec(
                *shlex.split(self.command),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=MAX_ANSWER_BYTES,
            )
        return self._proc

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self.restarts += 1
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()

    async def close(self) -> None:
        """Stop the plugin without waiting on an event it hangs on: that one gets the
        fallback when its pipe closes."""
        self.closed = True
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        await end_process(proc, CLOSE_SECONDS)


def _decision(event_id: str, line: bytes) -> Decision:
    answer: Any = orjson.loads(line)
    if not isinstance(answer, dict) or answer.get("id") != event_id:
        raise PluginFailure(f"answer is not for event {event_id}: {line[:200]!r}")
    msg = answer.get("msg") or ""
    if not isinstance(msg, str):
        raise PluginFailure(f"msg is not a string: {line[:200]!r}")
    action = answer.get("action")
    if action == Action.ACCEPT.value:
        return ACCEPT
    if action in (Action.REJECT.value, Action.SHADOW_REJECT.value):
        return Decision(Action(action), msg)
    raise PluginFailure(f"unknown action {action!r}")
