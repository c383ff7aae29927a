"""Exact answers, with no model call, to requests that are pure computation.

`solve(text)` answers three kinds of request: arithmetic ("What is 17.5% of 2,340?",
"12*(3+4.5)/7"), unit conversion ("convert 5 km to miles", "100 °F in Celsius") and
date arithmetic ("what date is 45 days after 2024-03-01?", "how many days between
2024-01-01 and 2024-12-25?", "what day of the week was 1969-07-20?").

It fires only when the whole request is recognisably one computation: the text must
match one of a few fixed frames ("what is <expression>", "<quantity> <unit> to
<unit>", ...) and every word must be accounted for by the frame or by the expression
grammar. Anything left over ("... in binary", "explain", a second sentence, an answer
list) means the request is not a computation, and `solve` returns None. So does
anything ambiguous, where a model's judgement is worth its tokens:

- notation that is not clearly arithmetic: "24/7", "9/11", "9-5", "50/50", "1920x1080"
  (phrases, events, ranges, scores, sizes) unless an imperative verb asks for the
  computation ("calculate 9/11"); "2024-3-1" or "12/25/2024" (dates); numbers with
  leading zeros (codes); "6/2(1+2)" (implicit multiplication); "17 % 5" (percent or
  modulo?); a number alone ("what is 1998?");
- results that are not a number: division by zero, 0^0, square roots of negatives,
  temperatures below absolute zero (the model can explain why);
- units whose meaning varies: "ton", months, years, lowercase "mb"/"gb"/"kb"
  (bits or bytes?); "gallon", "cup", "pint" are US customary and named so in the
  answer ("US gal"); "GB" is SI (10^9 bytes), said in the answer;
- dates written 03/01/2024 (US or European?), dates before 1583 (Julian or
  Gregorian?), and anything relative to today ("30 days from now").

Evaluation is exact: numbers are `Fraction`s; only square roots and fractional
powers fall back to limited-precision arithmetic, and an inexact or rounded result
is shown with "≈" instead of "=". Answers restate the computation as understood, so
a reader sees the interpretation: "17.5% of 2340 = 409.5", "5 km ≈ 3.10686 mi",
"2024-03-01 + 45 days = 2024-04-15 (Monday)". User text is never given to `eval`: a tokenizer
and a recursive-descent parser accept only numbers, operators and a few words. Every
input is bounded before any work (length, tokens, parenthesis depth, digits per
number) and every result by its size in bits, so "9^9^9" is refused in microseconds.

`request_text()` takes the text from a chat request: exactly one user message and
nothing else. A system (or developer) message is a reason not to fire: it can ask
for a persona, a language or an output format ("reply in JSON", "explain every
step") that the solver's fixed answer would ignore; declining costs one model call,
answering wrongly costs a user's trust. `solve_request()` adds the request-level
checks (no tools, no response format, one choice) and returns the answer text.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any, Literal

from areion.types import ChatRequest, Message

__all__ = [
    "MAX_CHARS",
    "Solution",
    "SolutionKind",
    "request_text",
    "solve",
    "solve_request",
]

MAX_CHARS = 200
"""Longer texts are not computations a person types; they are refused unread."""

_MAX_TOKENS = 64
_MAX_DEPTH = 12
_MAX_DIGITS = 40
_MAX_BITS = 3400  # about 1000 decimal digits: larger results are refused
_ARITHMETIC_DIGITS = 12  # significant digits of a rounded arithmetic result
_UNIT_DIGITS = 6  # of a rounded conversion
_MAX_DECIMALS = 20  # an exact decimal with more fractional digits is rounded

SolutionKind = Literal["arithmetic", "units", "dates"]


@dataclass(slots=True, kw_only=True, frozen=True)
class Solution:
    """An exact answer to a computation."""

    answer: str
    """What to tell the user, e.g. `17.5% of 2340 = 409.5`."""
    kind: SolutionKind
    """Which solver answered."""
    expression: str
    """The computation as understood, normalized: `12 * (3 + 4.5) / 7`, `5 km -> mi`."""


class _Refused(Exception):
    """The text is a computation, but not one to answer without a model."""


# ---------------------------------------------------------------- entry points


def solve(text: str) -> Solution | None:
    """The exact answer when all of `text` is one computation; otherwise None."""
    if len(text) > MAX_CHARS:
        return None
    normalized = _normalize(text)
    if normalized is None:
        return None
    try:
        return _solve_dates(normalized) or _solve_units(normalized) or _solve_arithmetic(normalized)
    except (_Refused, ArithmeticError, ValueError):
        # ArithmeticError and ValueError cover what the bounds should already
        # prevent (an overflowing float, a date out of range): never an exception.
        return None


def request_text(messages: Sequence[Message | Mapping[str, Any]]) -> str | None:
    """The text of a conversation that is one user message and nothing else, else None.

    Accepts `Message` objects or OpenAI wire dicts. Content parts must all be text.
    """
    if len(messages) != 1:
        return None
    message = messages[0]
    role: object
    content: object
    if isinstance(message, Message):
        role, content = message.role, message.content
    else:
        role, content = message.get("role"), message.get("content")
    if role != "user":
        return None
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        return None
    parts: list[str] = []
    for part in content:
        if not isinstance(part, Mapping) or part.get("type") != "text":
            return None
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def solve_request(request: ChatRequest) -> str | None:
    """The answer text for a chat request the solver can answer exactly, else None.

    Declines requests that offer tools, set stop sequences, ask for a response format,
    several choices or logprobs, or carry anything but a single user message.
    """
    if request.tools or request.stop or request.tool_choice not in (None, "none", "auto"):
        return None
    extra = request.extra
    if extra.get("response_format") not in (None, {"type": "text"}):
        return None
    if extra.get("n") not in (None, 1) or extra.get("logprobs"):
        return None
    text = request_text(request.messages)
    if text is None:
        return None
    solution = solve(text)
    return None if solution is None else solution.answer


# ---------------------------------------------------------------- normalization

_TRANSLATE = str.maketrans(
    {
        "\u00d7": "*",  # multiplication sign
        "\u00b7": "*",  # middle dot
        "\u22c5": "*",  # dot operator
        "\u2217": "*",  # asterisk operator
        "\u00f7": "/",  # division sign
        "\u2212": "-",  # minus sign
        "\u2013": "-",  # en dash
        "\u2019": "'",  # right single quotation mark
        "º": "°",
        "²": "^2",
        "³": "^3",
        "√": "sqrt ",
        "\u00a0": " ",
        "\u2009": " ",
        "\u202f": " ",
    }
)
_POLITE_START = re.compile(
    r"^(?:(?:please|pls|kindly)\s+|(?:can|could|would|will)\s+you\s+(?:please\s+)?)+", re.I
)
_POLITE_END = re.compile(r"(?:,?\s+please)?[\s?!.]*$", re.I)


def _normalize(text: str) -> str | None:
    """One line, whitespace collapsed, politeness and end punctuation gone; None if empty."""
    text = text.strip()
    if "\n" in text or "\r" in text:
        return None  # one computation is one line; more is a document or a question list
    text = text.translate(_TRANSLATE).replace("**", "^")
    text = " ".join(text.split())
    text = _POLITE_END.sub("", _POLITE_START.sub("", text))
    return text or None


# ---------------------------------------------------------------- numbers and answers


def _bounded(value: Fraction) -> Fraction:
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > _MAX_BITS:
        raise _Refused("result too large")
    return value


def _terminates(value: Fraction) -> int | None:
    """Fractional digits of `value`'s exact decimal form, or None if it has none."""
    den = value.denominator
    twos = (den & -den).bit_length() - 1
    den >>= twos
    fives = 0
    while den % 5 == 0:
        den //= 5
        fives += 1
    return max(twos, fives) if den == 1 else None


def _format(value: Fraction, exact: bool, digits: int) -> tuple[str, bool]:
    """The number as a user reads it, and whether that text is exactly the value."""
    if exact:
        if value.denominator == 1:
            return str(value.numerator), True
        places = _terminates(value)
        if places is not None and places <= _MAX_DECIMALS:
            scaled = abs(value.numerator) * 10**places // value.denominator
            whole, frac = divmod(scaled, 10**places)
            sign = "-" if value < 0 else ""
            return f"{sign}{whole}.{str(frac).rjust(places, '0').rstrip('0')}", True
    with localcontext() as context:
        context.prec = digits
        rounded = Decimal(value.numerator) / Decimal(value.denominator)
    if rounded == 0:
        return "0", False
    magnitude = rounded.adjusted()
    if -6 <= magnitude < 15:
        text = f"{rounded.normalize():f}"
    else:
        mantissa = rounded.scaleb(-magnitude).normalize()
        text = f"{mantissa:f} \u00d7 10^{magnitude}"
    return text, False


def _parse_number(text: str) -> Fraction:
    """A decimal literal ("2,340", "4.5", ".5"); leading zeros and long ones refused."""
    plain = text.replace(",", "")
    if len(plain) > _MAX_DIGITS:
        raise _Refused("number too long")
    if len(plain) > 1 and plain[0] == "0" and plain[1] != ".":
        raise _Refused("leading zero: a code, not a number")
    return Fraction(plain)


# ---------------------------------------------------------------- arithmetic

_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
_TOKEN = re.compile(
    rf"""\s*(?:
    (?P<num>{_NUMBER})
    |(?P<op>[-+*/^()%])
    |(?P<word>multiplied\s+by|divided\s+by|(?:raised\s+)?to\s+the\s+power\s+of|raised\s+to
        |(?:the\s+)?square\s+root\s+of|sqrt|plus|minus|times|over|x|modulo|mod
        |squared|cubed|percent|of)(?![a-z])
    )""",
    re.X,
)
_WORD_OPS = {
    "multiplied by": "*",
    "times": "*",
    "x": "*",
    "divided by": "/",
    "over": "/",
    "plus": "+",
    "minus": "-",
    "to the power of": "^",
    "raised to the power of": "^",
    "raised to": "^",
    "square root of": "sqrt",
    "the square root of": "sqrt",
    "sqrt": "sqrt",
    "modulo": "mod",
    "mod": "mod",
    "squared": "squared",
    "cubed": "cubed",
    "percent": "%",
    "of": "of",
}
_ARITHMETIC_FRAME = re.compile(
    r"""^what\s+does\s+(?P<expr2>.+?)\s+equal$
    |^(?:(?P<verb>calculate|compute|evaluate|work\s+out|solve|what\s+is|what's|whats
            |how\s+much\s+is)(?:\s+the\s+(?:value|result)\s+of)?\s+)?
        (?P<expr>.+?)(?:\s*=\s*\??|\s+equals\s*\??)?$""",
    re.I | re.X,
)
# Hyphen- or slash-joined integers, two joins or more: a date, a phone number, an id.
_DATE_LIKE = re.compile(r"\d+([-/])\d+\1\d+")
# "24/7", "9/11", "9-5", "50/50", "2x4": unspaced, as often a phrase, an event, a range,
# a score or a size as a sum. Arithmetic only when a verb asks to compute it.
_NOTATION = re.compile(r"\d+[-/x]\d+")
_IMPERATIVES = ("calculate", "compute", "evaluate", "work", "solve")

_Value = tuple[Fraction, bool, str]  # value, exact, normalized text


def _tokens(expr: str) -> list[tuple[str, str]]:
    """(kind, text) tokens of an expression, kind "num" or "op"; refuses anything else."""
    out: list[tuple[str, str]] = []
    position, end = 0, len(expr)
    while position < end:
        match = _TOKEN.match(expr, position)
        if match is None or match.end() == position:
            raise _Refused("not part of an expression")
        position = match.end()
        if match.group("num") is not None:
            out.append(("num", match.group("num")))
        elif match.group("op") is not None:
            out.append(("op", match.group("op")))
        else:
            out.append(("op", _WORD_OPS[" ".join(match.group("word").split())]))
        if len(out) > _MAX_TOKENS:
            raise _Refused("too long")
    return out


class _Parser:
    """Recursive descent over the tokens; every operation checks its result's size.

    expr    := term (("+" | "-") term)*
    term    := unary (("*" | "/" | "mod") unary)*
    unary   := ("-" | "+") unary | power
    power   := postfix ("^" unary)?                 right-associative
    postfix := primary ("squared" | "cubed")* ["%" "of" unary]
    primary := number | "(" expr ")" | "sqrt" (number | "(" expr ")")
    """

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.position = 0
        self.operations = 0

    def peek(self) -> str | None:
        if self.position < len(self.tokens):
            return self.tokens[self.position][1]
        return None

    def take(self, expected: str) -> None:
        if self.peek() != expected:
            raise _Refused(f"expected {expected!r}")
        self.position += 1

    def parse(self) -> _Value:
        value = self.expr()
        if self.position != len(self.tokens):
            raise _Refused("unparsed tokens")
        return value

    def expr(self) -> _Value:
        left = self.term()
        while (op := self.peek()) in ("+", "-"):
            self.position += 1
            right = self.term()
            self.operations += 1
            value = left[0] + right[0] if op == "+" else left[0] - right[0]
            left = (_bounded(value), left[1] and right[1], f"{left[2]} {op} {right[2]}")
        return left

    def term(self) -> _Value:
        left = self.unary()
        while (op := self.peek()) in ("*", "/", "mod"):
            self.position += 1
            right = self.unary()
            self.operations += 1
            a, b = left[0], right[0]
            if op == "*":
                value = a * b
            elif b == 0:
                raise _Refused("division by zero")
            elif op == "/":
                value = a / b
            elif a < 0 or b < 0:
                raise _Refused("the sign of a negative modulo depends on convention")
            else:
                value = a % b
            left = (_bounded(value), left[1] and right[1], f"{left[2]} {op} {right[2]}")
        return left

    def unary(self) -> _Value:
        op = self.peek()
        if op in ("-", "+"):
            self.position += 1
            value, exact, text = self.unary()
            return (-value if op == "-" else value), exact, f"{op}{text}"
        return self.power()

    def power(self) -> _Value:
        base = self.postfix()
        if self.peek() != "^":
            return base
        self.position += 1
        exponent = self.unary()
        self.operations += 1
        value, exact = _power(base[0], exponent[0], base[1] and exponent[1])
        return value, exact, f"{base[2]}^{exponent[2]}"

    def postfix(self) -> _Value:
        value, exact, text = self.primary()
        while (op := self.peek()) in ("squared", "cubed"):
            self.position += 1
            self.operations += 1
            value = _bounded(value ** (2 if op == "squared" else 3))
            text = f"{text}^{2 if op == 'squared' else 3}"
        if self.peek() == "%":
            self.position += 1
            # "17 % 5" could be modulo or percent; only "P% of X" is unambiguous.
            self.take("of")
            whole = self.unary()
            self.operations += 1
            value = _bounded(value / 100 * whole[0])
            return value, exact and whole[1], f"{text}% of {whole[2]}"
        return value, exact, text

    def primary(self) -> _Value:
        if self.position >= len(self.tokens):
            raise _Refused("expression ends early")
        kind, token = self.tokens[self.position]
        self.position += 1
        if kind == "num":
            if self.peek() in ("(", "sqrt"):
                raise _Refused("implicit multiplication")
            return _parse_number(token), True, token.replace(",", "")
        if token == "(":
            value, exact, text = self.expr()
            self.take(")")
            if self.peek() in ("(", "sqrt") or (
                self.position < len(self.tokens) and self.tokens[self.position][0] == "num"
            ):
                raise _Refused("implicit multiplication")
            return value, exact, f"({text})"
        if token == "sqrt":
            parenthesized = self.peek() == "("
            if not parenthesized and (
                self.position >= len(self.tokens) or self.tokens[self.position][0] != "num"
            ):
                raise _Refused("sqrt of what?")
            value, exact, text = self.primary()
            if not parenthesized and self.peek() in ("^", "squared", "cubed"):
                raise _Refused("sqrt 16^2: the root of the power, or the power of the root?")
            self.operations += 1
            root, root_exact = _sqrt(value, exact)
            return root, root_exact, f"sqrt({text.removeprefix('(').removesuffix(')')})"
        raise _Refused(f"unexpected {token!r}")


def _sqrt(value: Fraction, exact: bool) -> tuple[Fraction, bool]:
    if value < 0:
        raise _Refused("square root of a negative number")
    num, den = value.numerator, value.denominator
    if exact:
        root_num, root_den = math.isqrt(num), math.isqrt(den)
        if root_num * root_num == num and root_den * root_den == den:
            return Fraction(root_num, root_den), True
    with localcontext() as context:
        context.prec = 40
        return Fraction((Decimal(num) / Decimal(den)).sqrt()), False


def _power(base: Fraction, exponent: Fraction, exact: bool) -> tuple[Fraction, bool]:
    if base == 0 and exponent <= 0:
        raise _Refused("0^0 is indeterminate; 0^-n divides by zero")
    if exponent.denominator == 1:
        n = exponent.numerator
        if abs(base) == 1:
            return (base if n % 2 else abs(base)), exact
        size = max(base.numerator.bit_length(), base.denominator.bit_length())
        if abs(n) * (size - 1) > _MAX_BITS:  # refused before any work: 9^9^9
            raise _Refused("result too large")
        return _bounded(base**n), exact
    if base < 0:
        raise _Refused("fractional power of a negative number")
    if exponent.denominator == 2 and exact:  # x^0.5, x^1.5: exact when x is a square
        root, root_exact = _sqrt(base, exact)
        if root_exact:
            return _power(root, Fraction(exponent.numerator), True)
    try:
        result = math.pow(float(base), float(exponent))
    except (OverflowError, ValueError) as error:
        raise _Refused("power out of range") from error
    if not math.isfinite(result) or (result == 0 and base != 0):
        raise _Refused("power out of range")
    return _bounded(Fraction(result)), False


def _solve_arithmetic(text: str) -> Solution | None:
    match = _ARITHMETIC_FRAME.match(text)
    if match is None:
        return None
    verb = (match.group("verb") or "").lower()
    expr = (match.group("expr") or match.group("expr2")).lower()
    if _DATE_LIKE.search(expr):
        return None
    if _NOTATION.fullmatch(expr) and not verb.startswith(_IMPERATIVES):
        return None
    tokens = _tokens(expr)
    depth = 0
    for _, token in tokens:
        depth += (token == "(") - (token == ")")
        if depth > _MAX_DEPTH:
            raise _Refused("nested too deep")
    parser = _Parser(tokens)
    value, exact, normalized = parser.parse()
    if parser.operations == 0:
        return None  # "what is 1998?" asks about a number, not for a computation
    shown, shown_exact = _format(value, exact, _ARITHMETIC_DIGITS)
    sign = "=" if shown_exact else "≈"
    return Solution(answer=f"{normalized} {sign} {shown}", kind="arithmetic", expression=normalized)


# ---------------------------------------------------------------- units


@dataclass(slots=True, frozen=True)
class _Unit:
    dimension: str
    scale: Fraction  # in the dimension's base unit (m, kg, L, s, m/s, bit, K)
    symbol: str  # shown in answers
    offset: Fraction = Fraction(0)  # temperatures: base = value * scale + offset
    si_bytes: bool = False  # a decimal multiple of bytes, easily taken for a binary one


_UNITS: dict[str, _Unit] = {}  # symbols, matched case-sensitively
_NAMES: dict[str, _Unit] = {}  # names, matched in lower case


def _unit(
    dimension: str,
    scale: Fraction | int | str,
    symbol: str,
    symbols: str = "",
    names: str = "",
    *,
    offset: Fraction = Fraction(0),
) -> None:
    unit = _Unit(
        dimension,
        Fraction(scale),
        symbol,
        offset,
        si_bytes=symbol in ("kB", "MB", "GB", "TB", "PB"),
    )
    for alias in (symbol, *symbols.split()):
        _UNITS[alias] = unit
    for name in names.split(","):
        if name.strip():
            _NAMES[" ".join(name.split())] = unit


_FOOT = Fraction("0.3048")
_US_GALLON = Fraction("3.785411784")
_IMPERIAL_GALLON = Fraction("4.54609")
_POUND = Fraction("0.45359237")
for _args in (
    ("length", 1, "m", "", "meter, meters, metre, metres"),
    ("length", 1000, "km", "", "kilometer, kilometers, kilometre, kilometres"),
    ("length", "0.01", "cm", "", "centimeter, centimeters, centimetre, centimetres"),
    ("length", "0.001", "mm", "", "millimeter, millimeters, millimetre, millimetres"),
    ("length", "1e-6", "µm", "um μm", "micrometer, micrometers, micron, microns"),
    ("length", "1e-9", "nm", "", "nanometer, nanometers, nanometre, nanometres"),
    ("length", _FOOT * 5280, "mi", "", "mile, miles"),
    ("length", _FOOT * 3, "yd", "yds", "yard, yards"),
    ("length", _FOOT, "ft", "", "foot, feet"),
    ("length", _FOOT / 12, "in", "", "inch, inches"),
    ("length", 1852, "nmi", "", "nautical mile, nautical miles"),
    ("mass", 1, "kg", "kgs", "kilogram, kilograms, kilo, kilos"),
    ("mass", "0.001", "g", "", "gram, grams, gramme, grammes"),
    ("mass", "1e-6", "mg", "", "milligram, milligrams"),
    ("mass", "1e-9", "µg", "μg mcg", "microgram, micrograms"),
    ("mass", 1000, "t", "", "tonne, tonnes, metric ton, metric tons"),
    ("mass", _POUND, "lb", "lbs", "pound, pounds"),
    ("mass", _POUND / 16, "oz", "", "ounce, ounces"),
    ("mass", _POUND * 14, "st", "", "stone, stones"),
    ("volume", 1, "L", "l", "liter, liters, litre, litres"),
    ("volume", "0.001", "mL", "ml", "milliliter, milliliters, millilitre, millilitres"),
    ("volume", "0.01", "cL", "cl", "centiliter, centiliters, centilitre, centilitres"),
    ("volume", 1000, "m³", "m^3", "cubic meter, cubic meters, cubic metre, cubic metres"),
    ("volume", _US_GALLON, "US gal", "gal", "gallon, gallons, us gallon, us gallons"),
    ("volume", _IMPERIAL_GALLON, "imp gal", "", "imperial gallon, imperial gallons"),
    ("volume", _US_GALLON / 4, "US qt", "qt", "quart, quarts, us quart, us quarts"),
    ("volume", _US_GALLON / 8, "US pt", "pt", "pint, pints, us pint, us pints"),
    ("volume", _IMPERIAL_GALLON / 8, "imp pt", "", "imperial pint, imperial pints"),
    ("volume", _US_GALLON / 16, "US cup", "", "cup, cups, us cup, us cups"),
    ("volume", _US_GALLON / 128, "US fl oz", "", "fl oz, fluid ounce, fluid ounces"),
    ("volume", _US_GALLON / 256, "US tbsp", "tbsp", "tablespoon, tablespoons"),
    ("volume", _US_GALLON / 768, "US tsp", "tsp", "teaspoon, teaspoons"),
    ("time", 1, "s", "sec secs", "second, seconds"),
    ("time", "0.001", "ms", "", "millisecond, milliseconds"),
    ("time", "1e-6", "µs", "μs", "microsecond, microseconds"),
    ("time", "1e-9", "ns", "", "nanosecond, nanoseconds"),
    ("time", 60, "min", "mins", "minute, minutes"),
    ("time", 3600, "h", "hr hrs", "hour, hours"),
    ("time", 86400, "days", "", "day, days"),
    ("time", 604800, "weeks", "wk wks", "week, weeks"),
    ("speed", 1, "m/s", "", "meter per second, meters per second, metres per second"),
    ("speed", Fraction(1000, 3600), "km/h", "kph kmh", "kilometers per hour, kilometres per hour"),
    ("speed", _FOOT * 5280 / 3600, "mph", "", "mile per hour, miles per hour"),
    ("speed", Fraction(1852, 3600), "kn", "kt kts", "knot, knots"),
    ("speed", _FOOT, "ft/s", "fps", "foot per second, feet per second"),
    ("data", 1, "bit", "bits", "bit, bits"),
    ("data", 8, "B", "", "byte, bytes"),
    ("data", 8 * 10**3, "kB", "KB", "kilobyte, kilobytes"),
    ("data", 8 * 10**6, "MB", "", "megabyte, megabytes"),
    ("data", 8 * 10**9, "GB", "", "gigabyte, gigabytes"),
    ("data", 8 * 10**12, "TB", "", "terabyte, terabytes"),
    ("data", 8 * 10**15, "PB", "", "petabyte, petabytes"),
    ("data", 8 * 2**10, "KiB", "", "kibibyte, kibibytes"),
    ("data", 8 * 2**20, "MiB", "", "mebibyte, mebibytes"),
    ("data", 8 * 2**30, "GiB", "", "gibibyte, gibibytes"),
    ("data", 8 * 2**40, "TiB", "", "tebibyte, tebibytes"),
    ("data", 10**3, "kbit", "Kbit", "kilobit, kilobits"),
    ("data", 10**6, "Mbit", "Mb", "megabit, megabits"),
    ("data", 10**9, "Gbit", "Gb", "gigabit, gigabits"),
    ("data", 10**12, "Tbit", "Tb", "terabit, terabits"),
):
    _unit(*_args)
_unit("temperature", 1, "°C", "°c C", "celsius, centigrade", offset=Fraction("273.15"))
_unit("temperature", Fraction(5, 9), "°F", "°f F", "fahrenheit", offset=Fraction(45967, 180))
_unit("temperature", 1, "K", "", "kelvin, kelvins")
# Symbols typed in another case ("KM", "Kg") are still unambiguous, except single
# letters ("G", "S") and data sizes, where the case is the meaning (Mb and MB).
_FOLDED: dict[str, _Unit] = {}
for _alias, _target in _UNITS.items():
    if len(_alias) > 1 and _target.dimension != "data":
        _FOLDED.setdefault(_alias.lower(), _target)
# After "degrees", a letter can only be a temperature scale.
_DEGREE_LETTERS = {"c": _UNITS["°C"], "f": _UNITS["°F"]}
_DEGREES = re.compile(r"^(?:degrees?|deg)\s+(.+)$", re.I)

_QUANTITY = rf"-?(?:{_NUMBER})|(?:an?|one)(?=\s)"
_CONNECTORS = ("to", "in", "into", "as")
_UNITS_FRAMES = (
    # [convert|what is] Q FROM to|in|into|as TO  /  Q FROM is|equals how many TO
    re.compile(
        rf"""^(?:(?:convert|change|what\s+is|what's|whats|how\s+much\s+is)\s+)?
        (?P<q>{_QUANTITY})\s*(?P<rest>\S.*)$""",
        re.I | re.X,
    ),
    # how many TO (are (there)) in Q FROM  /  how many TO is|are|make Q FROM
    re.compile(
        rf"""^how\s+(?:many|much)\s+(?P<to>.+?)\s+
        (?:(?:are\s+|is\s+)?(?:there\s+)?in|is|are|make|makes|equals?)\s+
        (?P<q>{_QUANTITY})\s*(?P<from>\S.*)$""",
        re.I | re.X,
    ),
)
_IS_HOW_MANY = re.compile(r"^(?P<from>.+?)\s+(?:is|equals|=)\s+how\s+many\s+(?P<to>.+)$", re.I)


def _lookup_unit(text: str, *, letters: bool = False) -> _Unit | None:
    """The unit `text` names; with `letters`, a bare "c" or "f" is a temperature scale."""
    text = " ".join(text.split())
    if letters and text.lower() in _DEGREE_LETTERS:
        return _DEGREE_LETTERS[text.lower()]
    unit = _UNITS.get(text) or _NAMES.get(text.lower()) or _FOLDED.get(text.lower())
    if unit is not None:
        return unit
    degrees = _DEGREES.match(text)
    if degrees is None:
        return None
    scale = degrees.group(1)
    unit = _DEGREE_LETTERS.get(scale.lower()) or _lookup_unit(scale)
    return unit if unit is not None and unit.dimension == "temperature" else None


def _split_conversion(rest: str) -> tuple[_Unit, _Unit] | None:
    """FROM and TO in "FROM <connector> TO", when exactly one split reads as units."""
    candidates: set[tuple[_Unit, _Unit]] = set()
    how_many = _IS_HOW_MANY.match(rest)
    if how_many is not None:
        pair = _lookup_unit(how_many.group("from")), _lookup_unit(how_many.group("to"))
        if pair[0] is not None and pair[1] is not None:
            candidates.add((pair[0], pair[1]))
    words = rest.split()
    for index in range(1, len(words) - 1):
        if words[index].lower() in _CONNECTORS:
            source_text, target_text = " ".join(words[:index]), " ".join(words[index + 1 :])
            source, target = _lookup_unit(source_text), _lookup_unit(target_text)
            # "0 degrees C to F": across from a temperature, a letter is a scale too.
            if source is None and target is not None and target.dimension == "temperature":
                source = _lookup_unit(source_text, letters=True)
            if target is None and source is not None and source.dimension == "temperature":
                target = _lookup_unit(target_text, letters=True)
            if source is not None and target is not None:
                candidates.add((source, target))
    return candidates.pop() if len(candidates) == 1 else None


def _quantity(text: str) -> Fraction:
    lowered = text.lower()
    if lowered in ("a", "an", "one"):
        return Fraction(1)
    sign = -1 if text.startswith("-") else 1
    return sign * _parse_number(text.removeprefix("-"))


def _solve_units(text: str) -> Solution | None:
    pair: tuple[_Unit | None, _Unit | None] | None = None
    quantity = ""
    if (match := _UNITS_FRAMES[0].match(text)) is not None:
        pair, quantity = _split_conversion(match.group("rest")), match.group("q")
    if pair is None and (match := _UNITS_FRAMES[1].match(text)) is not None:
        pair = _lookup_unit(match.group("from")), _lookup_unit(match.group("to"))
        quantity = match.group("q")
    if pair is None:
        return None
    source, target = pair
    if source is None or target is None or source.dimension != target.dimension:
        return None  # "oz to ml": mass to volume needs a density, so a model
    amount = _quantity(quantity)
    base = amount * source.scale + source.offset
    if source.dimension == "temperature" and base < 0:
        raise _Refused("below absolute zero")
    result = (base - target.offset) / target.scale
    shown_amount, _ = _format(amount, True, _UNIT_DIGITS)
    shown, exact = _format(result, True, _UNIT_DIGITS)
    expression = f"{shown_amount} {_plural(source.symbol, amount)} -> {target.symbol}"
    answer = (
        f"{shown_amount} {_plural(source.symbol, amount)} {'=' if exact else '≈'} "
        f"{shown} {_plural(target.symbol, result)}"
    )
    if source.si_bytes or target.si_bytes:
        answer += " (SI units: 1 kB = 1000 bytes; 1 KiB = 1024 bytes)"
    return Solution(answer=answer, kind="units", expression=expression)


def _plural(symbol: str, amount: Fraction) -> str:
    if amount == 1 and symbol in ("days", "weeks"):
        return symbol[:-1]
    if amount != 1 and symbol == "bit":
        return "bits"
    return symbol


# ---------------------------------------------------------------- dates

_MONTHS = {
    name.lower(): number
    for number in range(1, 13)
    for name in (calendar.month_name[number], calendar.month_abbr[number])
} | {"sept": 9}
_MONTH = r"(?:" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_DATE = (
    r"(?:\d{4}-\d{1,2}-\d{1,2}|\d{4}/\d{1,2}/\d{1,2}"
    rf"|{_MONTH}\s+{_DAY},?\s+\d{{4}}|{_DAY}\s+(?:of\s+)?{_MONTH},?\s+\d{{4}})"
)
_PARTS_OF_DATE = re.compile(
    rf"^(?:(?P<y>\d{{4}})[-/](?P<m>\d{{1,2}})[-/](?P<d>\d{{1,2}})"
    rf"|(?P<mn>{_MONTH})\s+(?P<d2>\d{{1,2}})(?:st|nd|rd|th)?,?\s+(?P<y2>\d{{4}})"
    rf"|(?P<d3>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?(?P<mn3>{_MONTH}),?\s+(?P<y3>\d{{4}}))$",
    re.I,
)
_SPAN = r"(?:\d{1,3}(?:,\d{3})+|\d+|an?|one)\s+(?:days?|weeks?)"
_DURATION = rf"{_SPAN}(?:(?:\s*,\s*|\s+and\s+|,\s*and\s+|\s+){_SPAN})*"
_SPAN_PARTS = re.compile(r"(\d{1,3}(?:,\d{3})+|\d+|an?|one)\s+(day|week)s?", re.I)

_SHIFT_AROUND = re.compile(
    rf"""^(?:(?:what|which)\s+(?:date|day)\s+(?:is|was|will\s+it\s+be|will\s+be|would\s+be)\s+
         |what\s+is\s+the\s+date\s+|what's\s+the\s+date\s+|what\s+is\s+|what's\s+|whats\s+
         |when\s+is\s+)?
        (?P<dur>{_DURATION})\s+(?P<dir>after|from|before|prior\s+to)\s+(?P<date>{_DATE})$""",
    re.I | re.X,
)
_SHIFT_OPERATOR = re.compile(
    rf"""^(?:(?:what\s+is|what's|whats|calculate|compute)\s+)?
        (?P<date>{_DATE})\s*(?P<dir>\+|\s-|plus|minus)\s*(?P<dur>{_DURATION})$""",
    re.I | re.X,
)
_SHIFT_VERB = re.compile(
    rf"^(?P<dir>add|subtract)\s+(?P<dur>{_DURATION})\s+(?P<prep>to|from)\s+(?P<date>{_DATE})$",
    re.I,
)
_BETWEEN = re.compile(
    rf"""^(?:how\s+many\s+days|(?:what\s+is\s+|what's\s+)?the\s+number\s+of\s+days
         |number\s+of\s+days|days)\s+(?:are\s+there\s+|is\s+it\s+|are\s+|is\s+)?
        (?:between\s+(?P<a>{_DATE})\s+and\s+(?P<b>{_DATE})
          |from\s+(?P<c>{_DATE})\s+(?:to|until|till)\s+(?P<d>{_DATE}))$""",
    re.I | re.X,
)
_DIFFERENCE = re.compile(
    rf"^(?:(?:what\s+is|what's|whats|calculate|compute)\s+)?"
    rf"(?P<b>{_DATE})\s+(?:-|minus)\s+(?P<a>{_DATE})$",
    re.I,
)
_WEEKDAY = re.compile(
    rf"""^(?:what|which)\s+(?:day(?:\s+of\s+the\s+week)?|weekday)\s+
        (?:(?P<verb>is|was|will\s+be|is\s+it|was\s+it|will\s+it\s+be|falls|fell)\s+(?:on\s+)?
           (?P<date>{_DATE})
         |(?P<verb2>does|did|will)\s+(?P<date2>{_DATE})\s+(?:fall\s+on|land\s+on|be|fall))$
    |^(?:the\s+)?(?:day\s+of\s+the\s+week|weekday)\s+(?:of|for|on)\s+(?P<date3>{_DATE})$""",
    re.I | re.X,
)
_FIRST_GREGORIAN_YEAR = 1583  # earlier dates: Julian or proleptic Gregorian? Ask a model.


def _parse_date(text: str) -> tuple[dt.date, bool]:
    """The date, and whether it was written with a month name."""
    match = _PARTS_OF_DATE.match(" ".join(text.split()))
    if match is None:
        raise _Refused("not a date")
    if match.group("y"):
        year, month, day, named = match.group("y"), match.group("m"), match.group("d"), False
    elif match.group("y2"):
        year, day, named = match.group("y2"), match.group("d2"), True
        month = str(_MONTHS[match.group("mn").lower().rstrip(".")])
    else:
        year, day, named = match.group("y3"), match.group("d3"), True
        month = str(_MONTHS[match.group("mn3").lower().rstrip(".")])
    return _checked_date(dt.date(int(year), int(month), int(day))), named


def _checked_date(date: dt.date) -> dt.date:
    if date.year < _FIRST_GREGORIAN_YEAR:
        raise _Refused("before the Gregorian calendar was in general use")
    return date


def _days(duration: str) -> int:
    total = 0
    for count, unit in _SPAN_PARTS.findall(duration):
        number = 1 if count.lower() in ("a", "an", "one") else int(_parse_number(count))
        total += number * (7 if unit.lower() == "week" else 1)
    return total


def _show_date(date: dt.date, named: bool) -> str:
    weekday = calendar.day_name[date.weekday()]
    if named:
        return f"{weekday}, {calendar.month_name[date.month]} {date.day}, {date.year}"
    return f"{date.isoformat()} ({weekday})"


def _solve_dates(text: str) -> Solution | None:
    if not any(char.isdigit() for char in text):
        return None
    if (match := _SHIFT_AROUND.match(text) or _SHIFT_OPERATOR.match(text)) is not None:
        backwards = match.group("dir").strip().lower() in ("before", "prior to", "-", "minus")
        return _shift(match.group("date"), match.group("dur"), backwards)
    if (match := _SHIFT_VERB.match(text)) is not None:
        verb, prep = match.group("dir").lower(), match.group("prep").lower()
        if (verb, prep) not in (("add", "to"), ("subtract", "from")):
            return None
        return _shift(match.group("date"), match.group("dur"), verb == "subtract")
    if (match := _BETWEEN.match(text)) is not None:
        first, _ = _parse_date(match.group("a") or match.group("c"))
        second, _ = _parse_date(match.group("b") or match.group("d"))
        first, second = min(first, second), max(first, second)
        days = (second - first).days
        expression = f"{second.isoformat()} - {first.isoformat()}"
        unit = "day" if days == 1 else "days"
        answer = f"{days} {unit} from {first.isoformat()} to {second.isoformat()}"
        return Solution(answer=answer, kind="dates", expression=expression)
    if (match := _DIFFERENCE.match(text)) is not None:
        later, _ = _parse_date(match.group("b"))
        earlier, _ = _parse_date(match.group("a"))
        days = (later - earlier).days
        expression = f"{later.isoformat()} - {earlier.isoformat()}"
        unit = "day" if abs(days) == 1 else "days"
        return Solution(answer=f"{expression} = {days} {unit}", kind="dates", expression=expression)
    if (match := _WEEKDAY.match(text)) is not None:
        written = match.group("date") or match.group("date2") or match.group("date3")
        date, named = _parse_date(written)
        verb = (match.group("verb") or match.group("verb2") or "is").lower()
        tense = "was" if verb.startswith(("was", "did", "fell")) else "is"
        tense = "will be" if verb.startswith("will") else tense
        shown = (
            f"{calendar.month_name[date.month]} {date.day}, {date.year}"
            if named
            else date.isoformat()
        )
        weekday = calendar.day_name[date.weekday()]
        return Solution(
            answer=f"{shown} {tense} a {weekday}.",
            kind="dates",
            expression=f"weekday({date.isoformat()})",
        )
    return None


def _shift(written: str, duration: str, backwards: bool) -> Solution:
    start, named = _parse_date(written)
    days = _days(duration)
    if days > 4_000_000:  # more than the calendar holds
        raise _Refused("out of range")
    end = _checked_date(start - dt.timedelta(days) if backwards else start + dt.timedelta(days))
    expression = f"{start.isoformat()} {'-' if backwards else '+'} {days} days"
    return Solution(
        answer=f"{expression} = {_show_date(end, named)}", kind="dates", expression=expression
    )
