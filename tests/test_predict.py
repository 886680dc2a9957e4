"""`ia2 predict`: a saved adapter applied to new inputs predicts what the run that trained it measured on the same
rows; lines give the label and every label's probability; bad inputs are one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import toy_rows, write_jsonl
from ia2 import config
from ia2.commands import cli
from ia2.commands.predict import predict
from ia2.data.prompts import Encoder
from ia2.data.tasks import Example, load_task
from ia2.evaluation.scoring import score
from ia2.model import loading
from ia2.run.experiment import run
from test_errors import error_lines

METRICS = ("accuracy", "ece", "ece_equal_mass", "brier", "nll")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_dirs):
    """A tiny IA2 → SFT run, and its test rows written as predict's input (with answers and without)."""
    root = tmp_path_factory.mktemp("predict")
    task = write_jsonl(root / "toy.jsonl", toy_rows(40))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IA2_CACHE", str(root / "cache"))
        cfg = config.make(
            str(model_dirs["llama"]),
            f"jsonl:{task}",
            methods=["ia2-sft"],
            n_train=4,
            n_test=10,
            seeds=[0],
            max_epochs=2,
            on_divergence="record",
        )
        result = run(cfg, root / "run")
    test = json.loads((root / "run" / "manifest.json").read_text())["task"]["test_indices"]
    examples = load_task(f"jsonl:{task}").examples
    rows = [{"question": examples[i].question, "answer": examples[i].answer} for i in test]
    return {
        "root": root,
        "row": result["rows"][0],
        "adapter": root / "run" / "adapters" / "seed0" / "ia2-sft",
        "labelled": write_jsonl(root / "labelled.jsonl", rows),
        "plain": write_jsonl(root / "plain.jsonl", [{"question": r["question"]} for r in rows]),
    }


def test_predictions_equal_what_the_training_run_reported(trained, tmp_path):
    done = predict(trained["adapter"], trained["labelled"], tmp_path / "p.jsonl")
    for name in METRICS:
        assert done.metrics[name] == pytest.approx(trained["row"][name], abs=1e-6), name
    assert json.loads((tmp_path / "p.metrics.json").read_text())["accuracy"] == done.metrics["accuracy"]
    assert (tmp_path / "p.reliability.png").stat().st_size > 0
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(lines) == 10 and lines == [
        {"question": q, **line} for q, line in zip([x["question"] for x in lines], done.lines)
    ]
    for line in lines:
        assert set(line["probs"]) == {"no", "yes"} and sum(line["probs"].values()) == pytest.approx(1.0)
        assert line["label"] == max(line["probs"], key=line["probs"].get) and 0 < line["vocab_prob"] <= 1


def test_inputs_without_answers_are_predicted_but_not_scored(trained, tmp_path):
    done = predict(trained["adapter"], trained["plain"], tmp_path / "p.jsonl")
    labelled = predict(trained["adapter"], trained["labelled"], tmp_path / "q.jsonl")
    assert done.metrics is None and not (tmp_path / "p.metrics.json").exists()
    assert [line["probs"] for line in done.lines] == [line["probs"] for line in labelled.lines]


def test_icl_predicts_with_the_base_model_and_the_adapters_examples(trained, tmp_path):
    """--icl K: the adapter disabled, K of its training examples before each input; another model, other numbers."""
    icl = predict(trained["adapter"], trained["labelled"], tmp_path / "icl.jsonl", icl=2)
    tuned = predict(trained["adapter"], trained["labelled"], tmp_path / "tuned.jsonl")
    assert icl.metrics is not None and 0 <= icl.metrics["accuracy"] <= 1
    assert [line["probs"] for line in icl.lines] != [line["probs"] for line in tuned.lines]


def test_bad_predict_inputs_are_one_line(trained, tmp_path, capsys):
    write_jsonl(tmp_path / "noq.jsonl", [{"question": "is the cat big?"}, {"answer": "yes"}])
    write_jsonl(tmp_path / "other.jsonl", [{"question": "is the cat big?", "answer": "maybe"}])
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "adapter_config.json").write_text('{"peft_type": "LORA", "base_model_name_or_path": "m"}')
    cases = [
        (tmp_path / "nowhere", trained["plain"], [], "no such adapter folder (to predict with a model alone, give"),
        (trained["adapter"], trained["plain"], ["--task", "jsonl:x"], "is an adapter: predict with it without --task"),
        (tmp_path / "bare", trained["plain"], [], "not an ia2 adapter (no ia2.json"),
        (trained["adapter"], tmp_path / "noq.jsonl", [], "noq.jsonl:2: field 'question' is missing"),
        (trained["adapter"], tmp_path / "other.jsonl", [], "other.jsonl:1: field 'answer' = 'maybe' is not a label"),
        (
            trained["adapter"],
            trained["plain"],
            ["--icl", "9"],
            "--icl 9: 4 training examples to draw demonstrations from",
        ),
    ]
    cases.append((trained["adapter"], trained["plain"], ["--out", str(tmp_path)], "the output file is a folder"))
    for adapter, inputs, extra, needle in cases:
        code = cli.main(["predict", str(adapter), "--input", str(inputs), "--out", str(tmp_path / "o.jsonl"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "o.jsonl").exists()
    assert (tmp_path / "noq.jsonl").is_file(), "a folder given as --out is left as it was"


def test_the_base_can_load_from_elsewhere_but_must_be_the_adapters(trained, model_dirs, tmp_path, capsys):
    """--model: a copy of the base in another folder predicts alike (the fingerprint ignores where it is); another
    model is refused in one line naming both fingerprints."""
    shutil.copytree(model_dirs["llama"], tmp_path / "moved")
    here = predict(trained["adapter"], trained["labelled"], tmp_path / "a.jsonl")
    moved = predict(trained["adapter"], trained["labelled"], tmp_path / "b.jsonl", base_model=str(tmp_path / "moved"))
    assert moved.lines == here.lines
    argv = ["predict", str(trained["adapter"]), "--input", str(trained["plain"]), "--out", str(tmp_path / "c.jsonl")]
    capsys.readouterr()
    assert cli.main([*argv, "--model", str(model_dirs["qwen3"])]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "not the base model" in line and "weights fingerprint" in line


def test_a_model_alone_predicts_with_a_tasks_rendering(trained, model_dirs, tmp_path):
    """A model with no adapter and --task: the task renders the prompts and gives the labels (the probabilities are
    the base model's on the task's own encoding); with --icl K its first K examples are the demonstrations."""
    spec = f"jsonl:{trained['root'] / 'toy.jsonl'}"
    alone = predict(str(model_dirs["llama"]), trained["labelled"], tmp_path / "z.jsonl", task_spec=spec)
    model, tok = loading.load(str(model_dirs["llama"]))
    encoder = Encoder(load_task(spec), tok, model.config.max_position_embeddings)
    inputs = [Example(json.loads(line)["question"], "") for line in trained["labelled"].read_text().splitlines()]
    want = score(model, [encoder.prompt_ids(e) for e in inputs], encoder.label_ids, tok.pad_token_id).label_probs()
    got = np.array([list(line["probs"].values()) for line in alone.lines])
    assert np.abs(got - want).max() < 1e-9
    assert alone.metrics is not None and 0 <= alone.metrics["accuracy"] <= 1
    icl = predict(str(model_dirs["llama"]), trained["labelled"], tmp_path / "i.jsonl", icl=3, task_spec=spec)
    assert [line["probs"] for line in icl.lines] != [line["probs"] for line in alone.lines]


def test_a_generative_adapter_predicts_generations_and_parsed_answers(model_dirs, tmp_path, monkeypatch):
    """For a generative task each line holds the generation (cut by the stop rule) and its parsed answer, and the
    accuracy on the run's test rows is the run's."""
    from test_generative import copy_rows

    monkeypatch.setenv("IA2_CACHE", str(tmp_path / "cache"))
    task = write_jsonl(tmp_path / "copy.jsonl", copy_rows())
    cfg = config.make(
        str(model_dirs["llama"]),
        f"jsonl:{task}",
        methods=["sft"],
        n_train=4,
        n_test=8,
        seeds=[0],
        max_epochs=2,
        on_divergence="record",
        parser="text",
        max_new_tokens=6,
    )
    (row,) = run(cfg, tmp_path / "run")["rows"]
    test = json.loads((tmp_path / "run" / "manifest.json").read_text())["task"]["test_indices"]
    examples = load_task(f"jsonl:{task}").examples
    inputs = write_jsonl(
        tmp_path / "in.jsonl", [{"question": examples[i].question, "answer": examples[i].answer} for i in test]
    )
    done = predict(tmp_path / "run" / "adapters" / "seed0" / "sft", inputs, tmp_path / "p.jsonl")
    assert [line["generation"] for line in done.lines] == row["generations"]
    assert all(set(line) == {"generation", "parsed"} for line in done.lines)
    assert (
        done.metrics["accuracy"] == row["accuracy"] and done.metrics["parse_failure_rate"] == row["parse_failure_rate"]
    )
