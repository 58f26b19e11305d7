#!/usr/bin/env python3
"""Validate the paraphrase corpus (actalign/data/paraphrases.jsonl).

Usage:
    python3 scripts/check_corpus.py [path]

Stdlib only. Prints a summary and exits non-zero if any problem is found.
Every problem message names the 1-based line number it comes from.

Checks:
  * every non-blank line parses as a JSON object;
  * keys are exactly {id, family, variants} plus optional answer, with the right types;
  * ids are unique, ids and families are kebab-case;
  * each set has >= MIN_VARIANTS distinct, non-empty variants with no
    leading/trailing whitespace (and, as a soft rule, plain ASCII);
  * answer (if present) is a non-empty string starting with exactly one space,
    with no trailing whitespace, and no variant already ends with / contains the
    answer as a whole word;
  * no variant string occurs twice anywhere in the file, even after
    normalising case and punctuation (so no prompt leaks across a family split);
  * a family is either all-answer or all-no-answer; answer families have
    >= MIN_ANSWERS distinct answers;
  * the file has >= MIN_SETS sets and >= MIN_FAMILIES families.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "actalign" / "data" / "paraphrases.jsonl"

MIN_SETS = 160
MIN_FAMILIES = 16
MIN_VARIANTS = 6
MIN_ANSWERS = 4
MAX_WORDS = 20

REQUIRED_KEYS = {"id", "family", "variants"}
OPTIONAL_KEYS = {"answer"}
KEBAB = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def normalise(text: str) -> str:
    """Lower-case, drop punctuation, collapse whitespace (for near-duplicate checks)."""
    text = text.lower().replace("'", "")
    text = re.sub(r"[^a-z0-9]+", " ", text)
    return " ".join(text.split())


def check(path: Path) -> int:
    errors: list[str] = []
    warnings: list[str] = []

    def err(lineno: int, msg: str) -> None:
        errors.append(f"line {lineno}: {msg}")

    def warn(lineno: int, msg: str) -> None:
        warnings.append(f"line {lineno}: {msg}")

    try:
        raw_lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"ERROR: cannot read {path}: {exc}", file=sys.stderr)
        return 2

    ids: dict[str, int] = {}
    exact_seen: dict[str, int] = {}
    norm_seen: dict[str, int] = {}
    family_sets: dict[str, list[int]] = defaultdict(list)
    family_answers: dict[str, list[str | None]] = defaultdict(list)
    family_first_line: dict[str, int] = {}
    n_sets = 0
    n_variants = 0

    for lineno, line in enumerate(raw_lines, start=1):
        if not line.strip():
            err(lineno, "blank line")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            err(lineno, f"invalid JSON: {exc}")
            continue
        if not isinstance(obj, dict):
            err(lineno, "line is not a JSON object")
            continue

        keys = set(obj)
        missing = REQUIRED_KEYS - keys
        extra = keys - REQUIRED_KEYS - OPTIONAL_KEYS
        if missing:
            err(lineno, f"missing keys: {sorted(missing)}")
        if extra:
            err(lineno, f"unexpected keys: {sorted(extra)}")
        if missing:
            continue

        sid, family, variants = obj["id"], obj["family"], obj["variants"]
        answer = obj.get("answer")
        n_sets += 1

        # id / family
        if not isinstance(sid, str) or not sid:
            err(lineno, "id must be a non-empty string")
        else:
            if not KEBAB.match(sid):
                err(lineno, f"id {sid!r} is not kebab-case")
            if sid in ids:
                err(lineno, f"duplicate id {sid!r} (first on line {ids[sid]})")
            else:
                ids[sid] = lineno
        if not isinstance(family, str) or not family:
            err(lineno, "family must be a non-empty string")
            family = f"<invalid:{lineno}>"
        elif not KEBAB.match(family):
            err(lineno, f"family {family!r} is not kebab-case")
        family_sets[family].append(lineno)
        family_first_line.setdefault(family, lineno)

        # answer
        if "answer" in obj:
            if not isinstance(answer, str) or not answer.strip():
                err(lineno, "answer must be a non-empty string")
                answer = None
            else:
                if not answer.startswith(" "):
                    err(lineno, f"answer {answer!r} must start with a space")
                elif answer.startswith("  "):
                    err(lineno, f"answer {answer!r} starts with more than one space")
                if answer != answer.rstrip():
                    err(lineno, f"answer {answer!r} has trailing whitespace")
                if not answer.isascii():
                    warn(lineno, f"answer {answer!r} is not plain ASCII")
        family_answers[family].append(answer if "answer" in obj else None)

        # variants
        if not isinstance(variants, list):
            err(lineno, "variants must be a list")
            continue
        good: list[str] = []
        for i, v in enumerate(variants):
            if not isinstance(v, str):
                err(lineno, f"variant {i} is not a string")
                continue
            if not v.strip():
                err(lineno, f"variant {i} is empty")
                continue
            if v != v.strip():
                err(lineno, f"variant {i} {v!r} has leading/trailing whitespace")
            if "  " in v or "\n" in v or "\t" in v:
                err(lineno, f"variant {i} {v!r} has irregular whitespace")
            if not v.isascii():
                warn(lineno, f"variant {i} {v!r} is not plain ASCII")
            if len(v.split()) > MAX_WORDS:
                warn(lineno, f"variant {i} {v!r} is longer than {MAX_WORDS} words")
            if isinstance(answer, str) and answer.strip():
                a = answer.strip()
                # Whole-word match, so "colored" does not count as ending with "red".
                if re.search(r"(?<![A-Za-z0-9])" + re.escape(a) + r"\W*$", v):
                    err(lineno, f"variant {i} {v!r} already ends with the answer {a!r}")
                elif re.search(r"(?<![A-Za-z0-9])" + re.escape(a) + r"(?![A-Za-z0-9])", v):
                    err(lineno, f"variant {i} {v!r} already contains the answer {a!r}")
            good.append(v)

        n_variants += len(good)
        if len(set(good)) != len(good):
            dups = [v for v, c in Counter(good).items() if c > 1]
            err(lineno, f"duplicate variants within set: {dups}")
        if len(set(good)) < MIN_VARIANTS:
            err(lineno, f"only {len(set(good))} distinct valid variants (need >= {MIN_VARIANTS})")

        # cross-file duplicates (exact and normalised)
        for v in dict.fromkeys(good):
            nv = normalise(v)
            if v in exact_seen:
                err(lineno, f"variant {v!r} duplicates a variant on line {exact_seen[v]}")
            elif nv in norm_seen:
                err(lineno, f"variant {v!r} is a near-duplicate (case/punctuation only) "
                            f"of a variant on line {norm_seen[nv]}")
            exact_seen.setdefault(v, lineno)
            norm_seen.setdefault(nv, lineno)

    # family-level checks
    for family, lines in family_sets.items():
        answers = family_answers[family]
        with_ans = [a for a in answers if a is not None]
        first = family_first_line[family]
        if with_ans and len(with_ans) != len(answers):
            err(first, f"family {family!r} mixes sets with and without an answer")
        if with_ans:
            distinct = sorted(set(with_ans))
            if len(distinct) < MIN_ANSWERS:
                err(first, f"family {family!r} has only {len(distinct)} distinct answers "
                           f"(need >= {MIN_ANSWERS}): {distinct}")
            # Soft check: distinct answers whose first word collides cannot be
            # told apart by a first-token argmax.
            by_first = defaultdict(set)
            for a in distinct:
                by_first[a.split()[0]].add(a)
            for fw, group in by_first.items():
                if len(group) > 1:
                    warn(first, f"family {family!r}: answers {sorted(group)} share first word {fw!r}")

    if n_sets < MIN_SETS:
        errors.append(f"file: only {n_sets} sets (need >= {MIN_SETS})")
    if len(family_sets) < MIN_FAMILIES:
        errors.append(f"file: only {len(family_sets)} families (need >= {MIN_FAMILIES})")

    # summary
    print(f"corpus: {path}")
    print(f"sets: {n_sets}")
    print(f"families: {len(family_sets)}")
    print(f"variants total: {n_variants}")
    print("per-family counts (sets / variants / distinct answers):")
    width = max((len(f) for f in family_sets), default=0)
    for family in sorted(family_sets):
        lines = family_sets[family]
        answers = [a for a in family_answers[family] if a is not None]
        nvar = 0
        for ln in lines:
            try:
                nvar += len(json.loads(raw_lines[ln - 1])["variants"])
            except Exception:
                pass
        ans = str(len(set(answers))) if answers else "-"
        print(f"  {family:<{width}}  {len(lines):>3} sets  {nvar:>4} variants  answers: {ans}")

    for w in warnings:
        print(f"WARNING: {w}")
    if errors:
        for e in errors:
            print(f"ERROR: {e}", file=sys.stderr)
        print(f"FAILED: {len(errors)} problem(s)", file=sys.stderr)
        return 1
    print("OK")
    return 0


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else DEFAULT_PATH
    if len(argv) > 2:
        print("usage: check_corpus.py [path]", file=sys.stderr)
        return 2
    return check(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
