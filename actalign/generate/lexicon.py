"""Word-level helpers and the bundled lexical resources shared by the generators and the judge.

Resources (plain files under ``actalign/data``, no downloads):

- ``names.txt``: first names, one per line as ``Name g`` with ``g`` in ``f``/``m``/``n``.
- ``synonyms.json``: curated groups of interchangeable words or phrases (``{"groups": [[...], ...]}``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

WORD_RE = re.compile(r"[A-Za-z0-9]+(?:['’\-][A-Za-z0-9]+)*")
SENTENCE_END = ".?!"

STOPWORDS = frozenset(
    """a an the and or but nor so yet if then than that this these those there here it its it's
    i me my mine we us our ours you your yours he him his she her hers they them their theirs
    is are was were be been being am do does did done doing have has had having will would shall
    should can could may might must of in on at to for from by with about as into onto over under
    up down out off through between among across after before during without within near
    what which who whom whose when where why how whether all any each every some most more much
    many such own same just also very too only ever even still again not no never
    one's someone something anything nothing everything""".split()
)
NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "hundred": 100, "thousand": 1000,
}
NEGATION_WORDS = frozenset(
    "not no never none nobody nothing neither nor nowhere cannot without".split()
)
IMPERATIVE_VERBS = frozenset(
    """add answer arrange ask calculate check choose compare compose convert correct count create
    define describe design draft edit explain find finish fix give help identify imagine list make
    name outline please plan provide read recommend rewrite say show solve sort suggest summarise
    summarize tell translate try use write""".split()
)


def words(text: str) -> list[str]:
    """Word tokens (apostrophes and hyphens stay inside a word: ``France's``, ``non-leap``, ``don't``)."""
    return WORD_RE.findall(text)


def stem(word: str) -> str:
    """A crude lower-case stem: drops possessives, regular plural endings and -ing/-ed (long words)."""
    w = word.lower().replace("’", "'")
    for suffix in ("'s", "s'"):
        if w.endswith(suffix) and len(w) > 3:
            w = w[: -len(suffix)] if suffix == "'s" else w[:-1]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("ches", "shes", "xes", "sses")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    if len(w) > 5 and w.endswith(("ing", "ed")):
        return w[: -3 if w.endswith("ing") else -2].rstrip("e")  # chasing, chased -> chas
    return w


def stems(text: str) -> list[str]:
    return [stem(w) for w in words(text)]


def is_content(word: str) -> bool:
    """Not a stopword (case-insensitive)."""
    return word.lower().replace("’", "'") not in STOPWORDS


def number_value(word: str) -> int | None:
    """Integer value of a digit string or an English number word, else None."""
    w = word.lower()
    if w.isdigit():
        return int(w)
    return NUMBER_WORDS.get(w)


def negation_count(text: str) -> int:
    """Negation cues: not/no/never/..., any ``n't`` contraction, and ``non-`` prefixes."""
    count = 0
    for w in words(text.lower().replace("’", "'")):
        if w in NEGATION_WORDS or w.endswith("n't") or w.startswith("non-"):
            count += 1
    return count


def ends_sentence(text: str) -> bool:
    return text.rstrip().endswith(tuple(SENTENCE_END))


def prompt_kind(text: str, answer: str | None) -> str:
    """``completion`` (an answer set whose prompt stops right before the answer), ``question``,
    ``instruction`` (imperative) or ``statement``."""
    stripped = text.strip()
    if answer is not None and not ends_sentence(stripped):
        return "completion"
    if stripped.endswith("?"):
        return "question"
    first = words(stripped)[:1]
    if first and first[0].lower() in IMPERATIVE_VERBS:
        return "instruction"
    return "statement"


def entity_terms(text: str, sentence_initial: bool = True) -> list[str]:
    """Capitalised names (not sentence-initial function words) and numbers in ``text`` ("one" only
    as a digit: the word is usually a pronoun). Text in capitals yields only numbers. With
    ``sentence_initial=False``, a sentence-initial word counts only if it is a known first name."""
    letters = [c for c in text if c.isalpha()]
    shouting = len(letters) > 3 and sum(c.isupper() for c in letters) > 0.6 * len(letters)
    terms: list[str] = []
    for match in WORD_RE.finditer(text):
        word = match.group()
        bare = re.sub(r"['’]s$", "", word)
        lower = bare.lower()
        if number_value(lower) is not None and lower != "one":
            terms.append(bare)
        elif word[0].isupper() and lower not in STOPWORDS and lower != "one" and not shouting:
            initial = not text[: match.start()].strip() or text[: match.start()].rstrip()[-1] in ".?!:"
            if not initial or (looks_like_name(lower) if sentence_initial else bare in load_names()):
                terms.append(bare)
    return list(dict.fromkeys(terms))


def looks_like_name(lower: str) -> bool:
    """A sentence-initial capitalised word that is probably a name (not a verb, adverb, number...)."""
    common = IMPERATIVE_VERBS | set(NUMBER_WORDS) | {"please", "yes", "hello", "hi"}
    return lower not in common and not lower.endswith("ly") and not load_synonyms().alternatives(lower)


def capitalise_first(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text else text


def normalise_space(text: str) -> str:
    return " ".join(text.split())


def data_path(name: str) -> Path:
    return Path(str(resources.files("actalign") / "data" / name))


@lru_cache(maxsize=1)
def load_names() -> dict[str, str]:
    """Bundled first names mapped to ``f``, ``m`` or ``n`` (gender, for pronoun-safe substitution)."""
    names: dict[str, str] = {}
    for line in data_path("names.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, gender = line.split()
            names[name] = gender
    return names


@dataclass(frozen=True)
class SynonymTable:
    """Curated word/phrase groups; lookups are case-insensitive.

    ``groups`` are drop-in replacements (used for substitution and by the judge); ``related`` groups
    are judge-only equivalences (a key word survives if a related word is present).
    """

    groups: tuple[tuple[str, ...], ...]
    related: tuple[tuple[str, ...], ...] = ()

    def alternatives(self, phrase: str) -> tuple[str, ...]:
        """Drop-in replacements for ``phrase``, in table order."""
        return _group_index(self.groups).get(phrase.lower(), ())

    def equivalents(self, phrase: str) -> tuple[str, ...]:
        """Replacements plus judge-only related words."""
        related = _group_index(self.related).get(phrase.lower(), ())
        return self.alternatives(phrase) + tuple(r for r in related if r not in self.alternatives(phrase))

    def phrases(self) -> list[str]:
        """Every substitutable entry (lower case), longest first so multi-word entries win."""
        return sorted(_group_index(self.groups), key=lambda p: (-len(p.split()), -len(p), p))

    def pattern(self) -> re.Pattern:
        """One case-insensitive regex matching any entry on word boundaries (longest entry wins)."""
        return _phrase_pattern(self.groups)


@lru_cache(maxsize=8)
def _phrase_pattern(groups: tuple[tuple[str, ...], ...]) -> re.Pattern:
    phrases = SynonymTable(groups).phrases()
    alternation = "|".join(re.escape(p) for p in phrases)
    return re.compile(rf"(?<![\w'’\-])(?:{alternation})(?![\w'’\-])", flags=re.IGNORECASE)


@lru_cache(maxsize=8)
def _group_index(groups: tuple[tuple[str, ...], ...]) -> dict[str, tuple[str, ...]]:
    index: dict[str, list[str]] = {}
    for group in groups:
        for member in group:
            others = index.setdefault(member.lower(), [])
            others.extend(m for m in group if m.lower() != member.lower() and m not in others)
    return {k: tuple(v) for k, v in index.items()}


@lru_cache(maxsize=1)
def load_synonyms() -> SynonymTable:
    """The bundled curated synonym table (``actalign/data/synonyms.json``)."""
    raw = json.loads(data_path("synonyms.json").read_text(encoding="utf-8"))
    groups = tuple(tuple(g) for g in raw["groups"])
    related = tuple(tuple(g) for g in raw.get("related", []))
    for group in groups + related:
        if len(group) < 2 or not all(isinstance(m, str) and m.strip() for m in group):
            raise ValueError(f"synonyms.json: bad group {group!r} (needs at least 2 non-empty strings)")
    return SynonymTable(groups, related)
