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
from ia2.tasks import bigbench, load_task

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


def multiemo_rows() -> list[dict]:
    """Sentences of each class, one empty input and one repeated input, as multiemo's files hold them."""
    scores = lambda label: {k: int(k == label) for k in ("ambivalent", "positive", "negative", "neutral")}  # noqa: E731
    texts = [
        ("Great room.", "positive"),
        ("  ", "negative"),
        ("Dirty bathroom.", "negative"),
        ("The hotel has a lift.", "neutral"),
        ("Nice staff, awful food.", "ambivalent"),
        ("Great room.", "positive"),
        ("Loved it.", "positive"),
    ]
    return [{"input": text, "target_scores": scores(label)} for text, label in texts]


@pytest.fixture
def multiemo_hotels():
    path = cache_root() / "bigbench" / "tasks" / "multiemo" / "hotels_sentence_en.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"task_prefix": "Determine the sentiment.", "examples": multiemo_rows()}))
    return path


def test_multiemo_binary_keeps_positive_and_negative_and_drops_empty_and_repeated_inputs(multiemo_hotels, caplog):
    with caplog.at_level("INFO"):
        task = load_task("multiemo:hotels")
    assert task.name == "multiemo:hotels" and task.labels == ("negative", "positive")
    assert [(e.question, e.answer) for e in task.examples] == [
        ("Great room.", "positive"),
        ("Dirty bathroom.", "negative"),
        ("Loved it.", "positive"),
    ]
    assert [e.where for e in task.examples] == [f"bigbench:multiemo/hotels_sentence_en:example {i}" for i in (0, 2, 6)]
    assert task.extra["dropped_empty"] == 1
    assert "positive or negative" in task.instruction
    assert "1 with an empty input dropped" in caplog.text and "1 repeated questions dropped" in caplog.text


def test_multiemo4_keeps_all_four_classes(multiemo_hotels):
    task = load_task("multiemo4:hotels")
    assert task.labels == ("ambivalent", "negative", "neutral", "positive")
    assert len(task.examples) == 5 and task.extra["dropped_empty"] == 1


@pytest.mark.parametrize(
    ("spec", "labels", "needle"),
    [("multiemo:cars", None, "unknown multiemo domain 'cars'"), ("multiemo:hotels", ("a", "b"), "drop --labels")],
)
def test_multiemo_refuses_unknown_domains_and_label_overrides(multiemo_hotels, spec, labels, needle):
    with pytest.raises(IA2Error, match=needle):
        load_task(spec, labels)
