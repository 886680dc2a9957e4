"""The library's documentation runs: every Python block of docs/library.md and the README's library snippet execute
on a tiny model (the embedded model's name and the example files swapped for the test's own)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from conftest import toy_rows, write_jsonl
from ia2.data import tasks
from ia2.registry import LOSSES, METHODS, TASKS

ROOT = Path(__file__).resolve().parent.parent


def _blocks(path: Path, after: str = "") -> list[str]:
    """The ```python blocks of a markdown file (after the heading `after`, when given)."""
    text = path.read_text()
    return re.findall(r"```python\n(.*?)```", text[text.index(after) :] if after else text, flags=re.S)


@pytest.fixture
def docs_world(llama_dir, tmp_path, monkeypatch):
    """The files the docs name, in a scratch folder that is the working directory; the tables the docs extend are
    restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IA2_CACHE", str(tmp_path / "cache"))
    declared = {registry: set(registry) for registry in (METHODS, LOSSES, TASKS)}
    write_jsonl(tmp_path / "my_examples.jsonl", toy_rows(24))
    write_jsonl(tmp_path / "my_task.jsonl", toy_rows(80, seed=1))
    write_jsonl(tmp_path / "new.jsonl", toy_rows(6, seed=2))
    yield lambda code: code.replace('"smollm2-135m"', repr(str(llama_dir))).replace("max_epochs=5", "max_epochs=1")
    for registry, names in declared.items():
        for name in set(registry) - names:
            registry.unregister(name)


def test_every_block_of_the_library_doc_runs(docs_world, capsys):
    namespace: dict = {}
    for block in _blocks(ROOT / "docs" / "library.md"):
        exec(compile(docs_world(block), "docs/library.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "24 examples, but N=64 + dev=32 + test=500 need 596" in out, "the undersized data set's one line"
    assert Path("runs/mine/ia2.json").is_file() and Path("runs/mine-merged/config.json").is_file()
    assert tasks.load_task("animals").labels == ("no", "yes") and len(tasks.load_task("animals").examples) == 2


def test_the_readme_library_snippet_runs(docs_world):
    (block,) = _blocks(ROOT / "README.md", "## As a library")[:1]
    namespace: dict = {}
    exec(compile(docs_world(block), "README.md", "exec"), namespace)
    assert {r["method"] for r in namespace["result"]["rows"]} == {"sft", "ia2-sft"}


def test_the_trainer_doc_script_runs(docs_world, capsys):
    """docs/trainer.md's script, end to end on the tiny model: trained, saved with a hub-ready card, predicting."""
    (block,) = _blocks(ROOT / "docs" / "trainer.md")
    exec(compile(docs_world(block), "docs/trainer.md", "exec"), {})
    assert capsys.readouterr().out.splitlines()[-1].startswith("predicted: ")
    card = ModelCard.load("runs/ia2-trainer/README.md").data
    assert card.library_name == "peft" and card.tags == ["ia2", "ia2-sft", "arxiv:2509.22621"]
    assert Path("runs/ia2-trainer/adapter_model.safetensors").is_file()
    assert sorted(p.name for p in Path("runs/ia2-trainer").glob("stage*")) == ["stage0-ia2-icl", "stage1-ce-gold"]
