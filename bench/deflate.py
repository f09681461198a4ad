"""What a compressor per write costs against one kept per connection (deflate_sliding_window).

    python -m bench.deflate [--events 5000] [--page 500] [--runs 5]

The frames are `["EVENT","sub",<event>]` of the cached 1,000,000-event dataset when it is
there (`python -m bench` builds it), else of freshly signed kind-1 notes. They go through the
extension classes websockets calls for every frame (relay/net/deflate.py's WriteDeflate,
websockets' PerMessageDeflate), so the bytes are the bytes on the wire. Two ways of writing:
live events, each written alone (the compressor let go after each one), and pages of stored
events written together. Prints bytes as a share of the uncompressed frames and CPU per
frame, medians of --runs.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode

from bench.data import ingest_events
from bench.stores import Dataset
from relay.net.deflate import COMPRESS_SETTINGS, WINDOW_BITS, WriteDeflate, release_compressors


def sample_frames(count: int) -> list[bytes]:
    dataset = Dataset(1_000_000)
    if dataset.events_path.exists():
        with open(dataset.events_path, "rb") as lines:
            raws = [line.rstrip(b"\n") for line in itertools.islice(lines, count)]
    else:
        raws = ingest_events(count, 2, namespace="deflate")
    return [b'["EVENT","sub",' + raw + b"]" for raw in raws]


def extension(sliding_window: bool) -> PerMessageDeflate:
    kind = PerMessageDeflate if sliding_window else WriteDeflate
    return kind(True, False, WINDOW_BITS, WINDOW_BITS, COMPRESS_SETTINGS)


def write(frames: list[bytes], page: int, sliding_window: bool) -> tuple[int, float]:
    """Compressed bytes and seconds for `frames` written `page` at a time."""
    ext = extension(sliding_window)
    size = 0
    started = time.perf_counter()
    for start in range(0, len(frames), page):
        for payload in frames[start : start + page]:
            size += len(ext.encode(Frame(Opcode.TEXT, payload)).data)
        release_compressors([ext])
    return size, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.deflate", description=__doc__)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--page", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    frames = sample_frames(args.events)
    raw = sum(map(len, frames))
    print(f"{len(frames):,} frames, {raw / len(frames):.0f} bytes each uncompressed")
    print("| written | compressor | bytes (% of uncompressed) | CPU per frame (us) |")
    print("|---|---|---|---|")
    for label, page in (("alone (live events)", 1), (f"{args.page} at a time (pages)", args.page)):
        for sliding in (True, False):
            runs = [write(frames, page, sliding) for _ in range(args.runs)]
            size = runs[0][0]
            seconds = statistics.median(t for _, t in runs)
            name = "kept (sliding window)" if sliding else "one per write"
            print(
                f"| {label} | {name} | {size:,} ({100 * size / raw:.1f}%)"
                f" | {seconds / len(frames) * 1e6:.1f} |"
            )


if __name__ == "__main__":
    main()
