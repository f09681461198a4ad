"""The NIP-77 core in process: a full reconciliation of two large sets, timed per message.

    python -m bench.negentropy [--items 1000000] [--diff 0.01] [--frame-limit 500000]

Both sides hold `items` (created_at, id) pairs of which a share `diff` on each side is
missing on the other (1% each side by default). The client initiates and reconciles every
reply until it is done; the server's answer to each message is timed on its own (the
client's work is not counted there). Prints the storage build time and bytes per item, the
rounds, the bytes each way (binary; hex on the wire doubles them), the server's time per
message (p50, max, total) and the whole exchange's time, and checks that have/need are
exactly the difference. No relay, no socket, no database: the core only.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass

from relay.core.negentropy import NegentropyClient, NegentropyServer, Storage

# A year of timestamps, so that many items share a second as on a real relay.
SPAN_SECONDS = 365 * 24 * 3600
START = 1_700_000_000


@dataclass
class Result:
    items: int
    build_seconds: float
    bytes_per_item: float
    rounds: int
    bytes_up: int
    bytes_down: int
    server_seconds: list[float]
    total_seconds: float
    have: int
    need: int


def make_sets(items: int, diff: float, seed: int) -> tuple[list[tuple[int, bytes]], ...]:
    rng = random.Random(seed)
    only = int(items * diff)
    common = items - only

    def draw(count: int) -> list[tuple[int, bytes]]:
        return [(START + rng.randrange(SPAN_SECONDS), rng.randbytes(32)) for _ in range(count)]

    shared = draw(common)
    return shared + draw(only), shared + draw(only)


def reconcile(
    client_items: list[tuple[int, bytes]], server_items: list[tuple[int, bytes]], frame_limit: int
) -> Result:
    started = time.perf_counter()
    server_storage = Storage(server_items)
    build_seconds = time.perf_counter() - started
    client = NegentropyClient(Storage(client_items), frame_limit)
    server = NegentropyServer(server_storage, frame_limit)
    server_seconds: list[float] = []
    have: list[bytes] = []
    need: list[bytes] = []
    up = down = rounds = 0
    began = time.perf_counter()
    message: bytes | None = client.initiate()
    while message is not None:
        rounds += 1
        up += len(message)
        t0 = time.perf_counter()
        reply = server.answer(message)
        server_seconds.append(time.perf_counter() - t0)
        down += len(reply)
        message, h, n = client.reconcile(reply)
        have += h
        need += n
    total = time.perf_counter() - began
    client_ids = {i for _, i in client_items}
    server_ids = {i for _, i in server_items}
    if set(have) != client_ids - server_ids or set(need) != server_ids - client_ids:
        raise SystemExit("reconciliation did not find exactly the difference")
    return Result(
        items=len(server_storage),
        build_seconds=build_seconds,
        bytes_per_item=server_storage.nbytes / max(len(server_storage), 1),
        rounds=rounds,
        bytes_up=up,
        bytes_down=down,
        server_seconds=server_seconds,
        total_seconds=total,
        have=len(have),
        need=len(need),
    )


def report(result: Result, frame_limit: int) -> None:
    ms = [s * 1000 for s in result.server_seconds]
    full_ids = result.items * 32
    rows = [
        ("items per side", f"{result.items:,}"),
        ("frame size limit (bytes, binary)", f"{frame_limit:,}" if frame_limit else "none"),
        ("storage build (s)", f"{result.build_seconds:.2f}"),
        ("storage bytes per item", f"{result.bytes_per_item:.0f}"),
        ("rounds", f"{result.rounds}"),
        ("bytes client -> server (binary)", f"{result.bytes_up:,}"),
        ("bytes server -> client (binary)", f"{result.bytes_down:,}"),
        (
            "both ways vs all server ids (%)",
            f"{100 * (result.bytes_up + result.bytes_down) / max(full_ids, 1):.1f}",
        ),
        ("server time per message p50 (ms)", f"{statistics.median(ms):.1f}"),
        ("server time per message max (ms)", f"{max(ms):.1f}"),
        ("server time, all messages (s)", f"{sum(ms) / 1000:.2f}"),
        ("whole exchange incl. client (s)", f"{result.total_seconds:.2f}"),
        ("have / need found", f"{result.have:,} / {result.need:,}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"| {name:<{width}} | {value:>14} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--diff", type=float, default=0.01, help="share missing on each side")
    parser.add_argument("--frame-limit", type=int, default=500_000, help="bytes, 0: none")
    parser.add_argument("--seed", type=int, default=77)
    args = parser.parse_args()
    client_items, server_items = make_sets(args.items, args.diff, args.seed)
    report(reconcile(client_items, server_items, args.frame_limit), args.frame_limit)


if __name__ == "__main__":
    main()
