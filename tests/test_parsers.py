"""Answer extractors on real-shaped gold solutions and generations, each case with its exact expected output."""

from __future__ import annotations

import pytest

from ia2.data import parsers
from ia2.data.parsers import boxed, extract, gsm8k, gsm8k_reference, is_correct, number, sciq
from ia2.errors import IA2Error

# GSM8K train example 0, verbatim, calculator annotations included.
NATALIA = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (NATALIA, "72"),
        ("The temperature drops 3 - 8 = <<3-8=-5>>-5 degrees.\n#### -5", "-5"),
        ("#### −5", "-5"),
        ("#### 1,234", "1234"),
        ("#### 12,345,678", "12345678"),
        ("She pays $5 in total.\n#### $5.", "5"),
        ("#### -$5", "-5"),
        ("#### 72.0", "72"),
        ("#### 72.00", "72"),
        ("#### 0.50", "0.5"),
        ("#### 3\nCheck: recount.\n#### 4", "4"),
        ("#### 18\n\nQuestion: Tom has 3 apples. How many does he have?", "18"),
        ("#### 5 apples", "5"),
    ],
)
def test_gsm8k_reads_the_signed_number_after_the_last_marker(text, expected):
    assert gsm8k(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Natalia sold 72 clips altogether.",  # no marker: no fallback to the last number
        "#### seventy-two",
        "#### \n72",  # the number must be on the marker's line
        "#### 1,23",  # malformed thousands grouping
        "#### 72\nThen again, maybe ####",  # the last marker has no number after it
        "",
    ],
)
def test_gsm8k_is_strict(text):
    assert gsm8k(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (NATALIA, "72"),
        ("#### -5", "5"),  # known defect of the reference: the minus sign is dropped
        ("The answer is 42.", "42"),
        ("Answer: $1,234.50.", "1234.5"),
        ("So \\boxed{5}.\n#### 7", "5"),  # \boxed outranks ####
        ("She walks 12 miles in 3 hours", "3"),  # last number before a unit word
        ("It cost 0.5 then 7 in 1999", "7"),  # fallback skips years and numbers in (0, 1)
        ("42<|eot_id|>", "42"),
        ("The answer is blue.", "blue"),  # a pattern matched but held no number: the cleaned match
        ("  no digits at all  ", "no digits at all"),  # nothing matched: the whole (stripped) text
        ("Founded in 1998.", "Founded in 1998."),
    ],
)
def test_gsm8k_reference_reproduces_the_lenient_parser(text, expected):
    assert gsm8k_reference(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the answer is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\frac12}", "\\frac{1}{2}"),
        ("\\boxed{1/2}", "\\frac{1}{2}"),
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("\\boxed{.5}", "\\frac{1}{2}"),
        ("\\boxed{0.25}", "0.25"),
        ("\\boxed{.25}", "0.25"),
        ("\\boxed{x = 3}", "3"),
        ("\\boxed{1.0}", "1.0"),  # no numeric equivalence beyond the normalisation
        ("\\boxed{\\sqrt2}", "\\sqrt{2}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3,\\frac{\\pi}{2})"),
        ("\\boxed{90^\\circ}", "90"),
        ("\\boxed{10 \\text{ cm}}", "10"),
        ("\\boxed{50\\%}", "50"),
        ("\\boxed{\\$18.90}", "18.90"),
        ("First \\boxed{2}, corrected: \\boxed{3}", "3"),
        ("\\fbox{7}", "7"),
    ],
)
def test_boxed_takes_the_last_box_and_normalises_it(text, expected):
    assert boxed(text) == expected


@pytest.mark.parametrize("text", ["The answer is 3.", "\\boxed{\\frac{1}{2}", "\\boxed{}"])
def test_boxed_none_without_a_complete_box(text):
    assert boxed(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mitochondria are the powerhouse of the cell.\n#### Mitochondria.", "mitochondria"),
        ("#### the nucleus", "nucleus"),
        ("#### An  Electron!\n\nQuestion: What orbits the nucleus?", "electron"),
        ("#### kinetic energy", "kinetic energy"),
    ],
)
def test_sciq_normalises_the_text_after_the_marker(text, expected):
    assert sciq(text) == expected


@pytest.mark.parametrize("text", ["Mitochondria.", "####   ", "#### .\n"])
def test_sciq_none_without_an_answer(text):
    assert sciq(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9 apples", "9"),
        (" 1,200.50 dollars", "1200.5"),
        ("-3 degrees", "-3"),
        ("$5", "5"),
        ("0 marbles", "0"),
        ("12.", "12"),
        ("7\n\nQuestion: more", "7"),
    ],
)
def test_number_reads_the_number_the_answer_starts_with(text, expected):
    assert number(text) == expected


@pytest.mark.parametrize("text", ["about 9", "9,5", "1.2.3", "7th", "1/2 cup", "Mrs. Hilt", ""])
def test_number_is_strict(text):
    assert number(text) is None


def test_parser_registry_names():
    assert list(parsers.PARSERS) == ["text", "gsm8k", "gsm8k-reference", "boxed", "sciq", "number"]
    assert extract("gsm8k", NATALIA) == "72"


def test_text_parser_is_the_first_line_normalised():
    assert extract("text", "  Cat  RED\n\nQuestion: next") == "cat red"
    assert extract("text", " \n") is None


@pytest.mark.parametrize(
    ("parser", "generation", "gold", "expected"),
    [
        ("gsm8k", "24 + 48 = 72\n#### 72.00", NATALIA, True),
        ("gsm8k", "#### 5", "#### -5", False),
        ("gsm8k", "The answer is 72.", NATALIA, False),  # unparsable generation counts as wrong
        ("gsm8k-reference", "#### 5", "#### -5", True),  # the reference's dropped minus, reproduced
        ("boxed", "Thus \\boxed{\\dfrac{1}{2}}.", "\\boxed{0.5}", True),
        ("boxed", "\\boxed{\\frac{1}{3}}", "\\boxed{\\frac{1}{2}}", False),
        ("sciq", "#### The Nucleus.", "#### nucleus", True),
        ("sciq", "#### cytoplasm", "#### nucleus", False),
    ],
)
def test_is_correct(parser, generation, gold, expected):
    assert is_correct(parser, generation, gold) is expected


def test_unparsable_gold_raises():
    with pytest.raises(IA2Error, match="gold answer has no parsable answer"):
        is_correct("gsm8k", "#### 72", "Natalia sold 72 clips.")


def test_unknown_parser_raises_listing_known_names():
    with pytest.raises(
        IA2Error, match="unknown answer parser 'math'; known: text, gsm8k, gsm8k-reference, boxed, sciq"
    ):
        extract("math", "\\boxed{1}")
