"""Our negentropy server (relay/core/negentropy.py) against nostr-tools' client, no relay.

tests/interop/js/negentropy.mjs runs nostr-tools' nip77 `Negentropy` (a port of the
reference implementation) as the initiator; this test answers each of its messages with
`NegentropyServer` and checks that nostr-tools ends with exactly the set difference.
Written by someone else, it catches what a round trip through our own client cannot: a
bound, varint or fingerprint encoded the same wrong way on both of our sides.
"""

from __future__ import annotations

import json
import random
import select
import subprocess
from pathlib import Path
from typing import Any

import pytest

from relay.core.negentropy import NegentropyServer, Storage
from tests.interop.test_nostr_tools import node  # noqa: F401  (the fixture)

SCRIPT = Path(__file__).parent / "js" / "negentropy.mjs"
STEP_TIMEOUT = 20.0

Item = tuple[int, bytes]


class NostrToolsClient:
    """negentropy.mjs: one JSON line in, one JSON line out."""

    def __init__(self, node_path: str) -> None:
        self.proc = subprocess.Popen(
            [node_path, str(SCRIPT)],
            cwd=SCRIPT.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], STEP_TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            stderr = self.proc.stderr.read() if self.proc.stderr else ""
            pytest.fail(f"negentropy.mjs gave no answer: {stderr}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def sync_with_nostr_tools(
    node_path: str, client_items: list[Item], server_items: list[Item], frame_limit: int
) -> tuple[set[bytes], set[bytes], int]:
    client = NostrToolsClient(node_path)
    server = NegentropyServer(Storage(server_items), frame_limit)
    have: set[bytes] = set()
    need: set[bytes] = set()
    rounds = 0
    try:
        items = [[t, i.hex()] for t, i in client_items]
        message = client.ask({"items": items, "frameSizeLimit": frame_limit})["message"]
        while message is not None:
            rounds += 1
            assert rounds < 1000
            answer = client.ask({"reply": server.answer(bytes.fromhex(message)).hex()})
            have.update(bytes.fromhex(i) for i in answer["have"])
            need.update(bytes.fromhex(i) for i in answer["need"])
            message = answer["message"]
    finally:
        client.close()
    return have, need, rounds


def random_sets(seed: int, shared: int, only_client: int, only_server: int, span: int) -> Any:
    rng = random.Random(seed)

    def draw(count: int) -> list[Item]:
        return [(1_700_000_000 + rng.randrange(span), rng.randbytes(32)) for _ in range(count)]

    common = draw(shared)
    return common + draw(only_client), common + draw(only_server)


@pytest.mark.parametrize(
    ("shared", "only_client", "only_server", "span", "frame_limit"),
    [
        (0, 0, 0, 10, 60_000),
        (0, 0, 40, 10, 60_000),
        (0, 40, 0, 10, 60_000),
        (500, 0, 0, 10, 60_000),  # equal sets, many sharing a second: id-prefix bounds
        (500, 1, 0, 10, 60_000),
        (500, 0, 1, 3, 60_000),
        (3000, 30, 30, 1000, 60_000),
        (20_000, 300, 300, 100_000, 4096),  # many rounds under nostr-tools' smallest limit
    ],
)
def test_nostr_tools_client_finds_the_difference_with_our_server(
    node: str,  # noqa: F811
    shared: int,
    only_client: int,
    only_server: int,
    span: int,
    frame_limit: int,
) -> None:
    client_items, server_items = random_sets(shared, shared, only_client, only_server, span)
    have, need, rounds = sync_with_nostr_tools(node, client_items, server_items, frame_limit)
    client_ids = {i for _, i in client_items}
    server_ids = {i for _, i in server_items}
    assert have == client_ids - server_ids
    assert need == server_ids - client_ids
    if shared and only_client + only_server <= 1:
        # Fingerprints agree where the sets do: a wrong one would still find the
        # difference (by splitting down to id lists), only in more rounds.
        assert rounds <= (1 if only_client + only_server == 0 else 2)
    if frame_limit == 4096:
        assert rounds > 5
