"""Bad input fails loudly: an IA2Error naming the file and line or field, a one-line CLI error and a non-zero exit."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from conftest import small_run, toy_rows, write_jsonl
from ia2 import config
from ia2.commands import cli
from ia2.data import splits
from ia2.data.prompts import Encoder
from ia2.data.tasks import Example, Task, check_sizes, load_task
from ia2.errors import IA2Error
from ia2.model import loading
from ia2.run import experiment


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of ia2.commands.cli.main, whether it returns or exits."""
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


PROGRESS = re.compile(r"\d+%\|.*\| *\d+/\d+ \[")  # a tqdm frame: "desc:  50%|█████     | 2/4 [00:01<00:01, ...]"


def error_lines(err: str) -> list[str]:
    """Non-empty stderr lines, ignoring progress-bar redraws (tqdm writes '\r'-separated frames, and clears nested
    bars with cursor-up escapes)."""
    return [
        line
        for line in err.splitlines()
        if line.strip() and "\r" not in line and "\x1b[" not in line and not PROGRESS.search(line)
    ]


def cli_args(model: Path | str, task: str, out: Path, *extra: str) -> list[str]:
    return small_run(model, task, out, *extra)


def assert_cli_fails(argv, capsys, *needles: str) -> str:
    code, err = run_cli(argv, capsys)
    assert code != 0
    lines = error_lines(err)
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def test_missing_jsonl_file(tmp_path, llama_dir, capsys):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(IA2Error, match="nope.jsonl"):
        load_task(f"jsonl:{path}")
    assert_cli_fails(cli_args(llama_dir, f"jsonl:{path}", tmp_path / "out"), capsys, str(path))
    assert not (tmp_path / "out" / "results.json").exists()


def test_malformed_json_line(tmp_path, llama_dir, capsys):
    rows = [json.dumps(r) for r in toy_rows(30)]
    rows[6] = '{"question": "is the cat big?", "answer": "yes"'  # line 7
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(IA2Error) as info:
        load_task(f"jsonl:{path}")
    assert f"{path}:7" in str(info.value) and "\n" not in str(info.value)
    assert_cli_fails(cli_args(llama_dir, f"jsonl:{path}", tmp_path / "out"), capsys, f"{path}:7")


def test_blank_lines_do_not_shift_line_numbers(tmp_path):
    rows = [json.dumps(r) for r in toy_rows(4)]
    rows.insert(1, "")
    rows.append('{"question": "q"}')  # line 6
    path = write_jsonl(tmp_path / "gaps.jsonl", rows)
    with pytest.raises(IA2Error, match=r"gaps\.jsonl:6: field 'answer'"):
        load_task(f"jsonl:{path}")


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"question": "is the cat big?"}, "answer"),
        ({"answer": "yes"}, "question"),
        ({"question": "is it?", "answer": ""}, "answer"),
        ({"question": "is it?", "answer": 3}, "answer"),
        ({"question": "is it?", "answer": "yes", "split": 1}, "split"),
        (["is it?", "yes"], "object"),
    ],
)
def test_missing_or_bad_field(tmp_path, llama_dir, capsys, bad, field):
    rows = toy_rows(30)
    rows[3] = bad  # line 4
    path = write_jsonl(tmp_path / "field.jsonl", rows)
    with pytest.raises(IA2Error) as info:
        load_task(f"jsonl:{path}")
    assert f"{path}:4" in str(info.value) and field in str(info.value)
    assert_cli_fails(cli_args(llama_dir, f"jsonl:{path}", tmp_path / "out"), capsys, f"{path}:4", field)


def test_non_utf8_byte_names_line_and_column(tmp_path, llama_dir, capsys):
    rows = [json.dumps(r).encode() for r in toy_rows(10)]
    rows[4] = b'{"question": "is the caf\xe9 big?", "answer": "yes"}'  # line 5, a Latin-1 byte at column 25
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    with pytest.raises(IA2Error, match=rf"^{path}:5: not valid UTF-8 \(byte 0xe9 at column 25\)$"):
        load_task(f"jsonl:{path}")
    assert_cli_fails(cli_args(llama_dir, f"jsonl:{path}", tmp_path / "out"), capsys, f"{path}:5", "UTF-8")


@pytest.mark.parametrize("split", ["dev", "validation", "Test", ""])
def test_unknown_split_value(tmp_path, split):
    rows = toy_rows(10)
    rows[6]["split"] = split  # line 7
    path = write_jsonl(tmp_path / "split.jsonl", rows)
    with pytest.raises(IA2Error, match=rf"split\.jsonl:7: field 'split' = '{split}' is not one of \['train', 'test'\]"):
        load_task(f"jsonl:{path}")


def test_known_split_values(tmp_path):
    rows = toy_rows(10)
    rows[0]["split"], rows[1]["split"] = "train", "test"
    task = load_task(f"jsonl:{write_jsonl(tmp_path / 'split.jsonl', rows)}")
    assert [e.split for e in task.examples[:3]] == ["train", "test", None]


def test_answer_not_among_given_labels(tmp_path):
    rows = toy_rows(10)
    rows[2]["answer"] = "maybe"
    path = write_jsonl(tmp_path / "labels.jsonl", rows)
    with pytest.raises(IA2Error, match=r"labels\.jsonl:3: field 'answer'"):
        load_task(f"jsonl:{path}", labels=("no", "yes"))


def test_repeated_questions_are_dropped_so_they_cannot_leak_into_test(tmp_path, caplog):
    rows = toy_rows(30)
    rows[20] = rows[25] = {"question": rows[3]["question"], "answer": rows[3]["answer"]}
    path = write_jsonl(tmp_path / "dups.jsonl", rows)
    with caplog.at_level(logging.INFO, logger="ia2.data.tasks.base"):
        task = load_task(f"jsonl:{path}")
    assert len(task.examples) == 28 and [e.question for e in task.examples].count(rows[3]["question"]) == 1
    assert task.examples[3].where.endswith(":4") and task.examples[20].where.endswith(":22"), "first kept"
    assert [r.getMessage() for r in caplog.records] == [
        f"jsonl:{path}: 2 repeated questions dropped (the first of each kept)"
    ]


def test_repeated_question_with_another_answer_is_an_error_in_jsonl(tmp_path):
    rows = toy_rows(30)
    other = "no" if rows[3]["answer"] == "yes" else "yes"
    rows[25] = {"question": rows[3]["question"], "answer": other}  # line 26 contradicts line 4
    path = write_jsonl(tmp_path / "dups.jsonl", rows)
    with pytest.raises(IA2Error) as info:
        load_task(f"jsonl:{path}")
    message = str(info.value)
    assert message.startswith(f"{path}:26: field 'question' repeats {path}:4 ")
    assert repr(other) in message and repr(rows[3]["answer"]) in message


def test_repeats_with_another_answer_keep_the_first_in_fixed_data(caplog):
    """BIG-bench and benchmark data cannot be edited: the first answer wins and a warning counts the disagreements."""
    examples = tuple(
        Example(q, a, f"bigbench:t:example {i}")
        for i, (q, a) in enumerate([("q1", "yes"), ("q2", "no"), ("q1", "no"), ("q2", "no")])
    )
    with caplog.at_level(logging.INFO, logger="ia2.data.tasks.base"):
        task = Task("bigbench:t", examples, labels=("no", "yes")).unique()
    assert task.examples == examples[:2]
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            "bigbench:t: 2 repeated questions dropped (the first of each kept), 1 of them with a different answer",
        )
    ]


def test_labels_differing_only_in_case(tmp_path, llama_dir, capsys):
    rows = toy_rows(30)
    rows[2]["answer"], rows[6]["answer"] = "Yes", "YES"  # lines 3 and 7; sorted labels: "YES", "Yes", "no", "yes"
    path = write_jsonl(tmp_path / "case.jsonl", rows)
    task = load_task(f"jsonl:{path}")
    with pytest.raises(IA2Error, match=rf"^labels 'YES' \({path}:7\) and 'Yes' \({path}:3\) differ only in case"):
        task.check_label_case()
    _, tok = loading.load(str(llama_dir))
    with pytest.raises(IA2Error, match="differ only in case: normalise them"):
        Encoder(task, tok, 512)
    assert_cli_fails(cli_args(llama_dir, f"jsonl:{path}", tmp_path / "out"), capsys, f"{path}:3", f"{path}:7", "case")
    assert not (tmp_path / "out" / "results.json").exists()


def test_given_labels_must_occur_in_the_data(tmp_path):
    path = write_jsonl(tmp_path / "labels.jsonl", toy_rows(10))
    with pytest.raises(IA2Error, match=rf"^label 'maybe' given in labels never occurs as an answer in {path}$"):
        load_task(f"jsonl:{path}", labels=("no", "yes", "maybe"))
    with pytest.raises(
        IA2Error, match=rf"^labels 'maybe', 'unsure' given in labels never occur as an answer in {path}$"
    ):
        load_task(f"jsonl:{path}", labels=("maybe", "no", "unsure", "yes"))
    assert load_task(f"jsonl:{path}", labels=("yes", "no")).labels == ("yes", "no")


def test_bigbench_refuses_labels():
    with pytest.raises(IA2Error, match="bigbench:metaphor_boolean.*drop --labels"):
        load_task("bigbench:metaphor_boolean", labels=("yes", "no"))


def test_single_label_rejected(tmp_path):
    path = write_jsonl(tmp_path / "one.jsonl", [{"question": "is it?", "answer": "yes"}] * 5)
    with pytest.raises(IA2Error, match="one.jsonl"):
        load_task(f"jsonl:{path}")


def test_unknown_task_source(tmp_path, llama_dir, capsys):
    for spec in ("csvfile:data.csv", "jsonl:", "nosource"):
        with pytest.raises(IA2Error, match="unknown task"):
            load_task(spec)
    assert_cli_fails(cli_args(llama_dir, "csvfile:data.csv", tmp_path / "out"), capsys, "csvfile:data.csv")


def test_unknown_model_name(tmp_path, toy_jsonl, capsys):
    with pytest.raises(IA2Error, match="no-such-model"):
        loading.resolve("no-such-model")
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with pytest.raises(IA2Error, match="config.json"):
        loading.resolve(str(not_a_model))
    assert_cli_fails(cli_args("no-such-model", f"jsonl:{toy_jsonl}", tmp_path / "out"), capsys, "no-such-model")


@pytest.mark.parametrize(
    "config, fault",
    [
        ("{}", "field 'model_type' missing"),
        ('{"model_type": ""}', "field 'model_type' missing"),
        ('{"model_type": "llama",', "not valid JSON"),
        ("[]", "expected a JSON object, got list"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_model_folder_with_a_bad_config(tmp_path, toy_jsonl, capsys, config, fault):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_bytes(config if isinstance(config, bytes) else config.encode())
    with pytest.raises(IA2Error, match=rf"^{folder / 'config.json'}: {fault}.*; not a transformers model folder$"):
        loading.resolve(str(folder))
    assert_cli_fails(
        cli_args(folder, f"jsonl:{toy_jsonl}", tmp_path / "out"), capsys, str(folder / "config.json"), fault
    )


@pytest.mark.parametrize(
    "change, needle",
    [({"model_type": "nonexistent_arch"}, "nonexistent_arch"), ({"hidden_size": "wide"}, "hidden_size")],
)
def test_model_config_transformers_refuses(tmp_path, llama_dir, toy_jsonl, capsys, change, needle):
    folder = tmp_path / "model"
    shutil.copytree(llama_dir, folder)
    (folder / "config.json").write_text(json.dumps({**json.loads((llama_dir / "config.json").read_text()), **change}))
    with pytest.raises(IA2Error, match=rf"^cannot load model '{folder}': .*{needle}") as info:
        loading.load(str(folder))
    assert "\n" not in str(info.value)
    assert_cli_fails(cli_args(folder, f"jsonl:{toy_jsonl}", tmp_path / "out"), capsys, str(folder), needle)


def test_unknown_method(tmp_path, llama_dir, toy_jsonl, capsys):
    argv = cli_args(llama_dir, f"jsonl:{toy_jsonl}", tmp_path / "out")
    argv[argv.index("--methods") + 1] = "zero-shot,bogus"
    code, err = run_cli(argv, capsys)
    assert code != 0
    assert "bogus" in err and "Traceback" not in err
    with pytest.raises(IA2Error, match="^methods must be one of .*, got 'bogus'"):
        config.make(str(llama_dir), f"jsonl:{toy_jsonl}", methods=["bogus"])


def test_too_few_examples(tmp_path, llama_dir, capsys):
    path = write_jsonl(tmp_path / "small.jsonl", toy_rows(15))  # N=4 + dev 2 + test 10 need 16
    with pytest.raises(IA2Error, match="need 16"):
        splits.test_and_pool(load_task(f"jsonl:{path}"), config.make("m", "t", n_train=4, n_test=10).data)
    assert_cli_fails(cli_args(llama_dir, f"jsonl:{path}", tmp_path / "out"), capsys, "small.jsonl", "15")
    assert not (tmp_path / "out" / "results.json").exists()
    # marked test rows: too few of them is also an error
    rows = toy_rows(30)
    for r in rows[:5]:
        r["split"] = "test"
    path = write_jsonl(tmp_path / "marked.jsonl", rows)
    with pytest.raises(IA2Error, match=r"marked\.jsonl: 5 examples have split 'test' but n_test=10"):
        splits.test_and_pool(load_task(f"jsonl:{path}"), config.make("m", "t", n_train=4, n_test=10).data)
    for r in rows[5:]:
        r["split"] = "train"
    path = write_jsonl(tmp_path / "marked.jsonl", rows)
    with pytest.raises(IA2Error, match=r"marked\.jsonl: 25 examples outside the test split, but N=4 \+ dev=22 need 26"):
        splits.test_and_pool(load_task(f"jsonl:{path}"), config.make("m", "t", n_train=4, n_dev=22, n_test=5).data)


def _marked(path: Path, n: int, n_test_rows: int) -> Task:
    """A toy JSONL task of n rows, the first n_test_rows marked split 'test'."""
    rows = toy_rows(n)
    for r in rows[:n_test_rows]:
        r["split"] = "test"
    return load_task(f"jsonl:{write_jsonl(path, rows)}")


def test_check_sizes_names_the_short_part(tmp_path):
    task = _marked(tmp_path / "marked.jsonl", 30, 3)
    with pytest.raises(
        IA2Error, match=rf"^jsonl:{tmp_path}/marked\.jsonl: 3 examples have split 'test' but n_test=10$"
    ):
        check_sizes(task, 4, 2, 10)
    with pytest.raises(
        IA2Error,
        match=r"marked\.jsonl: 27 examples outside the test split, but N=16 \+ dev=8 "
        r"\+ unlabelled=4 need 28$",
    ):
        check_sizes(task, 16, 8, 3, unlabelled=4)
    check_sizes(task, 16, 8, 3, unlabelled=3)
    plain = load_task(f"jsonl:{write_jsonl(tmp_path / 'plain.jsonl', toy_rows(15))}")
    with pytest.raises(IA2Error, match=r"plain\.jsonl: 15 examples, but N=4 \+ dev=2 \+ test=10 need 16$"):
        check_sizes(plain, 4, 2, 10)
    check_sizes(plain, 4, 1, 10)


def test_prompt_longer_than_context(tmp_path, short_context_dir, capsys):
    """A 48-position model: plain prompts fit, ICL prompts with 3 demos do not."""
    path = write_jsonl(tmp_path / "toy.jsonl", toy_rows(40))
    out = tmp_path / "out"
    line = assert_cli_fails(cli_args(short_context_dir, f"jsonl:{path}", out), capsys, "toy.jsonl:", "context")
    assert "48" in line
    assert not (out / "results.json").exists()


def test_long_question_rejected_by_encoder(tmp_path, llama_dir):
    model, tok = loading.load(str(llama_dir))
    rows = toy_rows(10)
    rows[5]["question"] = " ".join(["cat"] * 600)
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    task = load_task(f"jsonl:{path}")
    encoder = Encoder(task, tok, model.config.max_position_embeddings)
    encoder.encode(task.examples[4])
    with pytest.raises(
        IA2Error, match=r"long\.jsonl:6: prompt of \d+ tokens \+ 1 answer tokens exceed the model's context of 512"
    ):
        encoder.encode(task.examples[5])


def test_long_demonstration_named_rather_than_the_query(tmp_path, llama_dir):
    """When the query alone fits, the overflow is the demonstrations': the longest one is named, with its size."""
    model, tok = loading.load(str(llama_dir))
    rows = toy_rows(10)
    rows[5]["question"] = " ".join(["cat"] * 600)
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    task = load_task(f"jsonl:{path}")
    encoder = Encoder(task, tok, model.config.max_position_embeddings)
    with pytest.raises(IA2Error) as info:
        encoder.encode(task.examples[4], [task.examples[1], task.examples[5], task.examples[2]])
    message = str(info.value)
    assert re.match(rf"{path}:6: demonstrations too long: this one has 6\d\d tokens", message) and "\n" not in message
    assert f"the 3 before {path}:5" in message and "context of 512 (the query alone has" in message
    assert message.endswith("use fewer demonstrations (--k-max)")
    with pytest.raises(IA2Error, match=rf"^{path}:6: prompt of \d+ tokens"):
        encoder.encode(task.examples[5], [task.examples[1]])


def test_labels_with_identical_tokens(tmp_path, llama_dir, capsys):
    """Two words the tokenizer does not know are both `<unk>`: refused, naming both (labels that only share their
    first tokens are scored as whole sequences instead: tests/test_labels.py)."""
    rows = toy_rows(40)
    for i, r in enumerate(rows):
        r["answer"] = ("zebra", "giraffe")[i % 2]
    path = write_jsonl(tmp_path / "collide.jsonl", rows)
    model, tok = loading.load(str(llama_dir))
    with pytest.raises(IA2Error, match="labels 'giraffe' and 'zebra' are the same tokens"):
        Encoder(load_task(f"jsonl:{path}"), tok, 512)
    assert_cli_fails(cli_args(llama_dir, f"jsonl:{path}", tmp_path / "out"), capsys, "collide.jsonl", "'zebra'")
    assert not (tmp_path / "out" / "results.json").exists()


def test_interrupted_run_keeps_finished_rows_and_resumes_from_them(tmp_path, llama_dir, toy_jsonl, monkeypatch):
    out = tmp_path / "out"

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "method_rows", boom)
    cfg = config.make(
        str(llama_dir), f"jsonl:{toy_jsonl}", methods=["zero-shot", "icl", "ia2"], n_train=4, seeds=[0], n_test=10
    )
    with pytest.raises(KeyboardInterrupt):
        experiment.run(cfg, out)
    assert not (out / "results.json").exists() and not (out / "results.md").exists()
    assert sorted(p.name for p in out.rglob("rows/*/seed0/*.json")) == ["icl.json", "zero-shot.json"], (
        "rows measured before the interrupt are kept; the unfinished method has none"
    )
    assert not [p for p in out.rglob("*") if p.name.startswith(".")], "no temporary files left behind"
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("rows/*/seed0/*.json")}
    monkeypatch.undo()
    result = experiment.run(cfg, out)
    assert sorted(r["method"] for r in result["rows"]) == ["ia2", "icl", "zero-shot"]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept, "the resume writes only the missing method's rows"


def test_a_run_interrupted_while_preparing_seeds_keeps_the_finished_seeds_baselines(
    tmp_path, llama_dir, toy_jsonl, monkeypatch
):
    """The baselines of each seed are written as soon as the seed is prepared: a stop while the second seed is
    prepared keeps the first seed's ICL and zero-shot rows."""
    out, real = tmp_path / "out", experiment.prepare_seed

    def second_fails(setup, handle, seed, *args):
        if seed == 1:
            raise KeyboardInterrupt
        return real(setup, handle, seed, *args)

    monkeypatch.setattr(experiment, "prepare_seed", second_fails)
    cfg = config.make(
        str(llama_dir), f"jsonl:{toy_jsonl}", methods=["zero-shot", "icl", "sft"], n_train=4, seeds=[0, 1], n_test=10
    )
    with pytest.raises(KeyboardInterrupt):
        experiment.run(cfg, out)
    assert sorted(str(p.relative_to(p.parents[1])) for p in out.rglob("rows/*/seed*/*.json")) == [
        "seed0/icl.json",
        "seed0/zero-shot.json",
    ]


@pytest.mark.parametrize(
    "option, value",
    [
        ("--n-train", "0"),
        ("--n-dev", "0"),
        ("--n-test", "0"),
        ("--train-batch-size", "0"),
        ("--eval-every", "0"),
        ("--max-epochs", "0"),
    ],
)
def test_degenerate_numbers_fail_cleanly(tmp_path, llama_dir, toy_jsonl, capsys, option, value):
    """Out-of-range numbers end in a one-line error and a non-zero exit, never an uncaught exception."""
    args = cli_args(llama_dir, f"jsonl:{toy_jsonl}", tmp_path / "out")
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    try:
        code, err = run_cli(args, capsys)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"{option} {value}: uncaught {type(exc).__name__}: {exc}")
    assert code != 0
    lines = error_lines(err)
    assert len(lines) == 1, lines
    assert not (tmp_path / "out" / "results.json").exists()
