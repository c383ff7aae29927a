"""The solver shortcut: exact answers on computations, None on everything else."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

from areion.routing.solver import MAX_CHARS, Solution, request_text, solve, solve_request
from areion.types import ChatRequest, Message

SHARED_ROUTING = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "routing"


def _answer(text: str) -> str:
    solution = solve(text)
    assert solution is not None, f"did not fire on {text!r}"
    return solution.answer


ARITHMETIC = [
    ("What is 17.5% of 2,340?", "17.5% of 2340 = 409.5"),
    ("12*(3+4.5)/7", "12 * (3 + 4.5) / 7 ≈ 12.8571428571"),
    ("compute 2^10 - 1", "2^10 - 1 = 1023"),
    ("2**10", "2^10 = 1024"),
    ("2+2", "2 + 2 = 4"),
    ("What's 9 + 10?", "9 + 10 = 19"),
    ("what is 7 times 8", "7 * 8 = 56"),
    ("calculate 100 divided by 8", "100 / 8 = 12.5"),
    ("what is 3 x 4?", "3 * 4 = 12"),
    ("6 \u00d7 7", "6 * 7 = 42"),
    ("84 ÷ 4", "84 / 4 = 21"),
    ("10 \u2212 3 =", "10 - 3 = 7"),  # minus sign
    ("what is 1 / 3", "1 / 3 ≈ 0.333333333333"),
    ("calculate 9/11", "9 / 11 ≈ 0.818181818182"),  # the verb makes it a division
    ("compute 2x4", "2 * 4 = 8"),
    ("what is 0.1 + 0.2", "0.1 + 0.2 = 0.3"),  # exact, not 0.30000000000000004
    ("1,000,000 * 1,000,000", "1000000 * 1000000 = 1000000000000"),
    ("2^64", "2^64 = 18446744073709551616"),
    ("2^-2", "2^-2 = 0.25"),
    ("-2^2", "-2^2 = -4"),  # the power binds tighter than the sign
    ("2^3^2", "2^3^2 = 512"),  # right-associative
    ("-(3 - 5) * 2", "-(3 - 5) * 2 = 4"),
    ("what is 15 percent of 80?", "15% of 80 = 12"),
    ("what is 10% of 50 + 5", "10% of 50 + 5 = 10"),
    ("what is the square root of 144", "sqrt(144) = 12"),
    ("sqrt(2)", "sqrt(2) ≈ 1.41421356237"),
    ("√16 + 9", "sqrt(16) + 9 = 13"),
    ("sqrt(9/4)", "sqrt(9 / 4) = 1.5"),
    ("5 squared", "5^2 = 25"),
    ("3 cubed minus 1", "3^3 - 1 = 26"),
    ("4^0.5", "4^0.5 = 2"),
    ("2^0.5", "2^0.5 ≈ 1.41421356237"),
    ("17 mod 5", "17 mod 5 = 2"),
    ("2 to the power of 8", "2^8 = 256"),
    ("What is the value of 3.5 * 2?", "3.5 * 2 = 7"),
    ("Could you please calculate (1+2)*(3+4), please?", "(1 + 2) * (3 + 4) = 21"),
    ("what does 6*7 equal?", "6 * 7 = 42"),
]


@pytest.mark.parametrize(("text", "expected"), ARITHMETIC)
def test_arithmetic_answers_exactly(text: str, expected: str) -> None:
    solution = solve(text)
    assert solution is not None
    assert solution.kind == "arithmetic"
    assert solution.answer == expected
    assert solution.answer.startswith(solution.expression)


def test_large_inexact_results_use_scientific_notation() -> None:
    assert _answer("2^0.5 * 10^20") == "2^0.5 * 10^20 ≈ 1.41421356237 \u00d7 10^20"
    assert _answer("10^20 / 3") == "10^20 / 3 ≈ 3.33333333333 \u00d7 10^19"


UNITS = [
    ("convert 5 km to miles", "5 km ≈ 3.10686 mi"),
    ("how many ounces in 2.5 pounds", "2.5 lb = 40 oz"),
    ("100 °F in Celsius", "100 °F ≈ 37.7778 °C"),
    ("100°F to C", "100 °F ≈ 37.7778 °C"),
    ("Convert 100 Fahrenheit to Celsius.", "100 °F ≈ 37.7778 °C"),
    ("0 degrees c in f", "0 °C = 32 °F"),
    ("convert 212 f to degrees celsius", "212 °F = 100 °C"),
    ("8 fl oz to ml", "8 US fl oz = 236.5882365 mL"),
    ("16 oz in lb", "16 oz = 1 lb"),
    ("-40 C to F", "-40 °C = -40 °F"),
    ("300 K in celsius", "300 K = 26.85 °C"),
    ("12 in to cm", "12 in = 30.48 cm"),  # "in" the unit, then "to"
    ("what is 5 KM in miles", "5 km ≈ 3.10686 mi"),
    ("5 km is how many miles?", "5 km ≈ 3.10686 mi"),
    ("how many feet is 3 meters", "3 m ≈ 9.84252 ft"),
    ("how many seconds are there in a day?", "1 day = 86400 s"),
    ("how many days in a week", "1 week = 7 days"),
    ("convert 1 gallon to liters", "1 US gal = 3.785411784 L"),
    ("1 cup in ml", "1 US cup = 236.5882365 mL"),
    ("60 mph to km/h", "60 mph = 96.56064 km/h"),
    ("1 mile to km", "1 mi = 1.609344 km"),
    ("1,500 m in km", "1500 m = 1.5 km"),
    ("90 min to hours", "90 min = 1.5 h"),
    ("1 GiB to MiB", "1 GiB = 1024 MiB"),
    ("8 bits to bytes", "8 bits = 1 B"),
]


@pytest.mark.parametrize(("text", "expected"), UNITS)
def test_unit_conversions(text: str, expected: str) -> None:
    solution = solve(text)
    assert solution is not None
    assert solution.kind == "units"
    assert solution.answer == expected


def test_decimal_data_units_say_they_are_si() -> None:
    answer = _answer("5 GB to MB")
    assert answer.startswith("5 GB = 5000 MB")
    assert "1 kB = 1000 bytes" in answer


DATES = [
    ("what date is 45 days after 2024-03-01?", "2024-03-01 + 45 days = 2024-04-15 (Monday)"),
    ("45 days before March 1, 2024", "2024-03-01 - 45 days = Tuesday, January 16, 2024"),
    ("2024-02-28 + 2 days", "2024-02-28 + 2 days = 2024-03-01 (Friday)"),  # leap year
    ("2023-02-28 + 1 day", "2023-02-28 + 1 days = 2023-03-01 (Wednesday)"),
    ("March 1, 2024 + 2 weeks", "2024-03-01 + 14 days = Friday, March 15, 2024"),
    ("add 10 days to 2024-12-25", "2024-12-25 + 10 days = 2025-01-04 (Saturday)"),
    ("how many days between 2024-01-01 and 2024-12-25?", "359 days from 2024-01-01 to 2024-12-25"),
    ("how many days from 2024-12-25 to 2024-01-01", "359 days from 2024-01-01 to 2024-12-25"),
    ("what is 2024-12-25 - 2024-01-01", "2024-12-25 - 2024-01-01 = 359 days"),
    ("what day of the week was 1969-07-20?", "1969-07-20 was a Sunday."),
    ("What day of the week is July 4, 2026?", "July 4, 2026 is a Saturday."),
    ("which day of the week did 1 Jan 2000 fall on", "January 1, 2000 was a Saturday."),
]


@pytest.mark.parametrize(("text", "expected"), DATES)
def test_date_arithmetic(text: str, expected: str) -> None:
    solution = solve(text)
    assert solution is not None
    assert solution.kind == "dates"
    assert solution.answer == expected


def test_durations_combine() -> None:
    assert _answer("what is 1 week and 3 days from 1st January 2025") == (
        "2025-01-01 + 10 days = Saturday, January 11, 2025"
    )


NOT_COMPUTATIONS = [
    # questions that merely contain numbers
    "Who won the 1998 World Cup?",
    "What is 1998?",
    "What happened in 1969?",
    "Is 17 a prime number?",
    "What is 2 + 2 in binary?",
    "What's 2+2? Explain your reasoning.",
    "what is 1/3 as a fraction",
    "Solve 2x + 3 = 7",
    "What is x + 3 if x = 2?",
    "1 + 1 = 3",
    # requests for code, prose, reasoning
    "Write a function that adds 2 numbers",
    "Write a Python function to compute 2^10 - 1",
    "['Write a function to multiply two integers.']",
    "Explain why 0.1 + 0.2 != 0.3 in floating point",
    "If a train travels 60 miles in 1.5 hours, what is its average speed?",
    "John has 3 apples and eats 1. How many are left?",
    "How many days until Christmas?",
    "What date is 30 days from today?",
    "How many days are in a year?",
    "How many ounces in a cup of flour?",
    # notation that is not clearly arithmetic
    "24/7",
    "What is 24/7?",
    "What is 9/11?",
    "what's 7/11",
    "9-5",
    "50/50",
    "What is 1920x1080?",
    "what is a 2x4",
    "What is 2024-03-01?",
    "What is 2024-3-1?",
    "12/25/2024",
    "1-800-555-1234",
    "what is 007 + 1",
    "6/2(1+2)",
    "2(3+4)",
    "17 % 5",
    "3.11.7",
    "sqrt 16^2",
    "1,5 + 2",
    # values that are not numbers
    "what is 1/0",
    "0^0",
    "0^-1",
    "sqrt(-4)",
    "(-8)^(1/3)",
    "-17 mod 5",
    "-500 C to F",
    # units that are ambiguous, unknown or of different kinds
    "5 mb to kb",
    "1 ton to kg",
    "1 month in days",
    "1 year in days",
    "5 oz to ml",
    "5K to miles",
    "100 c to f",
    "5 c to cups",
    "5 km to the station",
    "3 days in Paris",
    "am to ft",
    # dates that are ambiguous
    "what day of the week was 03/01/2024",
    "what day of the week was 1066-10-14",
    "what date is 3 months after 2024-01-31",
    "what day of the week is 2024-02-30",
    # MMLU-style multiple choice
    "(1+i)^10 =\nA. 1\nB. i\nC. 32\nD. 32i\nAnswer:",
    "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q."
    "\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:",
    "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:",
    "",
    "   ",
    "?",
]


@pytest.mark.parametrize("text", NOT_COMPUTATIONS)
def test_does_not_fire(text: str) -> None:
    assert solve(text) is None


HOSTILE = [
    "9**9**9",
    "9^9^9^9",
    "(2^1000)^1000",
    "10^10000",
    "2^3500",
    "99999999999999999999^99999999999999999999",
    "1.5^100000",
    "10^-100000",
    "2^0.5^1000000",
    "(" * 40 + "1" + ")" * 40,
    "-" * 150 + "1",
    "1" + "+1" * 99,
    "9" * 60 + " * 2",
    "__import__('os').system('ls')",
    "().__class__.__bases__[0].__subclasses__()",
    "what is 2 + eval('1')",
    "lambda: 1",
    "what date is 99999999999 days after 2024-01-01",
    "what date is 3000000 days after 9999-12-31",
    "what is " + "1 + " * 2000 + "1",
    "x" * 100_000,
    "2+2 " + " " * 100_000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_input_is_refused_fast(text: str) -> None:
    started = time.thread_time()
    assert solve(text) is None
    # A generous bound: the point is that nothing grows with the input's ambition. CPU
    # time of this thread: other processes on a busy machine do not count.
    assert time.thread_time() - started < 0.05


def test_results_at_the_size_limit_are_still_answered() -> None:
    answer = _answer("2^3000")
    assert answer == f"2^3000 = {2**3000}"
    assert _answer("1^1000000") == "1^1000000 = 1"


def test_long_text_is_refused_before_it_is_read() -> None:
    text = "what is 2 +" + " " * (MAX_CHARS - 12) + "2"
    assert len(text) == MAX_CHARS
    assert solve(text) is not None
    assert solve(text + " " * (MAX_CHARS - len(text) + 1)) is None


def test_solution_is_immutable_data() -> None:
    solution = solve("1 + 1")
    assert solution == Solution(answer="1 + 1 = 2", kind="arithmetic", expression="1 + 1")
    with pytest.raises(AttributeError):
        solution.answer = "3"  # type: ignore[misc]


# ---------------------------------------------------------------- chat requests


def _request(*messages: Message, **options: object) -> ChatRequest:
    return ChatRequest(model="auto", messages=list(messages), **options)  # type: ignore[arg-type]


def test_request_text_takes_a_lone_user_message() -> None:
    assert request_text([{"role": "user", "content": "2+2"}]) == "2+2"
    parts = [{"type": "text", "text": "2+"}, {"type": "text", "text": "2"}]
    assert request_text([{"role": "user", "content": parts}]) == "2+2"
    assert request_text([Message(role="user", content="2+2")]) == "2+2"


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "2+2"}],
        [{"role": "developer", "content": "Reply in JSON."}, {"role": "user", "content": "2+2"}],
        [
            {"role": "user", "content": "2+2"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "3+3"},
        ],
        [{"role": "assistant", "content": "2+2"}],
        [{"role": "user", "content": None}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    ],
)
def test_request_text_declines_anything_else(messages: list[dict[str, object]]) -> None:
    assert request_text(messages) is None


def test_solve_request_answers_a_plain_computation() -> None:
    request = _request(Message(role="user", content="What is 17.5% of 2,340?"))
    assert solve_request(request) == "17.5% of 2340 = 409.5"
    assert solve_request(_request(Message(role="user", content="Tell me a joke"))) is None


@pytest.mark.parametrize(
    "options",
    [
        {"tools": [{"type": "function", "function": {"name": "calc", "parameters": {}}}]},
        {"tool_choice": "required"},
        {"stop": ["4"]},
        {"extra": {"response_format": {"type": "json_object"}}},
        {"extra": {"n": 3}},
        {"extra": {"logprobs": True}},
    ],
)
def test_solve_request_declines_requests_that_shape_the_answer(options: dict[str, object]) -> None:
    request = _request(Message(role="user", content="2+2"), **options)
    assert solve_request(request) is None


def test_solve_request_declines_a_system_prompt() -> None:
    request = _request(
        Message(role="system", content="You are a tutor: explain every step."),
        Message(role="user", content="2+2"),
    )
    assert solve_request(request) is None


# ---------------------------------------------------------------- shared data sets


def _shared_prompts() -> list[str]:
    csv.field_size_limit(1 << 30)
    prompts: list[str] = []
    for path in sorted(SHARED_ROUTING.glob("*/*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            prompts.extend(row["prompt"] for row in csv.DictReader(handle))
    return prompts


@pytest.mark.skipif(
    not SHARED_ROUTING.is_dir(), reason=f"no shared routing data at {SHARED_ROUTING}"
)
def test_no_fire_on_the_shared_routing_prompts() -> None:
    prompts = _shared_prompts()
    assert len(prompts) > 1000  # the walk found the files
    fired = [(prompt[:80], s.answer) for prompt in prompts if (s := solve(prompt)) is not None]
    assert fired == []
