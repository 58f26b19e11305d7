"""Base prompts: the input of ``actalign generate`` (one prompt per set, to be paraphrased).

Input JSONL, one object per line::

    {"id": "capital-of-france", "family": "capital-of", "prompt": "The capital of France is", "answer": " Paris"}

The prompt comes from ``prompt`` or from ``variants`` (its first element is the base; any further
elements are kept as given variants and written out unjudged). Optional ``keep``: extra terms every
generated variant must contain (on top of the judge's own key terms).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from actalign.variants import VariantFileError, VariantSet, read_records

BASE_KEYS = {"id", "family", "prompt", "variants", "answer", "keep"}


@dataclass(frozen=True)
class BasePrompt:
    """One base prompt with its set metadata."""

    id: str
    family: str
    prompt: str
    answer: str | None = None
    given: tuple[str, ...] = ()
    keep: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("id", "family", "prompt"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"base prompt {self.id!r}: {name!r} must be a non-empty string")
        if self.answer is not None and (not isinstance(self.answer, str) or not self.answer.strip()):
            raise ValueError(f"base prompt {self.id!r}: 'answer' must be a non-empty string when present")


def as_base(record: object) -> BasePrompt:
    """A :class:`BasePrompt` from a BasePrompt, a :class:`VariantSet` (first variant is the base)
    or a dict in the input format."""
    if isinstance(record, BasePrompt):
        return record
    if isinstance(record, VariantSet):
        return BasePrompt(record.id, record.family, record.variants[0], record.answer, tuple(record.variants[1:]))
    if isinstance(record, dict):
        return parse_base_record(record, "record")
    raise TypeError(f"expected a BasePrompt, VariantSet or dict, got {type(record).__name__}")


def parse_base_record(record: object, where: str) -> BasePrompt:
    """Validate one decoded input line; errors name ``where``."""
    if not isinstance(record, dict):
        raise VariantFileError(f"{where}: expected a JSON object, got {type(record).__name__}")
    unknown = record.keys() - BASE_KEYS
    if unknown:
        raise VariantFileError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(BASE_KEYS)}")
    missing = {"id", "family"} - record.keys()
    if missing or not ({"prompt", "variants"} & record.keys()):
        raise VariantFileError(f"{where}: each line needs id, family and a base prompt ('prompt' or 'variants')")
    variants = record.get("variants") or []
    if not isinstance(variants, list) or not all(isinstance(v, str) for v in variants):
        raise VariantFileError(f"{where}: 'variants' must be a list of strings")
    prompt = record.get("prompt", variants[0] if variants else None)
    given = [v for v in variants if v != prompt]
    keep = record.get("keep", [])
    if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
        raise VariantFileError(f"{where}: 'keep' must be a list of strings")
    try:
        return BasePrompt(record["id"], record["family"], prompt, record.get("answer"), tuple(given), tuple(keep))
    except ValueError as err:
        raise VariantFileError(f"{where}: {err}") from err


def read_base_prompts(path: str | Path) -> list[BasePrompt]:
    """Read and validate a base-prompt JSONL file (blank lines skipped, ids unique)."""
    return read_records(path, parse_base_record, "base prompts (id, family, prompt)")