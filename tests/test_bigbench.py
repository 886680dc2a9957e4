"""The bigbench sdist is fetched with `pip download` (the user's pip configuration applies) and checked by sha256;
pip is replaced by a fake that writes a small tarball, so nothing touches the network."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ia2.errors import IA2Error
from ia2.paths import cache_root
from ia2.tasks import bigbench

TASK = {
    "examples": [
        {"input": "Is water wet?", "target_scores": {"Yes": 1, "No": 0}},
        {"input": "Is fire cold?", "target_scores": {"Yes": 0, "No": 1}},
    ]
}


def tarball() -> bytes:
    """A stand-in sdist holding one task JSON where the real sdist keeps them."""
    data, out = json.dumps(TASK).encode(), io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo(f"{bigbench.TASKS_DIR}/toy/task.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def fake_pip(monkeypatch, returncode: int = 0, stderr: str = "", saves: bool = True) -> list[list[str]]:
    """Replace subprocess.run with a pip that saves `tarball()` into the `-d` folder; returns the commands run."""
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        if saves:
            (Path(command[command.index("-d") + 1]) / bigbench.SDIST).write_bytes(tarball())
        return subprocess.CompletedProcess(command, returncode, "Collecting bigbench==1.0.0\n", stderr)

    monkeypatch.setattr(subprocess, "run", run)
    return calls


def test_sdist_is_downloaded_with_pip_once_then_read_from_the_cache(monkeypatch):
    calls = fake_pip(monkeypatch)
    monkeypatch.setattr(bigbench, "SDIST_SHA256", hashlib.sha256(tarball()).hexdigest())
    task = bigbench.load("toy")
    assert [(e.question, e.answer) for e in task.examples] == [("Is water wet?", "Yes"), ("Is fire cold?", "No")]
    [command] = calls
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    assert command[4:8] == ["--no-deps", "--no-binary", "bigbench", "bigbench==1.0.0"]
    path = bigbench.sdist_path()
    assert path == cache_root() / "bigbench" / bigbench.SDIST and path.read_bytes() == tarball()
    assert len(calls) == 1, "the cached sdist is not downloaded again"


def test_a_sdist_with_the_wrong_sha256_is_refused_and_not_cached(monkeypatch):
    fake_pip(monkeypatch)
    with pytest.raises(IA2Error, match=f"{bigbench.SDIST}: sha256 mismatch after download"):
        bigbench.sdist_path()
    assert not (cache_root() / "bigbench" / bigbench.SDIST).exists()


def test_a_failing_pip_is_one_line_naming_its_last_error(monkeypatch):
    stderr = (
        "WARNING: Retrying after connection broken\n"
        "ERROR: Could not find a version that satisfies the requirement bigbench==1.0.0\n"
        "ERROR: No matching distribution found for bigbench==1.0.0\n\n"
    )
    fake_pip(monkeypatch, returncode=1, stderr=stderr, saves=False)
    with pytest.raises(IA2Error) as err:
        bigbench.sdist_path()
    message = str(err.value)
    assert "\n" not in message and "pip download --no-deps --no-binary bigbench bigbench==1.0.0 -d " in message
    assert message.endswith("failed: ERROR: No matching distribution found for bigbench==1.0.0")
    assert not (cache_root() / "bigbench" / bigbench.SDIST).exists()


def test_a_pip_that_saves_nothing_is_an_error(monkeypatch):
    fake_pip(monkeypatch, saves=False)
    with pytest.raises(IA2Error, match="the download saved no bigbench-1.0.0.tar.gz"):
        bigbench.sdist_path()
