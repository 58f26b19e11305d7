"""Slot templates: banks of equivalent templates with named slots.

A base prompt that matches one template of a bank (``"The capital of {x} is"``) is rewritten into the
others (``"{x}'s capital city is"``, ``"In {x}, the capital city is"``...) with the same slot values.
Swaps and reorderings are templates too (``"{b} and {a} are {v} together."``), so a bank lists only
reorderings that keep the meaning (``{a} plus {b}`` swaps, ``{a} minus {b}`` does not). Every template
of a fact bank stops right before the same answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from actalign.generate.lexicon import capitalise_first

SLOT_RE = re.compile(r"\{(\w+)\}")
DEFAULT_SLOT = r"[^.,;:?!{}]+?"
NAME = r"[A-Z][a-z]+"
NUMBER = r"[A-Za-z]+|\d+"
WORD = r"[A-Za-z][a-z\-]*"
DET = r"an?|one"


@dataclass(frozen=True)
class SlotBank:
    """Equivalent templates sharing the same slots.

    ``patterns`` overrides the regex of a slot (default: any text without sentence punctuation);
    ``lower`` lists common-noun slots, lower-cased when matched at the start of a prompt.
    """

    name: str
    templates: tuple[str, ...]
    patterns: dict[str, str] = field(default_factory=dict)
    lower: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        slot_sets = {frozenset(SLOT_RE.findall(t)) for t in self.templates}
        if len(slot_sets) != 1:
            raise ValueError(f"slot bank {self.name!r}: templates use different slots {slot_sets}")

    @property
    def slots(self) -> frozenset[str]:
        return frozenset(SLOT_RE.findall(self.templates[0]))

    @cached_property
    def _regexes(self) -> tuple[re.Pattern, ...]:
        return tuple(self._compile(t) for t in self.templates)

    def _compile(self, template: str) -> re.Pattern:
        parts = []
        for i, piece in enumerate(SLOT_RE.split(template)):
            if i % 2:
                parts.append(f"(?P<{piece}>{self.patterns.get(piece, DEFAULT_SLOT)})")
            else:
                parts.append(r"\s+".join(re.escape(w) for w in piece.split(" ")))
        return re.compile("".join(parts), flags=re.IGNORECASE if not self.patterns else 0)

    def match(self, text: str) -> tuple[int, dict[str, str]] | None:
        """(index of the matching template, slot values) or None."""
        text = text.strip()
        for index, regex in enumerate(self._regexes):
            m = regex.fullmatch(text) or regex.fullmatch(text[:1].lower() + text[1:])
            if m:
                return index, self._normalise(m.groupdict(), m)
        return None

    def _normalise(self, values: dict[str, str], m: re.Match) -> dict[str, str]:
        out = {}
        for slot, value in values.items():
            if slot in self.lower and m.start(slot) == 0:
                value = value[:1].lower() + value[1:]
            out[slot] = value
        return out

    def fill(self, template: str, values: dict[str, str]) -> str:
        return capitalise_first(SLOT_RE.sub(lambda m: values[m.group(1)], template))

    def rewrites(self, text: str) -> list[str]:
        """Every other template of the bank filled with ``text``'s slot values."""
        found = self.match(text)
        if found is None:
            return []
        index, values = found
        return [self.fill(t, values) for i, t in enumerate(self.templates) if i != index]


def _bank(name: str, templates: list[str], lower: str = "", **patterns: str) -> SlotBank:
    return SlotBank(name, tuple(templates), patterns=dict(patterns), lower=frozenset(lower.split()))


BANKS: tuple[SlotBank, ...] = (
    _bank("capital-of", [
        "The capital of {x} is", "The capital city of {x} is", "{x}'s capital is", "{x}'s capital city is",
        "In {x}, the capital city is", "The city that serves as the capital of {x} is",
    ]),
    _bank("continent-of", [
        "{x} is located on the continent of", "{x} is on the continent of", "{x} lies on the continent of",
        "{x} is situated on the continent of", "{x} is part of the continent of",
        "The continent where {x} is located is", "The continent that {x} belongs to is",
    ]),
    _bank("country-of-city", [
        "{x} is a city in the country of", "{x} is located in the country of", "{x} lies in the country of",
        "The country where {x} is located is", "The city of {x} is in the country of",
        "The country that contains the city of {x} is",
    ]),
    _bank("language-of", [
        "The official language of {x} is", "{x}'s official language is", "In {x}, the official language is",
        "The language that is official in {x} is",
    ]),
    _bank("chemical-symbol", [
        "The chemical symbol for {x} is", "The chemical symbol of {x} is", "{x}'s chemical symbol is",
        "The symbol for the element {x} is", "In chemistry, the symbol for {x} is",
        "The element {x} is represented by the symbol",
    ], lower="x"),
    _bank("animal-young", [
        "A baby {x} is called {det}", "A young {x} is called {det}", "A baby {x} is known as {det}",
        "We call a baby {x} {det}", "The name for a baby {x} is {det}", "A baby {x} is referred to as {det}",
    ], lower="x", x=WORD, det=DET),
    _bank("color-of", [
        "The color of {x} is", "The colour of {x} is", "In terms of color, {x} is",
        "When it comes to color, {x} is",
    ], lower="x"),
    _bank("plus", [
        "{a} plus {b} equals", "{a} plus {b} is", "{b} plus {a} equals", "The sum of {a} and {b} is",
        "Adding {a} and {b} gives", "If you add {a} and {b}, you get",
    ], lower="a b", a=NUMBER, b=NUMBER),
    _bank("minus", [
        "{a} minus {b} equals", "{a} minus {b} is", "{b} subtracted from {a} equals",
        "Subtracting {b} from {a} gives", "If you subtract {b} from {a}, you get",
    ], lower="a b", a=NUMBER, b=NUMBER),
    _bank("times", [
        "{a} times {b} equals", "{a} times {b} is", "{b} times {a} equals", "{a} multiplied by {b} equals",
        "The product of {a} and {b} is", "Multiplying {a} by {b} gives",
    ], lower="a b", a=NUMBER, b=NUMBER),
    _bank("divided-by", [
        "{a} divided by {b} equals", "{a} divided by {b} is", "Dividing {a} by {b} gives",
        "If you divide {a} by {b}, you get",
    ], lower="a b", a=NUMBER, b=NUMBER),
    _bank("unit-count", [
        "The number of {u} in {det} {v} is", "The count of {u} in {det} {v} is",
        "The total number of {u} in {det} {v} is", "In {det} {v}, the number of {u} is",
        "How many {u} are in {det} {v}? The answer is",
    ], lower="det", u=WORD, v=r"[a-z][a-z\- ]*?", det=DET),
    _bank("antonym", [
        "The opposite of {x} is", "The antonym of {x} is", "A word that means the opposite of {x} is",
        "The word opposite in meaning to {x} is", "{x} is the opposite of", "The opposite of the word {x} is",
    ], lower="x", x=WORD),
    _bank("superlative-planet", [
        "The {adj} planet in the solar system is", "The {adj} planet in our solar system is",
        "In our solar system, the {adj} planet is", "The solar system's {adj} planet is",
        "Of all the planets in the solar system, the {adj} one is",
    ], adj=r"[a-z]+est"),
    _bank("together", [
        "{a} and {b} are {v} together.", "{b} and {a} are {v} together.", "{a} is {v} with {b}.",
        "{b} is {v} with {a}.",
    ], a=NAME, b=NAME, v=r"[a-z]+ing(?: [a-z]+){0,3}?"),
)


def slot_rewrites(text: str, banks: tuple[SlotBank, ...] = BANKS) -> list[str]:
    """Rewrites of ``text`` from the first bank it matches (empty if none)."""
    for bank in banks:
        rewrites = bank.rewrites(text)
        if rewrites:
            return rewrites
    return []


def matching_bank(text: str, banks: tuple[SlotBank, ...] = BANKS) -> tuple[SlotBank, dict[str, str]] | None:
    """The first bank matching ``text`` and its slot values."""
    for bank in banks:
        found = bank.match(text)
        if found:
            return bank, found[1]
    return None
