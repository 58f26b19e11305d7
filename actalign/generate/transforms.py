"""Programmatic, seeded paraphrase transforms and their composition (``generate_template``).

Each :class:`Transform` rewrites a prompt (or returns None when it does not apply) and declares
``preserves_answer``: whether the set's exact ``answer`` is still the right continuation afterwards.
On sets with an answer only answer-preserving transforms run, so fact sets keep their ``answer``.
Every random choice goes through a ``random.Random`` seeded from ``(seed, set id, prompt)``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from actalign.generate.base import BasePrompt, as_base
from actalign.generate.lexicon import (
    STOPWORDS,
    capitalise_first,
    entity_terms,
    load_names,
    load_synonyms,
    looks_like_name,
    lower_first,
    number_value,
    prompt_kind,
    words,
)
from actalign.generate.slots import slot_rewrites


@dataclass(frozen=True)
class PromptContext:
    """What transforms need to know about the base prompt (computed once, from the base)."""

    answer: str | None
    kind: str  # completion | question | instruction | statement

    @classmethod
    def of(cls, prompt: str, answer: str | None) -> "PromptContext":
        return cls(answer, prompt_kind(prompt, answer))

    @property
    def answer_words(self) -> set[str]:
        return {w.lower() for w in words(self.answer or "")}


Apply = Callable[[str, PromptContext, random.Random], "str | None"]


@dataclass(frozen=True)
class Transform:
    """A named rewrite. ``stage`` orders transforms inside a chain (content first, frames last);
    a non-``standalone`` transform (a casing or punctuation tweak) only appears combined with others."""

    name: str
    apply: Apply
    preserves_answer: bool
    stage: int
    description: str
    standalone: bool = True  # False: too small a change to make a variant on its own


@dataclass(frozen=True)
class TemplateVariant:
    """A generated variant and the transforms that produced it, in order."""

    text: str
    transforms: tuple[str, ...]


# ----------------------------------------------------------------------------- helpers


def _replace_word(text: str, old: str, new: str) -> str:
    return re.sub(rf"(?<![\w'’]){re.escape(old)}(?![\w])", new, text)


def _match_case(original: str, replacement: str) -> str:
    """Give ``replacement`` the capitalisation of ``original``'s first letter."""
    if original[:1].isupper():
        return capitalise_first(replacement)
    return replacement


def _decapitalise(clause: str) -> str:
    """Lower-case a clause's first word unless it looks like a name (or is ``I``)."""
    first = words(clause)[:1]
    if not first or first[0] == "I" or (first[0].lower() not in STOPWORDS and looks_like_name(first[0].lower())):
        return clause
    return lower_first(clause)


def _with_article_for(prefix: str, word: str) -> str:
    """``prefix`` with a trailing "a"/"an" made to agree with ``word`` (simple spelling rule)."""
    m = re.search(r"\b([Aa]n?) $", prefix)
    if not m:
        return prefix
    wants_an = word[:1].lower() in "aeiou" and not word.lower().startswith(("uni", "use", "one", "eu"))
    return prefix[: m.start(1)] + _match_case(m.group(1), "an" if wants_an else "a") + " "


# ----------------------------------------------------------------------------- content transforms


def slot_template(text: str, ctx: PromptContext, rng: random.Random) -> str | None:
    """Rewrite with another template of the first matching slot bank (see :mod:`slots`)."""
    rewrites = slot_rewrites(text)
    return rng.choice(rewrites) if rewrites else None


COORDINATION_RE = re.compile(r"\b([A-Z][a-z]+) and ([A-Z][a-z]+)\b")


def coordination_swap(text: str, ctx: PromptContext, rng: random.Random) -> str | None:
    """"Alice and Bob" -> "Bob and Alice" (two capitalised names joined by "and")."""
    for m in COORDINATION_RE.finditer(text):
        a, b = m.group(1), m.group(2)
        if a.lower() in STOPWORDS or b.lower() in STOPWORDS:
            continue
        return text[: m.start()] + f"{b} and {a}" + text[m.end() :]
    return None


def name_substitution(text: str, ctx: PromptContext, rng: random.Random) -> str | None:
    """Replace first names (from the bundled list) by others of the same gender, consistently;
    names that are part of the answer are left alone."""
    names = load_names()
    present = list(dict.fromkeys(w for w in words(text) if w in names and w.lower() not in ctx.answer_words))
    if not present:
        return None
    taken = set(words(text)) | set(words(ctx.answer or ""))
    for name in present:
        pool = sorted(n for n, g in names.items() if g == names[name] and n not in taken)
        new = rng.choice(pool)
        taken.add(new)
        text = _replace_word(text, name, new)
    return text


# Irregular past participles for the -ing verbs and simple pasts the passive patterns meet.
PARTICIPLES = {
    "feeding": "fed", "reading": "read", "writing": "written", "eating": "eaten", "making": "made",
    "taking": "taken", "giving": "given", "driving": "driven", "building": "built", "buying": "bought",
    "holding": "held", "singing": "sung", "drinking": "drunk", "throwing": "thrown", "catching": "caught",
    "teaching": "taught", "selling": "sold", "telling": "told", "finding": "found", "seeing": "seen",
    "hitting": "hit", "cutting": "cut", "putting": "put", "sending": "sent", "bringing": "brought",
    "riding": "ridden", "drawing": "drawn", "washing": "washed", "chasing": "chased", "baking": "baked",
}
OBJECT_DETERMINERS = r"(?:the|a|an|his|her|their|my|your|our|some|two|three)"
NOT_OBJECTS = STOPWORDS | {"together", "outside", "inside", "home", "today", "tomorrow", "now", "away"}
PROGRESSIVE_RE = re.compile(
    rf"^(?P<s>(?:(?:The|A|An) (?:[a-z]+ )?)?[A-Za-z]+) (?P<aux>is|are) (?P<v>[a-z]+ing) "
    rf"(?P<o>(?:{OBJECT_DETERMINERS} )?(?:[a-z]+ )?[a-z]+?)(?P<rest>(?: (?:in|on|at|over|under|near|by|with) [^.?!]+)?)(?P<p>[.!])$"
)


def _participle(ing: str) -> str | None:
    if ing in PARTICIPLES:
        return PARTICIPLES[ing]
    stem = ing[:-3]
    if len(stem) >= 3 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
        stem = stem[:-1]  # running -> run
    if len(stem) < 2:
        return None
    return stem + ("d" if stem.endswith("e") else "ed")


def passive_voice(text: str, ctx: PromptContext, rng: random.Random) -> str | None:
    """Present progressive active -> passive: "Maria is cooking dinner in the kitchen." ->
    "Dinner is being cooked by Maria in the kitchen." (simple subject-verb-object sentences only)."""
    m = PROGRESSIVE_RE.match(text.strip())
    if not m or m.group("s").lower() in {"it", "there", "this", "that", "he", "she", "they", "we", "i", "you"}:
        return None
    obj = m.group("o")
    if words(obj)[0].lower() in NOT_OBJECTS or words(obj)[-1].lower() in NOT_OBJECTS:
        return None
    participle = _participle(m.group("v"))
    if participle is None:
        return None
    aux = "are" if words(obj)[-1].endswith("s") and not words(obj)[-1].endswith("ss") else "is"
    subject = _decapitalise(m.group("s"))
    return capitalise_first(f"{obj} {aux} being {participle} by {subject}{m.group('rest')}{m.group('p')}")


TRAILING_PP_RE = re.compile(r"^(?P<main>.{8,}?) (?P<pp>(?:in|on|at|over|under|near) the [a-z]+(?: [a-z]+)?)(?P<p>[.!])$")
FRONTED_PP_RE = re.compile(r"^(?P<pp>(?:In|On|At|Over|Under|Near) the [a-z]+(?: [a-z]+)?), (?P<main>.+?)(?P<p>[.!?])$")
FRONTED_IF_RE = re.compile(r"^(?P<sub>(?:Even if|Even when|If|When) [^,]+), (?P<main>[^,]+?)(?P<p>[.?!])$")
TRAILING_IF_RE = re.compile(r"^(?P<main>[^,]+?) (?P<sub>(?:even if|even when|if|when) [^,]+?)(?P<p>[.?!])$")


def clause_reorder(text: str, ctx: PromptContext, rng: random.Random) -> str | None:
    """Move a trailing place phrase or if/when clause to the front, or a fronted one to the back."""
    text = text.strip()
    if m := TRAILING_PP_RE.match(text):
        return f"{capitalise_first(m['pp'])}, {_decapitalise(m['main'])}{m['p']}"
    if m := FRONTED_PP_RE.match(text):
        return f"{capitalise_first(m['main'])} {lower_first(m['pp'])}{m['p']}"
    if (m := FRONTED_IF_RE.match(text)) and len(words(m["main"])) >= 3:
        return f"{capitalise_first(m['main'])} {lower_first(m['sub'])}{m['p']}"
    if (m := TRAILING_IF_RE.match(text)) and len(words(m["main"])) >= 3:
        return f"{capitalise_first(m['sub'])}, {_decapitalise(m['main'])}{m['p']}"
    return None


def _synonym_spans(text: str, ctx: PromptContext) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, phrase) matches of table entries (the longest entry wins at a
    position); never inside the answer's words or (for completion prompts) the last word."""
    protected = ctx.answer_words
    last_start = text.rstrip().rfind(" ") + 1 if ctx.kind == "completion" else len(text) + 1
    spans = []
    for m in load_synonyms().pattern().finditer(text):
        if m.end() <= last_start and not {w.lower() for w in words(m.group())} & protected:
            spans.append((m.start(), m.end(), m.group()))
    return spans


def synonym_substitution(text: str, ctx: PromptContext, rng: random.Random) -> str | None:
    """Replace one or two words/phrases by a member of their curated synonym group."""
    spans = _synonym_spans(text, ctx)
    if not spans:
        return None
    chosen = sorted(rng.sample(spans, k=min(len(spans), rng.choice((1, 1, 2)))), reverse=True)
    for start, end, found in chosen:
        replacement = _match_case(found, rng.choice(load_synonyms().alternatives(found)))
        text = _with_article_for(text[:start], replacement) + replacement + text[end:]
    return text


# ----------------------------------------------------------------------------- surface transforms


CONTRACTIONS = [
    ("do not", "don't"), ("does not", "doesn't"), ("did not", "didn't"), ("is not", "isn't"),
    ("are not", "aren't"), ("was not", "wasn't"), ("were not", "weren't"), ("cannot", "can't"),
    ("will not", "won't"), ("would not", "wouldn't"), ("should not", "shouldn't"),
    ("could not", "couldn't"), ("have not", "haven't"), ("has not", "hasn't"), ("it is", "it's"),
    ("that is", "that's"), ("what is", "what's"), ("where is", "where's"), ("who is", "who's"),
    ("there is", "there's"), ("I am", "I'm"), ("you are", "you're"), ("we are", "we're"),
    ("they are", "they're"), ("he is", "he's"), ("she is", "she's"), ("I will", "I'll"),
    ("you will", "you'll"), ("I would", "I'd"), ("you would", "you'd"),
]
# "'s" forms that may stand for "has" are not expanded before these words ("it's been").
HAS_CONTEXT = r"(?! (?:been|got|gotten|had)\b)"


def _contraction_edits(text: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(contractable, expandable) pairs present in ``text``; a pair is only contracted when a word
    follows it ("I know what it is" keeps "it is")."""
    contract, expand = [], []
    for full, short in CONTRACTIONS:
        if re.search(rf"\b{re.escape(full)}\b(?= \w)", text, flags=re.IGNORECASE):
            contract.append((full, short))
        if re.search(_short_pattern(short), text.replace("’", "'"), flags=re.IGNORECASE):
            expand.append((short, full))
    return contract, expand


def _short_pattern(short: str) -> str:
    """Regex for a contracted form as a whole word (and not a "has" reading of "'s")."""
    guard = HAS_CONTEXT if short.endswith("'s") else ""
    return rf"\b{re.escape(short)}(?![\w']){guard}"


def contractions(text: str, ctx: PromptContext, rng: random.Random) -> str | None:
    """Contract ("do not" -> "don't") or expand ("what's" -> "what is") every listed form, one
    direction per call."""
    contract, expand = _contraction_edits(text)
    options = [edits for edits in (contract, expand) if edits]
    if not options:
        return None
    text = text.replace("’", "'")
    for old, new in rng.choice(options):
        pattern = rf"\b{re.escape(old)}\b(?= \w)" if " " in old or old == "cannot" else _short_pattern(old)
        text = re.sub(pattern, lambda m: _match_case(m.group(), new), text, flags=re.IGNORECASE)
    return text


def punctuation(text: str, ctx: PromptContext, rng: random.Random) -> str | None:
    """Drop or add a final period (not on completions or questions), drop the comma after an opening
    phrase, or switch straight/curly apostrophes."""
    options = []
    stripped = text.rstrip()
    if ctx.kind in ("statement", "instruction"):
        options.append(stripped[:-1] if stripped.endswith(".") else None)
        options.append(stripped + "." if stripped[-1:].isalnum() else None)
    intro = re.match(r"^((?:In|On|At|For|When|If|Today|Please|Geographically|Overall)\b[^,]{0,40}), ", text)
    options.append(text[: intro.end(1)] + text[intro.end(1) + 1 :] if intro else None)
    if "'" in text or "’" in text:
        options.append(text.replace("'", "’") if "'" in text else text.replace("’", "'"))
    options = [o for o in options if o and o != text]
    return rng.choice(options) if options else None


def lower_first_word(text: str, ctx: PromptContext, rng: random.Random) -> str | None:
    """Lower-case the first letter (chat style), unless the prompt starts with a name."""
    first = words(text)[:1]
    if not first or not text[:1].isupper() or first[0] == "I":
        return None
    bare = re.sub(r"['’]s$", "", first[0])
    if bare in entity_terms(text) and number_value(bare) is None:
        return None  # a name or place: keep its capital
    return lower_first(text)


def case_style(text: str, ctx: PromptContext, rng: random.Random) -> str | None:
    """All lower case or all upper case; the answer's expected casing may change, so not
    answer-preserving."""
    return rng.choice([text.lower(), text.upper()])


# ----------------------------------------------------------------------------- frames


PREFIXES = {
    "completion": ["Complete the sentence: ", "Fill in the blank: ", "Finish this sentence: ", "Tell me: "],
    "question": ["Question: ", "Tell me: ", "I have a question: ", "Quick question: "],
    "instruction": ["Task: ", "Instruction: ", "Request: ", "Here is a task: "],
    "statement": ["Scene: ", "Description: ", "Picture this: "],
}


def prefix_frame(text: str, ctx: PromptContext, rng: random.Random) -> str | None:
    """Put a label in front ("Tell me: X", "Question: X"); the end of the prompt, and so where the
    answer goes, does not change."""
    return rng.choice(PREFIXES[ctx.kind]) + text


def qa_frame(text: str, ctx: PromptContext, rng: random.Random) -> str | None:
    """Question/answer frames that move where the answer goes: "Question: X Answer:", "Q: X A:";
    instructions become requests ("Could you X?")."""
    if ctx.kind == "question":
        return rng.choice([f"Question: {text} Answer:", f"Q: {text} A:", f"{text} Please answer."])
    if ctx.kind == "instruction":
        body = re.sub(r"^please\s+", "", text.strip(), flags=re.IGNORECASE).rstrip(".!")
        return rng.choice(["Could you", "Can you", "Would you"]) + f" {_decapitalise(body)}?"
    return None


# ----------------------------------------------------------------------------- registry and composition


TRANSFORMS: dict[str, Transform] = {
    t.name: t
    for t in (
        Transform("slot_template", slot_template, True, 0, slot_template.__doc__),
        Transform("name_substitution", name_substitution, True, 1, name_substitution.__doc__),
        Transform("coordination_swap", coordination_swap, True, 1, coordination_swap.__doc__),
        Transform("passive_voice", passive_voice, False, 2, passive_voice.__doc__),
        Transform("clause_reorder", clause_reorder, False, 2, clause_reorder.__doc__),
        Transform("synonyms", synonym_substitution, True, 3, synonym_substitution.__doc__),
        Transform("contractions", contractions, True, 4, contractions.__doc__),
        Transform("punctuation", punctuation, True, 5, punctuation.__doc__, standalone=False),
        Transform("lower_first", lower_first_word, True, 6, lower_first_word.__doc__, standalone=False),
        Transform("case_style", case_style, False, 6, case_style.__doc__),
        Transform("prefix_frame", prefix_frame, True, 7, prefix_frame.__doc__),
        Transform("qa_frame", qa_frame, False, 7, qa_frame.__doc__),
    )
}


CONTENT_STAGE = 3  # stages up to here change wording; later ones change surface or framing


def applicable_transforms(answer: str | None, names: Sequence[str] | None = None) -> list[Transform]:
    """The transforms to use: ``names`` (default all), only answer-preserving ones when there is an answer."""
    unknown = set(names or ()) - TRANSFORMS.keys()
    if unknown:
        raise ValueError(f"unknown transform(s) {sorted(unknown)}; choose from {sorted(TRANSFORMS)}")
    chosen = [TRANSFORMS[n] for n in (names or TRANSFORMS)]
    return [t for t in chosen if t.preserves_answer or answer is None]


def apply_chain(text: str, chain: Sequence[Transform], ctx: PromptContext, rng: random.Random) -> TemplateVariant:
    """Apply ``chain`` in stage order, skipping transforms that do not apply."""
    used = []
    for transform in sorted(chain, key=lambda t: t.stage):
        out = transform.apply(text, ctx, rng)
        if out and out.strip() and out != text:
            text, used = " ".join(out.split()), used + [transform.name]
    return TemplateVariant(text, tuple(used))


def template_variants(
    base: object, n: int, seed: int = 0, transforms: Sequence[str] | None = None
) -> list[TemplateVariant]:
    """Up to ``n`` distinct variants of ``base``'s prompt from random chains of 1-3 transforms
    (at most one per stage), each transform also tried alone first. Deterministic in ``seed``."""
    record: BasePrompt = as_base(base)
    ctx = PromptContext.of(record.prompt, record.answer)
    pool = applicable_transforms(record.answer, transforms)
    rng = random.Random(f"{seed}:{record.id}:{record.prompt}")
    seen = {record.prompt}
    out: list[TemplateVariant] = []
    singles = [[t] for t in rng.sample(pool, len(pool)) if t.standalone]
    for attempt in range(len(singles) + 30 * max(n, 1)):
        if len(out) >= n or not pool:
            break
        chain = singles[attempt] if attempt < len(singles) else _random_chain(pool, rng)
        variant = apply_chain(record.prompt, chain, ctx, rng)
        if variant.text in seen or _uninteresting(variant, out):
            continue
        seen.add(variant.text)
        out.append(variant)
    return out


def _uninteresting(variant: TemplateVariant, so_far: Sequence[TemplateVariant]) -> bool:
    """Skip no-ops, tweak-only variants (casing/punctuation alone), and a second variant from the
    same chain of surface/frame transforms (so the variants are not all "Tell me: X", ...)."""
    used = [TRANSFORMS[name] for name in variant.transforms]
    if not any(t.standalone for t in used):
        return True
    if any(t.stage <= CONTENT_STAGE for t in used):
        return False
    return any(v.transforms == variant.transforms for v in so_far)


def _random_chain(pool: Sequence[Transform], rng: random.Random) -> list[Transform]:
    picked = rng.sample(list(pool), k=min(len(pool), rng.choice((1, 2, 2, 3))))
    by_stage: dict[int, Transform] = {}
    for t in picked:
        by_stage.setdefault(t.stage, t)
    return list(by_stage.values())


def generate_template(base: object, n: int, seed: int = 0, transforms: Sequence[str] | None = None) -> list[str]:
    """Up to ``n`` programmatic variants (strings) of ``base`` (a BasePrompt, VariantSet or dict).

    Sets with an answer only get answer-preserving transforms. Same arguments, same output.
    """
    return [v.text for v in template_variants(base, n, seed, transforms)]
