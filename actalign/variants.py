"""Variant sets: paraphrases of one prompt, grouped into families for held-out splits.

File format (JSONL, one set per line)::

    {"id": "capital-france", "family": "capital-of", "variants": ["The capital of France is", ...], "answer": " Paris"}
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

BUNDLED_FILE = "paraphrases.jsonl"
ALLOWED_KEYS = {"id", "family", "variants", "answer"}
T = TypeVar("T")


class VariantFileError(ValueError):
    """A variant-set file that does not follow the format; the message names file and line."""


@dataclass(frozen=True)
class VariantSet:
    """Paraphrases of one prompt. ``answer`` is the expected continuation (leading space), if any."""

    id: str
    family: str
    variants: tuple[str, ...]
    answer: str | None = None

    def __post_init__(self) -> None:
        problem = _problem_with(self.id, self.family, self.variants, self.answer)
        if problem:
            raise ValueError(problem)

    def to_json(self) -> dict:
        record = asdict(self)
        record["variants"] = list(self.variants)
        if self.answer is None:
            del record["answer"]
        return record


def _problem_with(set_id, family, variants, answer) -> str | None:
    if not isinstance(set_id, str) or not set_id.strip():
        return "'id' must be a non-empty string"
    if not isinstance(family, str) or not family.strip():
        return f"set {set_id!r}: 'family' must be a non-empty string"
    if not isinstance(variants, (list, tuple)) or not all(isinstance(v, str) for v in variants):
        return f"set {set_id!r}: 'variants' must be a list of strings"
    if len(variants) < 2:
        return f"set {set_id!r}: needs at least 2 variants, got {len(variants)}"
    empty = [i for i, v in enumerate(variants) if not v.strip()]
    if empty:
        return f"set {set_id!r}: variant {empty[0]} is an empty string"
    if answer is not None and (not isinstance(answer, str) or not answer.strip()):
        return f"set {set_id!r}: 'answer' must be a non-empty string when present"
    return None


def parse_record(record: object, where: str) -> VariantSet:
    """Validate one decoded JSON line; errors name ``where`` (``file:line``)."""
    if not isinstance(record, dict):
        raise VariantFileError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = {"id", "family", "variants"} - record.keys()
    if missing:
        raise VariantFileError(f"{where}: missing field(s) {sorted(missing)}; each line needs id, family, variants")
    unknown = record.keys() - ALLOWED_KEYS
    if unknown:
        raise VariantFileError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(ALLOWED_KEYS)}")
    problem = _problem_with(record["id"], record["family"], record["variants"], record.get("answer"))
    if problem:
        raise VariantFileError(f"{where}: {problem}")
    return VariantSet(record["id"], record["family"], tuple(record["variants"]), record.get("answer"))


def read_records(path: str | Path, parse: Callable[[object, str], T], what: str = "variant sets") -> list[T]:
    """Read a JSONL file of records with unique ``id``s; ``parse(record, "file:line")`` validates one.
    Blank lines are skipped; every error names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise VariantFileError(f"{path}: no such file; pass a JSONL file of {what} (see README)")
    items: list[T] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise VariantFileError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from err
        item = parse(record, where)
        if item.id in seen:
            raise VariantFileError(f"{where}: duplicate id {item.id!r} (first on line {seen[item.id]})")
        seen[item.id] = number
        items.append(item)
    if not items:
        raise VariantFileError(f"{path}: contains no {what}")
    return items


def load_variant_sets(path: str | Path) -> list[VariantSet]:
    """Read and validate a variant-set JSONL file (blank lines are skipped)."""
    return read_records(path, parse_record, "variant sets")


def save_variant_sets(sets: Iterable[VariantSet], path: str | Path) -> None:
    """Write sets as JSONL (written to a temporary file, then renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(s.to_json(), ensure_ascii=False) + "\n" for s in sets), encoding="utf-8")
    tmp.replace(path)


def bundled_path() -> Path:
    """Path of the bundled paraphrase corpus."""
    return Path(str(resources.files("actalign") / "data" / BUNDLED_FILE))


def load_bundled() -> list[VariantSet]:
    return load_variant_sets(bundled_path())


def split_by_family(
    sets: Sequence[VariantSet], heldout_fraction: float = 0.25, seed: int = 0
) -> tuple[list[VariantSet], list[VariantSet]]:
    """Seeded split into (train, held-out) with whole families on one side.

    Families are shuffled with ``seed`` and taken into held-out until it holds at least
    ``heldout_fraction`` of the sets; both sides keep at least one family.
    """
    families = sorted({s.family for s in sets})
    if len(families) < 2:
        raise ValueError(f"a family split needs at least 2 families, got {families}; add families or pass eval sets")
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    random.Random(seed).shuffle(families)
    size = {f: sum(s.family == f for s in sets) for f in families}
    heldout: set[str] = set()
    for family in families[:-1]:
        if sum(size[f] for f in heldout) >= heldout_fraction * len(sets):
            break
        heldout.add(family)
    train = [s for s in sets if s.family not in heldout]
    held = [s for s in sets if s.family in heldout]
    return train, held


def flatten(sets: Sequence[VariantSet]) -> tuple[list[str], list[int]]:
    """All prompts in set order, and for each prompt the index of its set."""
    prompts = [v for s in sets for v in s.variants]
    set_index = [i for i, s in enumerate(sets) for _ in s.variants]
    return prompts, set_index
