"""BIG-bench tasks come from a local copy of the sdist ($IA2_BIGBENCH_SDIST, checked by sha256) or from the hub's
BIG-bench datasets (here a mirror folder); with neither, one line names both ways. Nothing touches the network."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import datasets
import pytest

from ia2.data.tasks import bigbench, load_task
from ia2.errors import IA2Error
from ia2.paths import cache_root

TASK = {
    "examples": [
        {"input": "Is water wet?", "target_scores": {"Yes": 1, "No": 0}},
        {"input": "Is fire cold?", "target_scores": {"Yes": 0, "No": 1}},
    ]
}
EXPECTED = [("Is water wet?", "Yes"), ("Is fire cold?", "No")]


def tarball() -> bytes:
    """A stand-in sdist holding one task JSON where the real sdist keeps them."""
    data, out = json.dumps(TASK).encode(), io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo(f"{bigbench.TASKS_DIR}/toy/task.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def local_sdist(tmp_path, monkeypatch) -> Path:
    """The stand-in sdist named by $IA2_BIGBENCH_SDIST, its sha256 the pinned one."""
    path = tmp_path / bigbench.SDIST
    path.write_bytes(tarball())
    monkeypatch.setenv(bigbench.SDIST_ENV, str(path))
    monkeypatch.setattr(bigbench, "SDIST_SHA256", hashlib.sha256(tarball()).hexdigest())
    return path


@pytest.fixture
def no_hub(tmp_path, monkeypatch) -> Path:
    """An empty hub mirror: the hub's BIG-bench has nothing, and nothing is fetched from the network."""
    monkeypatch.setenv("IA2_HUB_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    (tmp_path / "mirror").mkdir()
    return tmp_path / "mirror"


def test_a_local_sdist_named_by_the_environment_is_read_and_its_task_cached(local_sdist, no_hub):
    task = bigbench.load("toy")
    assert [(e.question, e.answer) for e in task.examples] == EXPECTED
    local_sdist.unlink()
    assert [(e.question, e.answer) for e in bigbench.load("toy").examples] == EXPECTED, "read from the cache"
    assert (cache_root() / "bigbench" / "tasks" / "toy.json").is_file()


def test_a_local_sdist_with_the_wrong_sha256_is_refused(local_sdist, monkeypatch):
    monkeypatch.setattr(bigbench, "SDIST_SHA256", "0" * 64)
    with pytest.raises(IA2Error, match=f"{local_sdist}: not the bigbench 1.0.0 sdist"):
        bigbench.load("toy")


def test_a_named_sdist_that_is_not_there_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(bigbench.SDIST_ENV, str(tmp_path / "nowhere.tar.gz"))
    with pytest.raises(IA2Error, match=r"\$IA2_BIGBENCH_SDIST=.*nowhere.tar.gz: no such file"):
        bigbench.load("toy")


def test_an_unknown_task_in_the_sdist_is_named(local_sdist):
    with pytest.raises(IA2Error, match="unknown task 'bigbench:nope': no nope/task.json in bigbench-1.0.0.tar.gz"):
        bigbench.load("nope")


def test_without_a_sdist_the_task_comes_from_the_hub(no_hub, monkeypatch):
    monkeypatch.delenv(bigbench.SDIST_ENV, raising=False)
    folder = no_hub / bigbench.HUB / "toy"
    folder.mkdir(parents=True)
    for split, example in zip(bigbench.HUB_SPLITS, TASK["examples"], strict=True):
        scores = example["target_scores"]
        row = {"inputs": example["input"], "multiple_choice_targets": list(scores)}
        row["multiple_choice_scores"] = list(scores.values())
        (folder / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    task = load_task("bigbench:toy")
    assert [(e.question, e.answer) for e in task.examples] == EXPECTED and task.labels == ("No", "Yes")


def test_with_neither_one_line_names_both_ways(no_hub, monkeypatch):
    monkeypatch.delenv(bigbench.SDIST_ENV, raising=False)
    with pytest.raises(IA2Error) as err:
        load_task("bigbench:toy")
    message = str(err.value)
    assert "\n" not in message and message.startswith("bigbench:toy: BIG-bench's task files are not here: ")
    assert "set $IA2_BIGBENCH_SDIST to a copy of bigbench-1.0.0.tar.gz" in message
    assert "tasksource/bigbench (or a copy under $IA2_HUB_MIRROR)" in message


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
