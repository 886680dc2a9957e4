"""`ia2 train`: one adapter trained on all labelled examples (no test set), saved with its card and record, ready for
`ia2 predict`; what it cannot train is one line."""

from __future__ import annotations

import json

import pytest

from conftest import toy_rows, write_jsonl
from ia2.commands import cli, train
from ia2.errors import IA2Error
from ia2.teacher import targets


def _train(model, task, out, *extra) -> list[str]:
    return ["train", "--model", str(model), "--task", f"jsonl:{task}", "--max-epochs", "2", "--out", str(out), *extra]


def test_train_makes_an_ia2_sft_adapter_that_predict_applies(llama_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IA2_CACHE", str(tmp_path / "cache"))
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(12))
    assert cli.main(_train(llama_dir, task, tmp_path / "adapter")) == 0
    assert "adapter written to" in capsys.readouterr().out
    record = json.loads((tmp_path / "adapter" / "ia2.json").read_text())
    assert (record["method"], record["seed"], len(record["train_examples"])) == ("ia2-sft", 0, 8), "12 rows: 8 + 4 dev"
    assert (tmp_path / "cache" / "targets" / f"{record['teacher_targets']}.safetensors").is_file(), "its targets' key"
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "Stages: ia2:icl (" in card and "ce:gold (" in card and "(dev)" in card
    assert "## Dev metrics" in card and "Test metrics" not in card, "train holds no test set out"
    inputs = write_jsonl(tmp_path / "new.jsonl", [{"question": r["question"]} for r in toy_rows(5, seed=3)])
    assert (
        cli.main(["predict", str(tmp_path / "adapter"), "--input", str(inputs), "--out", str(tmp_path / "p.jsonl")])
        == 0
    )
    lines = (tmp_path / "p.jsonl").read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["label"] in ("no", "yes") for line in lines)


def test_train_takes_unlabelled_queries_from_a_file(llama_dir, tmp_path, monkeypatch):
    """`ia2 train --unlabelled FILE`: IA2 learns from the teacher's answers to the file's questions (low-data mode),
    SFT from the labelled rows; the adapter's record keeps the labelled training examples only."""
    monkeypatch.setenv("IA2_CACHE", str(tmp_path / "cache"))
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(12))
    queries = write_jsonl(tmp_path / "q.jsonl", [{"question": r["question"]} for r in toy_rows(9, seed=4)])
    assert cli.main(_train(llama_dir, task, tmp_path / "adapter", "--unlabelled", str(queries))) == 0
    record = json.loads((tmp_path / "adapter" / "ia2.json").read_text())
    assert len(record["train_examples"]) == 8
    (target_file,) = (tmp_path / "cache" / "targets").glob("*.safetensors")
    assert len(targets.load(target_file).tokens) == 9 + 4, "the file's 9 queries + 4 dev queries"


@pytest.mark.parametrize("rows, expected", [(3, (2, 1)), (12, (8, 4)), (16, (11, 5)), (17, (12, 5))])
def test_all_rows_go_to_training_and_dev_by_the_usual_rule(rows, expected):
    assert train.sizes(rows, "t") == expected and sum(expected) == rows


def test_what_train_cannot_do_is_one_line(llama_dir, tmp_path, capsys):
    small = write_jsonl(tmp_path / "small.jsonl", toy_rows(2))
    task = write_jsonl(tmp_path / "toy.jsonl", toy_rows(12))
    (tmp_path / "full").mkdir()
    (tmp_path / "file").write_text("")
    (tmp_path / "full" / "x").write_text("")
    cases = [
        (_train(llama_dir, small, tmp_path / "a"), "2 labelled examples; training needs at least 3"),
        (_train(llama_dir, task, tmp_path / "a", "--methods", "icl"), "--methods icl trains nothing"),
        (_train(llama_dir, task, tmp_path / "a", "--seeds", "0,1"), "trains one adapter, so give one"),
        (_train(llama_dir, task, tmp_path / "full"), "already exists and is not an empty folder"),
        (_train(llama_dir, task, tmp_path / "file"), "the output folder is a file"),
        (_train(llama_dir, task, tmp_path / "a", "--unlabelled", "5"), "unlabelled queries come from a file"),
        (_train(llama_dir, task, tmp_path / "a", "--n-test", "5"), "--n-test: ia2 train holds no test set out"),
        (_train(llama_dir, task, tmp_path / "a", "--n-train", "5"), "--n-train: ia2 train sets N and dev from"),
    ]
    for argv, needle in cases:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "a").exists()
    (tmp_path / "run.yaml").write_text("icl_demos: per-query\n")
    assert cli.main([*_train(llama_dir, task, tmp_path / "a"), "--config", str(tmp_path / "run.yaml")]) == 2
    assert "run.yaml: icl_demos: ia2 train evaluates no ICL baseline; drop it" in capsys.readouterr().err
    with pytest.raises(IA2Error, match="at least 3"):
        train.sizes(1, "t")
