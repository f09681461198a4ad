"""examples/mirror_three.py, the walkthrough of docs/mirroring.md, runs to its end: three
relay processes mirror a note, one is SIGKILLed and catches up by negentropy when back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "mirror_three.py"
WITHIN = 180.0


def test_the_walkthrough_holds(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=WITHIN,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any("killed relay3" in line for line in lines), done.stdout
    assert any("caught up by negentropy" in line for line in lines), done.stdout
    assert lines[-1] == "every step held"
