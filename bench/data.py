"""Pre-signed events: a realistic stored dataset and unique fresh events for ingest.

Everything is deterministic (keys from a seed, contents from the index), signed in worker
processes, and cached as JSON lines under the bench's cache directory keyed by
DATA_VERSION, so a second run reuses it.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import orjson
from coincurve import PrivateKey

from bench import DATA_VERSION
from relay.core.canonical import serialize

DAY = 86_400
HASHTAGS = [f"topic{n}" for n in range(200)]
WORDS = ["nostr", "relay", "note", "zap", "sats", "coffee", "morning", "code", "python", "fast"]


def cache_dir() -> Path:
    root = Path(os.environ.get("BENCH_CACHE", tempfile.gettempdir()))
    path = root / f"pyrelay-bench-v{DATA_VERSION}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def secret(namespace: str, index: int) -> bytes:
    return hashlib.sha256(f"pyrelay-bench/{namespace}/{index}".encode()).digest()


def pubkey_of(namespace: str, index: int) -> str:
    return str(PrivateKey(secret(namespace, index)).public_key_xonly.format().hex())


def sign(
    key: PrivateKey, pubkey: str, created_at: int, kind: int, tags: list[list[str]], content: str
) -> bytes:
    digest = hashlib.sha256(serialize(pubkey, created_at, kind, tags, content)).digest()
    return orjson.dumps(
        {
            "id": digest.hex(),
            "pubkey": pubkey,
            "created_at": created_at,
            "kind": kind,
            "tags": tags,
            "content": content,
            "sig": key.sign_schnorr(digest).hex(),
        }
    )


@dataclass(frozen=True)
class DatasetShape:
    """How the stored dataset looks; queries are drawn from the same shape."""

    size: int
    start: int  # created_at of the oldest event
    span: int  # seconds from the oldest to the newest event

    @property
    def authors(self) -> int:
        return max(20, self.size // 100)

    @property
    def popular(self) -> int:
        """The first events, which replies, reactions and reposts refer to."""
        return max(10, min(2000, self.size // 500))

    def author_of(self, index: int) -> int:
        if index < 2 * self.authors:
            return index % self.authors  # everyone's profile (kind 0) and contacts (kind 3)
        # Skewed: a few authors write a lot, most write a little.
        r = random.Random(index).random()
        return int(self.authors * r * r)

    def created_at_of(self, index: int) -> int:
        return self.start + self.span * index // self.size + index % 7


def _content(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def dataset_event(
    shape: DatasetShape,
    index: int,
    popular_ids: list[str],
    keys: dict[int, tuple[PrivateKey, str]],
    pubkeys: list[str],
) -> bytes:
    rng = random.Random(index * 7919)
    author = shape.author_of(index)
    if author not in keys:
        key = PrivateKey(secret("author", author))
        keys[author] = (key, str(key.public_key_xonly.format().hex()))
    key, pubkey = keys[author]
    created_at = shape.created_at_of(index)
    tags: list[list[str]] = []
    if index < shape.authors:
        kind, content = 0, orjson.dumps({"name": f"user{author}"}).decode()
    elif index < 2 * shape.authors:
        kind, content = 3, ""
        tags = [["p", pubkeys[rng.randrange(len(pubkeys))]] for _ in range(20)]
    else:
        slot = index % 100
        target = rng.randrange(len(popular_ids)) if popular_ids else -1
        target_author = pubkeys[shape.author_of(target)] if target >= 0 else pubkey
        if slot < 60 or target < 0:
            kind, content = 1, _content(rng, rng.randrange(5, 40))
            if rng.random() < 0.4:
                tags.append(["t", rng.choice(HASHTAGS)])
            if rng.random() < 0.3:
                tags.append(["p", pubkeys[rng.randrange(len(pubkeys))]])
        elif slot < 75:
            kind, content = 1, _content(rng, rng.randrange(3, 20))
            tags = [["e", popular_ids[target], "", "root"], ["p", target_author]]
        elif slot < 92:
            kind, content = 7, "+"
            tags = [["e", popular_ids[target]], ["p", target_author]]
        elif slot < 97:
            kind, content = 6, ""
            tags = [["e", popular_ids[target]], ["p", target_author]]
        else:
            kind, content = 30023, _content(rng, 150)
            tags = [["d", f"article-{index}"], ["title", _content(rng, 4)]]
    return sign(key, pubkey, created_at, kind, tags, content)


def _dataset_chunk(args: tuple[DatasetShape, int, int, list[str], list[str]]) -> list[bytes]:
    shape, start, stop, popular_ids, pubkeys = args
    keys: dict[int, tuple[PrivateKey, str]] = {}
    return [dataset_event(shape, i, popular_ids, keys, pubkeys) for i in range(start, stop)]


def generate_dataset(shape: DatasetShape, workers: int) -> Iterator[list[bytes]]:
    """The dataset's events in index order, in chunks, signed on `workers` processes."""
    with ProcessPoolExecutor(workers) as pool:
        step = max(1, shape.authors // workers + 1)
        pubkeys = [
            pk
            for part in pool.map(
                _pubkey_range,
                [(i, min(i + step, shape.authors)) for i in range(0, shape.authors, step)],
            )
            for pk in part
        ]
        # Profiles and contacts first, then the popular events the rest refers to.
        head = 2 * shape.authors + shape.popular
        first = _dataset_chunk((shape, 0, min(head, shape.size), [], pubkeys))
        popular_ids = [orjson.loads(raw)["id"] for raw in first[2 * shape.authors :]]
        yield first
        chunk = 5000
        jobs = [
            (shape, i, min(i + chunk, shape.size), popular_ids, pubkeys)
            for i in range(head, shape.size, chunk)
        ]
        yield from pool.map(_dataset_chunk, jobs)


def _pubkey_range(bounds: tuple[int, int]) -> list[str]:
    return [pubkey_of("author", i) for i in range(*bounds)]


def _ingest_chunk(args: tuple[str, int, int, int]) -> list[bytes]:
    namespace, start, stop, now = args
    out = []
    keys: dict[int, tuple[PrivateKey, str]] = {}
    for index in range(start, stop):
        rng = random.Random(index)
        author = index % 1000
        if author not in keys:
            key = PrivateKey(secret(namespace, author))
            keys[author] = (key, str(key.public_key_xonly.format().hex()))
        key, pubkey = keys[author]
        tags = [["t", rng.choice(HASHTAGS)]] if rng.random() < 0.5 else []
        content = f"{index} " + _content(rng, rng.randrange(5, 40))
        out.append(sign(key, pubkey, now - index % 600, 1, tags, content))
    return out


def ingest_events(count: int, workers: int, namespace: str = "ingest") -> list[bytes]:
    """`count` unique kind-1 notes dated in the last minutes, none of them in the dataset.

    Cached per day: relays refuse events dated too far in the past.
    """
    today = int(time.time()) // DAY
    path = cache_dir() / f"{namespace}-{count}-{today}.jsonl"
    if path.exists():
        return path.read_bytes().splitlines()
    now = int(time.time())
    chunk = 2000
    jobs = [(namespace, i, min(i + chunk, count), now) for i in range(0, count, chunk)]
    with ProcessPoolExecutor(workers) as pool:
        events = [raw for part in pool.map(_ingest_chunk, jobs) for raw in part]
    _write_lines(path, events)
    return events


def _write_lines(path: Path, lines: list[bytes]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_bytes(b"\n".join(lines) + b"\n")
    partial.rename(path)
