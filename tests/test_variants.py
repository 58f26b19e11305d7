"""Variant-set files: validation names file and line; seeded family splits; the bundled corpus."""

import json

import pytest

from actalign.variants import (
    VariantFileError,
    VariantSet,
    flatten,
    load_bundled,
    load_variant_sets,
    save_variant_sets,
    split_by_family,
)

GOOD = {"id": "capital-france", "family": "capital-of", "variants": ["The capital of France is", "France's capital is"], "answer": " Paris"}


def write_lines(tmp_path, lines):
    path = tmp_path / "sets.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"id": "x", "family": "f", "variants": ["only one"]}', "at least 2 variants"),
        ('{"id": "x", "family": "f", "variants": ["a", "  "]}', "empty string"),
        ('{"id": "x", "family": "f", "variants": "a, b"}', "list of strings"),
        ('{"id": 3, "family": "f", "variants": ["a", "b"]}', "'id' must be a non-empty string"),
        ('{"id": "x", "variants": ["a", "b"]}', "missing field"),
        ('{"id": "x", "family": "f", "variants": ["a", "b"], "answr": " y"}', "unknown field"),
        ('{"id": "x", "family": "f", "variants": ["a", "b"], "answer": 5}', "'answer' must be"),
        ('{"id": "x", "family": "f", "variants": ["a", "b"]', "not valid JSON"),
        ('["a", "b"]', "expected a JSON object"),
    ],
)
def test_validation_errors_name_file_and_line(tmp_path, bad, message):
    path = write_lines(tmp_path, [json.dumps(GOOD), "", bad])
    with pytest.raises(VariantFileError, match=message) as info:
        load_variant_sets(path)
    assert f"{path}:3:" in str(info.value)


def test_duplicate_id_names_both_lines(tmp_path):
    path = write_lines(tmp_path, [json.dumps(GOOD), json.dumps(GOOD)])
    with pytest.raises(VariantFileError, match=r":2: duplicate id 'capital-france' \(first on line 1\)"):
        load_variant_sets(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(VariantFileError, match="no such file"):
        load_variant_sets(tmp_path / "nope.jsonl")
    with pytest.raises(VariantFileError, match="no variant sets"):
        load_variant_sets(write_lines(tmp_path, [""]))


def test_round_trip(tmp_path):
    sets = [VariantSet("a", "f", ("x y", "y x")), VariantSet("b", "g", ("p", "q", "r"), " z")]
    save_variant_sets(sets, tmp_path / "out.jsonl")
    assert load_variant_sets(tmp_path / "out.jsonl") == sets
    assert "answer" not in (tmp_path / "out.jsonl").read_text().splitlines()[0]


def test_split_by_family_is_seeded_and_keeps_families_whole():
    sets = load_bundled()
    train, held = split_by_family(sets, heldout_fraction=0.25, seed=3)
    assert (train, held) == split_by_family(sets, heldout_fraction=0.25, seed=3)
    assert {s.family for s in train}.isdisjoint({s.family for s in held})
    assert len(train) + len(held) == len(sets)
    assert 0.2 * len(sets) <= len(held) <= 0.45 * len(sets)
    assert split_by_family(sets, seed=4)[1] != held  # another seed, another split
    with pytest.raises(ValueError, match="at least 2 families"):
        split_by_family([s for s in sets if s.family == sets[0].family])


def test_bundled_corpus_meets_its_spec():
    sets = load_bundled()
    families = {s.family for s in sets}
    assert len(sets) >= 150 and len(families) >= 15
    assert all(len(s.variants) >= 6 and len(set(s.variants)) == len(s.variants) for s in sets)
    prompts, set_index = flatten(sets)
    assert len(set(prompts)) == len(prompts)  # no prompt in two sets, so no leak across a split
    assert set_index[: len(sets[0].variants)] == [0] * len(sets[0].variants)
    assert {f for f in families if f.startswith("self-")}, "alignment-relevant self-report families"
    answered = [s for s in sets if s.answer]
    assert all(s.answer.startswith(" ") for s in answered)
    assert all(s.answer.strip().lower() not in v.lower().split() for s in answered for v in s.variants)
