"""Should a cached answer be served for a new question? The semantic cache's last check.

The nearest cached question by cosine similarity is only a candidate: MiniLM puts
"convert 5 km to miles" and "convert 10 km to miles" at 0.97, and on human-labelled
Quora pairs no cosine threshold is both safe and useful. `SemanticVerifier` scores
a (query, candidate, cosine) triple with a small logistic model over the cosine and
lexical evidence, and vetoes outright the differences the data shows are almost
never the same question: different numbers, one side negated, a named entity
swapped for another. That cheap model is the default (`verifier: lexical`). With
`verifier: pair`, a second stage reads the candidate the cheap model ranks first
again: the pair model (`pair_model`: MiniLM's token states of both texts, compared by
a small network) gives a logit that a final logistic model combines with the cheap
features, one pair-model run per lookup.

The models' parameters and a calibration table live in `data/verifier_pair.json` (two
stages) and `data/verifier_lexical.json` (the cheap model alone), made by
`python -m areion.cache.calibrate` (see that module) from cosines of the 8-bit
embedder (`cache.semantic.embed_quantized`, the default). The table holds, for each
score threshold, the hits and wrong hits that the K-fold cross-validated models made
at it, so the product's setting is a maximum wrong-hit rate and `threshold_for()`
turns it into a threshold, with a confidence margin.

`AdaptiveThreshold` then moves single entries: an entry whose hits were judged wrong
gets a stricter threshold (in the spirit of vCache, arXiv 2502.03771), never a
looser one than the global threshold.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_MAX_WRONG_HIT_RATE",
    "FEATURES",
    "GUARDS",
    "MIN_COSINE",
    "SHIPPED",
    "AdaptiveThreshold",
    "Calibration",
    "EntryStats",
    "PairScorer",
    "SemanticVerifier",
    "Shortlist",
    "design_row",
    "guards",
    "raw_features",
    "wilson_bounds",
]

# The product default, as a rate on traffic like the calibration pairs (Quora pairs:
# MeanCache's hard look-alike negatives and QQP's natural ones, 41k in all). At 0.15 the
# two-stage verifier serves 43% of the duplicates (grouped nested cross-validation, 14%
# of hits wrong; on each file alone, never above the setting), the lexical one 34%; at
# 0.10, 17% and 13%. 0.05 finds nothing: on those human-labelled pairs even
# near-identical questions are labelled "different" several percent of the time, and
# the few top-scoring pairs that seem to vouch for it did not hold out of sample
# (`Calibration.min_hits`).
DEFAULT_MAX_WRONG_HIT_RATE = 0.15

# The shipped parameters, by kind (see `SemanticVerifier.load`).
SHIPPED = {"pair": "data/verifier_pair.json", "lexical": "data/verifier_lexical.json"}

# Candidates below this cosine are not worth scoring: on the calibration pairs no
# duplicate scored under it. The caches search their nearest few and stop here.
MIN_COSINE = 0.5

T = TypeVar("T")

# One-sided 95%: the margin between a measured precision and the one promised.
_Z = 1.645

# Hard guards, each a veto. On the calibration pairs with cosine >= 0.9, the pairs
# they flag were true duplicates 43% (numbers), 54% (negation) and 41% (entities) of
# the time: far below any precision worth serving, so no score can outweigh them.
# The other three catch the look-alikes that embeddings put at 0.99 and that Quora
# pairs hardly contain (tests/data/lookalikes.csv): an opposite word ("safe" /
# "unsafe", "pros" / "cons"), another unit ("in meters" / "in feet") and the same
# words with two parts swapped round a relation ("from Paris to Rome" / "from Rome
# to Paris", "is A better than B" / "is B better than A").
GUARDS = ("numbers", "negation", "entities", "opposites", "units", "direction")


def _words(text: str) -> list[str]:
    return text.split()


# Words that carry no topic: a pair differing only in these still asks the same thing.
_STOP = frozenset(
    _words(
        """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his i if in into is it its
    itself just me more most my myself of off on once only or other our ours ourselves out over
    own same she should so some such than that the their theirs them themselves then there these
    they this those through to too under until up very was we were what when where which while
    who whom why will with would you your yours yourself yourselves how get got one ones way ways
    best good better really much many also us want anyone someone something thing things
    make like know use used using go going possible people person"""
    )
)
_NEGATIONS = frozenset(
    _words(
        """not no never without nobody nothing none neither nor nowhere cannot cant dont doesnt
    didnt isnt arent wasnt werent wont wouldnt shouldnt couldnt havent hasnt hadnt"""
    )
)
_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        _words(
            "zero one two three four five six seven eight nine ten eleven twelve thirteen"
            " fourteen fifteen sixteen seventeen eighteen nineteen twenty"
        )
    )
} | {
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "hundred": "100",
    "thousand": "1000",
    "million": "1e6",
    "billion": "1e9",
    "dozen": "12",
    "half": "0.5",
}
_ORDINALS = {
    word: f"#{rank}"
    for rank, word in enumerate(
        _words("first second third fourth fifth sixth seventh eighth ninth tenth"), start=1
    )
}
_WH = {"how": "how", "why": "why", "what": "what", "which": "what", "where": "where"} | {
    "when": "when",
    "who": "who",
    "whom": "who",
    "whose": "who",
}
# Question words that change what is asked ("why" vs "when"), unlike how/what/which.
_WH_STRONG = frozenset({"why", "when", "where", "who"})
_PERSON = (
    {w: 1 for w in ("i", "me", "my", "mine", "we", "our", "us")}
    | {w: 2 for w in ("you", "your", "yours")}
    | {w: 3 for w in ("he", "she", "his", "her", "him", "they", "their", "them")}
)
# Words after which order carries roles: "convert A to B", "A better than B".
_DIRECTIONAL = frozenset(_words("to from into than about over vs versus against on"))

# Words whose swap for the other of the pair reverses a question's meaning.
_OPPOSITE_PAIRS = (
    "safe dangerous,pro con,pros cons,fast slow,faster slower,fastest slowest,quick slow,"
    "quickly slowly,true false,cheap expensive,cheaper expensive,cheapest expensive,"
    "good bad,better worse,best worst,increase reduce,gain lose,win lose,high low,"
    "higher lower,highest lowest,up down,on off,benefit danger,benefit risk,"
    "benefits dangers,benefits risks,advantages risks,eat avoid,asleep awake,love hate,"
    "rich poor,richer poorer,strong weak,hot cold,warm cold,big small,large small,"
    "bigger smaller,larger smaller,young old,easy hard,easy difficult,easiest hardest,"
    "right wrong,male female,men women,man woman,boy girl,boys girls,before after,"
    "open close,buy sell,buying selling,add remove,maximum minimum,max min,"
    "positive negative,more less,most least,rise fall,inside outside,accept reject,"
    "success failure,succeed fail,pass fail,wet dry,early late,north south,east west,"
    "left right,top bottom,push pull,always sometimes,everyone nobody,all none,"
    "allowed forbidden,allowed banned,legal banned,include avoid,start stop,"
    "strengths weaknesses,strength weakness,stronger weaker,hire fire,import export"
)
_OPPOSITES = frozenset(
    frozenset(pair.split()) for pair in _OPPOSITE_PAIRS.split(",") if len(pair.split()) == 2
)
# "safe" / "unsafe": a negating prefix on a word the other text has bare.
_NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "mis", "under", "over")
# "encrypt" / "decrypt", "upload" / "download": opposite prefixes on one stem.
_OPPOSITE_PREFIXES = frozenset(
    frozenset(pair.split())
    for pair in ("en de", "in de", "in ex", "im ex", "up down", "over under", "en dis", "inc dec")
)
# Units of measure, by surface form: "in meters" and "in feet" ask different things.
_UNIT_FORMS = {
    "mm": "millimeter", "millimeter": "millimeter", "millimetre": "millimeter",
    "cm": "centimeter", "centimeter": "centimeter", "centimetre": "centimeter",
    "m": "meter", "meter": "meter", "metre": "meter", "km": "kilometer",
    "kilometer": "kilometer", "kilometre": "kilometer", "mile": "mile", "mi": "mile",
    "inch": "inch", "inche": "inch", "foot": "foot", "feet": "foot", "ft": "foot",
    "yard": "yard", "yd": "yard", "mg": "milligram", "milligram": "milligram",
    "g": "gram", "gram": "gram", "gramme": "gram", "kg": "kilogram", "kilo": "kilogram",
    "kilogram": "kilogram", "pound": "pound", "lb": "pound", "ounce": "ounce",
    "oz": "ounce", "stone": "stone", "ton": "ton", "tonne": "tonne", "liter": "liter",
    "litre": "liter", "l": "liter", "ml": "milliliter", "milliliter": "milliliter",
    "millilitre": "milliliter", "gallon": "gallon", "quart": "quart", "pint": "pint",
    "cup": "cup", "tablespoon": "tablespoon", "tbsp": "tablespoon", "teaspoon": "teaspoon",
    "tsp": "teaspoon", "celsius": "celsius", "centigrade": "celsius",
    "fahrenheit": "fahrenheit", "kelvin": "kelvin", "second": "second", "sec": "second",
    "minute": "minute", "min": "minute", "hour": "hour", "hr": "hour", "day": "day",
    "week": "week", "month": "month", "year": "year", "decade": "decade",
    "century": "century", "bit": "bit", "byte": "byte", "kilobyte": "kilobyte",
    "kb": "kilobyte", "megabyte": "megabyte", "mb": "megabyte", "gigabyte": "gigabyte",
    "gb": "gigabyte", "terabyte": "terabyte", "tb": "terabyte", "watt": "watt",
    "kilowatt": "kilowatt", "kw": "kilowatt", "horsepower": "horsepower", "hp": "horsepower",
    "mph": "mph", "kph": "kph", "acre": "acre", "hectare": "hectare", "dollar": "dollar",
    "usd": "dollar", "euro": "euro", "eur": "euro", "rupee": "rupee", "inr": "rupee",
    "yen": "yen", "yuan": "yuan", "gbp": "pound", "calorie": "calorie", "kcal": "calorie",
    "joule": "joule", "volt": "volt", "amp": "ampere", "ampere": "ampere", "pixel": "pixel",
    "degree": "degree", "radian": "radian", "light": "light year", "parsec": "parsec",
    "square": "square", "cubic": "cubic",
}  # fmt: skip
# Tokens that join two things symmetrically: "X and Y" asks what "Y and X" asks.
_SYMMETRIC = frozenset(_words("and or vs versus between with &"))

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?(?:\.[0-9]+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_RAW_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
_SENTENCE = re.compile(r"[.?!:;]\s+")

# The model's inputs, in order: `raw_features` returns these.
FEATURES = (
    "cosine",
    "same_text",
    "numbers_one_side",
    "entities_unmatched",
    "content_jaccard",
    "content_only_max",
    "content_only_min",
    "length_ratio",
    "wh_differs",
    "wh_strong_differs",
    "trigram_jaccard",
    "person_differs",
    "order_discordance",
    "order_directional",
)
# Cosine enters piecewise-linearly: precision rises steeply only near 1.
_COSINE_KNOTS = (0.7, 0.8, 0.85, 0.9, 0.95, 0.98)
# Lexical differences matter more the closer the embeddings already are.
_INTERACT_FROM = 0.85
_INTERACTING = (
    "same_text",
    "numbers_one_side",
    "entities_unmatched",
    "person_differs",
    "wh_strong_differs",
    "order_directional",
)

Floats = npt.NDArray[np.float64]


def _tokens(text: str) -> list[str]:
    words = _TOKEN.findall(text.lower())
    # "don't" and "dont" are the same negation; other apostrophes stay for _stem.
    return [w.replace("'", "") if w.endswith("n't") else w for w in words]


def _stem(word: str) -> str:
    """A light suffix strip: enough that "hotels"/"hotel" and "learning"/"learn" match."""
    word = word.removesuffix("'s").replace("'", "")
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 4 and word.endswith("ed"):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _numbers(text: str, tokens: list[str]) -> set[str]:
    found = {n.replace(",", "") for n in _NUMBER.findall(text)}
    for token in tokens:
        if token in _NUMBER_WORDS:
            found.add(_NUMBER_WORDS[token])
        elif token in _ORDINALS:
            found.add(_ORDINALS[token])
    return found


def _entities(text: str) -> set[str]:
    """Capitalized words not opening a sentence, and acronyms, lowercased and stemmed."""
    found: set[str] = set()
    for sentence in _SENTENCE.split(text.strip()):
        for i, word in enumerate(_RAW_WORD.findall(sentence)):
            lower = word.lower()
            if lower == "i" or lower.startswith("i'") or lower in _STOP:
                continue
            acronym = len(word) >= 2 and word.isalpha() and word.isupper()
            if acronym or (i > 0 and word[0].isupper()):
                found.add(_stem(lower))
    return found


def _mentions(entity: str, words: set[str]) -> bool:
    # Prefix tolerance so "India" matches "Indian"; short names must match exactly.
    if entity in words:
        return True
    return len(entity) >= 4 and any(
        len(w) >= 4 and (w.startswith(entity) or entity.startswith(w)) for w in words
    )


def _content(tokens: list[str]) -> list[str]:
    return [
        _stem(t)
        for t in tokens
        if t not in _STOP and t not in _NEGATIONS and not any(c.isdigit() for c in t)
    ]


def _wh(tokens: list[str]) -> str:
    for token in tokens[:4]:
        if token in _WH:
            return _WH[token]
    return "yes/no"


def _trigrams(tokens: list[str]) -> set[str]:
    padded = f" {' '.join(tokens)} "
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


def _discordance(a: list[str], b: list[str]) -> float:
    """Share of the shared words' pairs that the two texts put in opposite order."""
    shared = set(a) & set(b)
    first_a = list(dict.fromkeys(w for w in a if w in shared))
    rank_b = {w: i for i, w in enumerate(dict.fromkeys(w for w in b if w in shared))}
    n = len(first_a)
    if n < 2:
        return 0.0
    flipped = sum(
        rank_b[first_a[i]] > rank_b[first_a[j]] for i in range(n) for j in range(i + 1, n)
    )
    return flipped / (n * (n - 1) / 2)


@dataclass(slots=True, frozen=True)
class _Text:
    """What the features need from one text, computed once."""

    tokens: list[str]
    words: set[str]
    numbers: set[str]
    negated: bool
    entities: set[str]
    content: list[str]

    @classmethod
    def of(cls, text: str) -> _Text:
        tokens = _tokens(text)
        return cls(
            tokens=tokens,
            words=set(tokens) | {_stem(t) for t in tokens},
            numbers=_numbers(text, tokens),
            negated=any(t in _NEGATIONS for t in tokens),
            entities=_entities(text),
            content=_content(tokens),
        )


def _opposed(first: str, second: str) -> bool:
    """Is one word the other's opposite: listed, negated by a prefix, or prefix-swapped?"""
    if frozenset((first, second)) in _OPPOSITES:
        return True
    short, long = sorted((first, second), key=len)
    if len(short) >= 4 and long.endswith(short) and long[: -len(short)] in _NEGATING_PREFIXES:
        return True
    for prefixes in _OPPOSITE_PREFIXES:
        a, b = sorted(prefixes)
        for x, y in ((first, second), (second, first)):
            stem_x, stem_y = x[len(a) :], y[len(b) :]
            if x.startswith(a) and y.startswith(b) and len(stem_x) >= 3 and stem_x == stem_y:
                return True
    return False


def _opposites(q: _Text, c: _Text) -> bool:
    only_q = {t for t in q.tokens if t not in c.words and _stem(t) not in c.words}
    only_c = {t for t in c.tokens if t not in q.words and _stem(t) not in q.words}
    # "un merge" / "unmerge", "over rated" / "overrated": one word spelt apart.
    joined = {a + b for a, b in zip(q.tokens, q.tokens[1:], strict=False)}
    joined |= {a + b for a, b in zip(c.tokens, c.tokens[1:], strict=False)}
    return any(
        _opposed(a, b) for a in only_q for b in only_c if a not in joined and b not in joined
    )


def _units(text: _Text) -> set[str]:
    return {_UNIT_FORMS[s] for s in (_stem(t) for t in text.tokens) if s in _UNIT_FORMS}


def _swapped(first: list[str], second: list[str]) -> bool:
    """Are the two the same words with two short parts swapped round a relation, as
    in "A to B" / "B to A" (`first` = X A Y B Z, `second` = X B Y A Z, Y not empty)?
    A swap across a symmetric word ("A and B" / "B and A") does not count."""
    if len(first) != len(second) or first == second or sorted(first) != sorted(second):
        return False
    start = 0
    while first[start] == second[start]:
        start += 1
    end = len(first)
    while first[end - 1] == second[end - 1]:
        end -= 1
    p, r = first[start:end], second[start:end]
    n = len(p)
    for i in range(1, n - 1):
        for j in range(1, n - i):
            y = p[i : n - j]
            swap = p[:i] == r[n - i :] and p[n - j :] == r[:j] and y == r[j : n - i]
            # Long parts swapped are a clause moved, not roles exchanged.
            if swap and i <= 3 and j <= 3 and not any(t in _SYMMETRIC for t in y):
                return True
    return False


def _guards(q: _Text, c: _Text) -> tuple[str, ...]:
    fired: list[str] = []
    if q.numbers and c.numbers and q.numbers != c.numbers:
        fired.append("numbers")
    if q.negated != c.negated:
        fired.append("negation")
    # A swap (each side names something the other does not) rather than an addition:
    # "in Montana" vs "in Minnesota", "France" vs "Germany".
    only_q = [e for e in q.entities if not _mentions(e, c.words)]
    only_c = [e for e in c.entities if not _mentions(e, q.words)]
    if only_q and only_c:
        fired.append("entities")
    if _opposites(q, c):
        fired.append("opposites")
    units_q, units_c = _units(q), _units(c)
    if units_q - units_c and units_c - units_q:
        fired.append("units")
    if _swapped([_stem(t) for t in q.tokens], [_stem(t) for t in c.tokens]):
        fired.append("direction")
    return tuple(fired)


def guards(query: str, candidate: str) -> tuple[str, ...]:
    """The hard guards (names from `GUARDS`) that veto serving `candidate` for `query`."""
    return _guards(_Text.of(query), _Text.of(candidate))


def _raw(q: _Text, c: _Text, cosine: float) -> list[float]:
    only_q = {e for e in q.entities if not _mentions(e, c.words)}
    only_c = {e for e in c.entities if not _mentions(e, q.words)}
    cq, cc = set(q.content), set(c.content)
    union = cq | cc
    extra_q, extra_c = len(cq - cc), len(cc - cq)
    person_q = {_PERSON[t] for t in q.tokens if t in _PERSON}
    person_c = {_PERSON[t] for t in c.tokens if t in _PERSON}
    tri_q, tri_c = _trigrams(q.tokens), _trigrams(c.tokens)
    discordance = _discordance(q.content, c.content)
    directional = any(t in _DIRECTIONAL for t in (*q.tokens, *c.tokens))
    return [
        cosine,
        float(q.tokens == c.tokens),
        float(bool(q.numbers) != bool(c.numbers)),
        float(len(only_q) + len(only_c)),
        len(cq & cc) / len(union) if union else 1.0,
        float(max(extra_q, extra_c)),
        float(min(extra_q, extra_c)),
        min(len(q.tokens), len(c.tokens)) / max(len(q.tokens), len(c.tokens), 1),
        float(_wh(q.tokens) != _wh(c.tokens)),
        float({t for t in q.tokens if t in _WH_STRONG} != {t for t in c.tokens if t in _WH_STRONG}),
        len(tri_q & tri_c) / max(len(tri_q | tri_c), 1),
        float(person_q != person_c),
        discordance,
        discordance * directional,
    ]


def raw_features(query: str, candidate: str, cosine: float) -> list[float]:
    """The values of `FEATURES` for one pair."""
    return _raw(_Text.of(query), _Text.of(candidate), cosine)


def design_row(raw: Sequence[float]) -> list[float]:
    """The model's input vector from `raw_features`: raw values, cosine hinges, interactions."""
    cosine = raw[0]
    near = max(cosine - _INTERACT_FROM, 0.0)
    return [
        *raw,
        *(max(cosine - knot, 0.0) for knot in _COSINE_KNOTS),
        *(raw[FEATURES.index(name)] * near for name in _INTERACTING),
    ]


def wilson_bounds(successes: float, trials: float, z: float = _Z) -> tuple[float, float]:
    """Wilson score interval of a proportion: (lower, upper); (0, 1) with no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, (centre - spread) / denominator), min(1.0, (centre + spread) / denominator)


@dataclass(slots=True, kw_only=True, frozen=True)
class Calibration:
    """Cross-validated hits at each score threshold (out-of-fold scores of K-fold models)."""

    thresholds: tuple[float, ...]
    """Ascending score thresholds."""
    true_hits: tuple[int, ...]
    """Duplicate pairs scoring >= each threshold."""
    wrong_hits: tuple[int, ...]
    """Non-duplicate pairs scoring >= each threshold."""
    duplicates: int
    """Duplicate pairs in the calibration set (the denominator of recall)."""
    non_duplicates: int
    """Non-duplicate pairs in the calibration set."""
    min_hits: int = 0
    """Rows with fewer hits than this vouch for nothing: at the top of the table a
    few dozen pairs can all be right by luck, and a rate vouched for by them did not
    hold on held-out pairs (one wrong in 18 at 0.05)."""

    def rates(self, index: int, duplicate_share: float | None = None) -> tuple[float, float]:
        """(precision, recall) at `thresholds[index]` for traffic with that share of
        true duplicates among looked-up candidates (default: the calibration set's)."""
        tp, fp = self.true_hits[index], self.wrong_hits[index]
        recall = tp / self.duplicates
        if duplicate_share is None:
            return (tp / (tp + fp) if tp + fp else 1.0), recall
        hit_rate = duplicate_share * recall
        false_rate = (1 - duplicate_share) * fp / self.non_duplicates
        return (hit_rate / (hit_rate + false_rate) if hit_rate + false_rate else 1.0), recall

    def precision_lower(self, index: int, duplicate_share: float | None = None) -> float:
        """A one-sided 95% lower bound on the precision at `thresholds[index]`."""
        precision, _ = self.rates(index, duplicate_share)
        hits = self.true_hits[index] + self.wrong_hits[index]
        return wilson_bounds(precision * hits, hits)[0]


@dataclass(slots=True, kw_only=True, frozen=True)
class _Model:
    mean: Floats
    scale: Floats
    weights: Floats
    bias: float


@dataclass(slots=True, frozen=True)
class _Pending(Generic[T]):
    cheap: float
    item: T
    text: str
    cosine: float
    threshold: float
    row: list[float]


@dataclass(slots=True, kw_only=True, frozen=True)
class Shortlist(Generic[T]):
    """What `SemanticVerifier.first_stage` found: the best candidate served on its cheap
    score (the same words as the query), and the one left for the pair model."""

    found: tuple[T, float, float] | None
    pending: _Pending[T] | None

    @property
    def settled(self) -> bool:
        """Nothing is left for the pair model: `found` is the answer."""
        return self.pending is None


class PairScorer(Protocol):
    """A second opinion on one pair: log-odds that `candidate` asks what `query` asks."""

    def logit(self, query: str, candidate: str) -> float: ...


def _model_of(model: dict[str, Any]) -> _Model:
    return _Model(
        mean=np.asarray(model["mean"], dtype=np.float64),
        scale=np.asarray(model["scale"], dtype=np.float64),
        weights=np.asarray(model["weights"], dtype=np.float64),
        bias=float(model["bias"]),
    )


class SemanticVerifier:
    """Decides whether a cached question answers a new one.

    `score()` is the probability that serving the candidate's answer is right (0 when
    a hard guard vetoes); `accept()` compares it with a threshold, by default the one
    for `DEFAULT_MAX_WRONG_HIT_RATE`.

    Two stages when the parameters have a `final` model: the cheap logistic model
    (`model`) scores every candidate; a candidate under its `gate` scores 0, and the
    best one over it is read again by the pair model (`pair_model.PairModel`, or the
    `pair` given), whose logit joins the cheap features in the `final` logistic model:
    its probability is the score. One pair-model run per lookup at most. A candidate
    worded exactly as the query keeps its cheap score (nothing to read again).
    """

    __slots__ = ("_calibration", "_default", "_final", "_gate", "_model", "_pair", "meta")

    def __init__(self, params: dict[str, Any], *, pair: PairScorer | None = None) -> None:
        names = tuple(params["features"])
        if names != FEATURES:
            raise ValueError(
                f"verifier parameters are for features {names}, this code computes {FEATURES}:"
                " re-run `python -m areion.cache.calibrate` to retrain them"
            )
        self._model = _model_of(params["model"])
        width = len(design_row([0.0] * len(FEATURES)))
        final = params.get("final")
        self._final = None if final is None else _model_of(final)
        self._gate = float(params.get("gate", 0.0))
        self._pair = pair
        for model, size in ((self._model, width), (self._final, width + 1)):
            if (
                model is not None
                and not len(model.weights) == len(model.mean) == len(model.scale) == size
            ):
                raise ValueError(
                    "verifier parameters: weights, mean and scale do not fit the features"
                )
        table = params["calibration"]
        self._calibration = Calibration(
            thresholds=tuple(float(t) for t in table["thresholds"]),
            true_hits=tuple(int(n) for n in table["true_hits"]),
            wrong_hits=tuple(int(n) for n in table["wrong_hits"]),
            duplicates=int(table["duplicates"]),
            non_duplicates=int(table["non_duplicates"]),
            min_hits=int(table.get("min_hits", 0)),
        )
        self.meta: dict[str, Any] = dict(params.get("meta", {}))
        self._default = self.threshold_for(DEFAULT_MAX_WRONG_HIT_RATE)

    @classmethod
    def load(cls, path: Path | None = None, *, kind: str = "lexical") -> SemanticVerifier:
        """The verifier from `path`, by default the parameters shipped with Areion:
        `kind` "lexical" (the cheap model alone, `data/verifier_lexical.json`: no
        pair-model run on a lookup; `cache.semantic.verifier`'s default) or "pair" (two
        stages, `data/verifier_pair.json`)."""
        if path is None:
            if kind not in SHIPPED:
                raise ValueError(f"verifier kind must be one of {sorted(SHIPPED)}, got {kind!r}")
            text = importlib.resources.files("areion.cache").joinpath(SHIPPED[kind])
            return cls(json.loads(text.read_text(encoding="utf-8")))
        return cls(json.loads(path.read_text(encoding="utf-8")))

    @property
    def calibration(self) -> Calibration:
        return self._calibration

    @property
    def default_threshold(self) -> float:
        """The threshold for `DEFAULT_MAX_WRONG_HIT_RATE`."""
        return self._default

    @property
    def two_stage(self) -> bool:
        """Whether a pair model reads the best candidate again (see the class doc)."""
        return self._final is not None

    def prepare(self) -> None:
        """Load the pair model now rather than on the first lookup that needs it."""
        if self._final is not None:
            self._pair_scorer()

    def _pair_scorer(self) -> PairScorer:
        if self._pair is None:
            from areion.cache.pair_model import PairModel

            self._pair = PairModel.shared()
        return self._pair

    def score(self, query: str, candidate: str, cosine: float) -> float:
        """Probability that `candidate`'s cached answer is a correct answer to `query`."""
        q, c = _Text.of(query), _Text.of(candidate)
        if _guards(q, c):
            return 0.0
        row = design_row(_raw(q, c, cosine))
        cheap = _probability(self._model, row)
        if self._final is None or q.tokens == c.tokens:
            return cheap
        if cheap < self._gate:
            return 0.0
        return self._second(query, candidate, row)

    def _second(self, query: str, candidate: str, row: list[float]) -> float:
        assert self._final is not None
        return _probability(self._final, [*row, self._pair_scorer().logit(query, candidate)])

    def best(
        self, query: str, candidates: Iterable[tuple[T, str, float, float]]
    ) -> tuple[T, float, float] | None:
        """The best match for `query` among `candidates`, nearest first, each (item, its
        text, cosine, threshold): the item scoring highest among those that reach their
        threshold, with its cosine and score; None if none does. The search stops at the
        first cosine under `MIN_COSINE`. With two stages, only the candidate the cheap
        model ranks first (over its gate) is read by the pair model."""
        return self.second_stage(query, self.first_stage(query, candidates))

    def first_stage(
        self, query: str, candidates: Iterable[tuple[T, str, float, float]]
    ) -> Shortlist[T]:
        """The cheap part of `best()`: guards and the cheap model on every candidate."""
        q = _Text.of(query)
        found: tuple[T, float, float] | None = None
        pending: _Pending[T] | None = None
        for item, text, cosine, threshold in candidates:
            if cosine < MIN_COSINE:
                break
            c = _Text.of(text)
            if _guards(q, c):
                continue
            row = design_row(_raw(q, c, cosine))
            score = _probability(self._model, row)
            if self._final is not None and q.tokens != c.tokens:
                if score >= self._gate and (pending is None or score > pending.cheap):
                    pending = _Pending(score, item, text, cosine, threshold, row)
                continue
            if score >= threshold and (found is None or score > found[2]):
                found = (item, cosine, score)
        return Shortlist(found=found, pending=pending)

    def second_stage(self, query: str, shortlist: Shortlist[T]) -> tuple[T, float, float] | None:
        """The rest of `best()`: the pair model on the pending candidate, if any."""
        found, pending = shortlist.found, shortlist.pending
        if pending is not None:
            score = self._second(query, pending.text, pending.row)
            if score >= pending.threshold and (found is None or score > found[2]):
                found = (pending.item, pending.cosine, score)
        return found

    def accept(
        self, query: str, candidate: str, cosine: float, *, threshold: float | None = None
    ) -> bool:
        """Serve `candidate`'s answer for `query`? `threshold` defaults to `default_threshold`."""
        limit = self._default if threshold is None else threshold
        return self.score(query, candidate, cosine) >= limit

    def threshold_for(
        self, max_wrong_hit_rate: float, *, duplicate_share: float | None = None
    ) -> float:
        """The lowest score threshold whose cross-validated precision, less a 95% margin,
        is at least 1 - `max_wrong_hit_rate`, among those with at least the table's
        `min_hits` hits; `math.inf` (accept nothing) if none is.

        `duplicate_share`: the share of looked-up candidates that are true duplicates
        in the traffic at hand, if known; by default the calibration set's, whose
        negatives are hard ones, so real traffic usually sees fewer wrong hits.
        """
        if not 0.0 < max_wrong_hit_rate < 1.0:
            raise ValueError(f"max_wrong_hit_rate must be in (0, 1), got {max_wrong_hit_rate}")
        if duplicate_share is not None and not 0.0 < duplicate_share < 1.0:
            raise ValueError(f"duplicate_share must be in (0, 1), got {duplicate_share}")
        table = self._calibration
        # A lower threshold only admits more hits; the first row that qualifies is the
        # most useful one. Monotone: a looser rate can only qualify more rows.
        for index, threshold in enumerate(table.thresholds):
            if table.true_hits[index] + table.wrong_hits[index] < table.min_hits:
                break  # rows only get smaller from here
            if table.precision_lower(index, duplicate_share) >= 1.0 - max_wrong_hit_rate:
                return threshold
        return math.inf


def _probability(m: _Model, row: list[float]) -> float:
    z = float((np.asarray(row) - m.mean) / m.scale @ m.weights) + m.bias
    # Clipped so a wild feature value cannot overflow exp().
    return 1.0 / (1.0 + math.exp(-min(max(z, -50.0), 50.0)))


@dataclass(slots=True, kw_only=True)
class EntryStats:
    """Judged outcomes of one cache entry's hits, most recent last."""

    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    """(score, correct) of each judged hit, at most `max_observations` kept."""
    threshold: float = 0.0
    """The entry's threshold after the last observation."""

    @property
    def wrong(self) -> int:
        return sum(1 for _, correct in self.outcomes if not correct)


class AdaptiveThreshold:
    """Per-entry thresholds that tighten after wrong hits (in the spirit of vCache).

    An entry starts at the global threshold, which the calibration vouches for on
    average. Each judged hit is observed. The entry's threshold is the lowest
    candidate t >= global (the global one, or just above a wrong hit's score) at which
    either no judged hit scoring >= t was wrong, or its hits scoring >= t prove, at
    `confidence`, a wrong-hit rate <= `max_wrong_hit_rate` (the Wilson upper bound).

    So one wrong hit lifts the entry above that hit's score at once, and it comes
    back down only once enough correct hits show it is reliable there (40 correct
    ones outweigh a single wrong one at a rate of 0.10, 86 at 0.05); correct hits
    never take it below the global threshold. Old outcomes age out after `max_observations`.
    """

    __slots__ = ("_entries", "_z", "base", "max_observations", "max_wrong_hit_rate")

    def __init__(
        self,
        base: float,
        *,
        max_wrong_hit_rate: float = DEFAULT_MAX_WRONG_HIT_RATE,
        confidence: float = 0.95,
        max_observations: int = 256,
    ) -> None:
        if not 0.0 < max_wrong_hit_rate < 1.0:
            raise ValueError(f"max_wrong_hit_rate must be in (0, 1), got {max_wrong_hit_rate}")
        if not 0.5 <= confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
        if max_observations < 1:
            raise ValueError(f"max_observations must be positive, got {max_observations}")
        self.base = base
        self.max_wrong_hit_rate = max_wrong_hit_rate
        self.max_observations = max_observations
        self._z = NormalDist().inv_cdf(confidence)
        self._entries: dict[int, EntryStats] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def threshold(self, entry_id: int) -> float:
        """The threshold a hit on `entry_id` must reach."""
        stats = self._entries.get(entry_id)
        return self.base if stats is None else max(stats.threshold, self.base)

    def stats(self, entry_id: int) -> EntryStats | None:
        return self._entries.get(entry_id)

    def observe(self, entry_id: int, score: float, correct: bool) -> float:
        """Record a judged hit of `entry_id` at `score`; returns the entry's new threshold."""
        stats = self._entries.get(entry_id)
        if stats is None:
            stats = self._entries[entry_id] = EntryStats(
                outcomes=deque(maxlen=self.max_observations), threshold=self.base
            )
        stats.outcomes.append((score, correct))
        stats.threshold = self._fit(stats)
        return max(stats.threshold, self.base)

    def forget(self, entry_id: int) -> None:
        """Drop `entry_id`'s history (the entry was evicted or replaced)."""
        self._entries.pop(entry_id, None)

    def _fit(self, stats: EntryStats) -> float:
        wrong_scores = sorted(
            {s for s, correct in stats.outcomes if not correct and s >= self.base}
        )
        candidates = [self.base, *(math.nextafter(s, math.inf) for s in wrong_scores)]
        for t in candidates:
            above = [correct for s, correct in stats.outcomes if s >= t]
            wrong = above.count(False)
            if wrong == 0:
                return t
            if wilson_bounds(wrong, len(above), self._z)[1] <= self.max_wrong_hit_rate:
                return t
        return candidates[-1]  # unreachable: the last candidate is above every wrong hit
