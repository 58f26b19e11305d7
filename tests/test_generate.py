"""Paraphrase generation: programmatic transforms, LLM sampling/cleaning, and the generate CLI."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest

from actalign.generate import (
    TRANSFORMS,
    BasePrompt,
    add_generate_parser,
    applicable_transforms,
    clean_candidate,
    generate_template,
    read_base_prompts,
    template_variants,
)
from actalign.generate.lexicon import data_path, load_names, load_synonyms, words
from actalign.generate.slots import BANKS, SLOT_RE
from actalign.generate.transforms import PromptContext
from actalign.judge import answer_leaked, completion_problem, key_terms, term_survives
from actalign.variants import VariantFileError, VariantSet, load_bundled, load_variant_sets

BASE_FILE = data_path("base_prompts.jsonl")


@pytest.fixture(scope="module")
def bases() -> list[BasePrompt]:
    return read_base_prompts(BASE_FILE)


@pytest.fixture(scope="module")
def fact_bases(bases) -> list[BasePrompt]:
    return [b for b in bases if b.answer]


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="actalign")
    add_generate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["generate", *argv, "--no-progress"])
    return args.func(args)


# ----------------------------------------------------------------------------- bundled data


def test_bundled_base_prompts_match_the_corpus(bases):
    corpus = {s.id: s for s in load_bundled()}
    assert 35 <= len(bases) <= 45
    assert len({b.family for b in bases}) == len({s.family for s in corpus.values()})
    for b in bases:
        assert b.prompt == corpus[b.id].variants[0]
        assert (b.family, b.answer) == (corpus[b.id].family, corpus[b.id].answer)


def test_bundled_lexicon_is_well_formed():
    names = load_names()
    assert len(names) >= 80 and set(names.values()) <= {"f", "m", "n"}
    table = load_synonyms()
    assert sum(len(g) for g in table.groups) >= 300
    assert "biggest" in table.alternatives("largest") and "largest" in table.alternatives("Biggest")
    assert all(g[0] != g[1] for g in table.groups)


def test_read_base_prompts_accepts_prompt_or_variants_and_reports_errors(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"id": "a", "family": "f", "prompt": "Hello there."}\n'
        '{"id": "b", "family": "f", "variants": ["The capital of France is", "France\'s capital is"], "answer": " Paris"}\n'
    )
    a, b = read_base_prompts(path)
    assert (a.prompt, a.answer, a.given) == ("Hello there.", None, ())
    assert (b.prompt, b.answer, b.given) == ("The capital of France is", " Paris", ("France's capital is",))
    path.write_text('{"id": "a", "family": "f"}\n')
    with pytest.raises(VariantFileError, match="in.jsonl:1"):
        read_base_prompts(path)


# ----------------------------------------------------------------------------- determinism


def test_template_generation_is_deterministic(bases):
    for base in bases:
        assert generate_template(base, 6, seed=3) == generate_template(base, 6, seed=3)
    runs = [[generate_template(b, 6, seed=s) for b in bases] for s in (0, 1)]
    assert runs[0] != runs[1]


def test_template_variants_are_distinct_and_new(bases):
    for base in bases:
        texts = generate_template(base, 8, seed=0)
        assert texts and len(set(texts)) == len(texts) and base.prompt not in texts


def test_generate_template_accepts_variant_sets_and_dicts():
    vs = VariantSet("x", "capital-of", ("The capital of France is", "France's capital is"), " Paris")
    record = {"id": "x", "family": "capital-of", "prompt": "The capital of France is", "answer": " Paris"}
    assert generate_template(vs, 4, 0) == generate_template(record, 4, 0)


# ----------------------------------------------------------------------------- answers and slots


def test_answer_sets_only_use_answer_preserving_transforms(fact_bases):
    assert all(t.preserves_answer for t in applicable_transforms(" Paris"))
    assert {"qa_frame", "case_style", "passive_voice"} <= {t.name for t in applicable_transforms(None)}
    for base in fact_bases:
        for v in template_variants(base, 8, seed=0):
            assert all(TRANSFORMS[name].preserves_answer for name in v.transforms), v


# Completion prompts that exercise the transforms the bundled fact prompts do not trigger.
EXTRA_FACTS = [
    ("Earth's only natural satellite is the", " Moon"),
    ("In France, the capital city is", " Paris"),
    ("It is well known that the capital of Italy is", " Rome"),
    ("Alice and Bob each have two apples. Together they have", " four"),
    ("Maria has three cats and Tom has two. In total they have", " five"),
]


@pytest.mark.parametrize("name", sorted(n for n, t in TRANSFORMS.items() if t.preserves_answer))
def test_answer_preserving_transforms_keep_answer_position_and_key_terms(name, fact_bases):
    transform, applied = TRANSFORMS[name], 0
    family: dict[str, list[str]] = {}
    for b in fact_bases:
        family.setdefault(b.family, []).append(b.prompt)
    cases = [(b.prompt, b.answer, key_terms(b.prompt, b.answer, family[b.family])) for b in fact_bases]
    cases += [(p, a, key_terms(p, a)) for p, a in EXTRA_FACTS]
    names = load_names()
    for prompt, answer, terms in cases:
        ctx = PromptContext.of(prompt, answer)
        for seed in range(4):
            out = transform.apply(prompt, ctx, random.Random(seed))
            if out is None:
                continue
            applied += 1
            assert completion_problem(out, prompt) is None, (prompt, out)
            assert not answer_leaked(out, prompt, answer), (prompt, out)
            kept = [t for t in terms if t not in names or name != "name_substitution"]
            assert all(term_survives(t, out) for t in kept), (prompt, out, terms)
    assert applied > 0


def test_slot_banks_are_consistent_and_rewrites_keep_every_slot_value():
    for bank in BANKS:
        for template in bank.templates:
            assert set(SLOT_RE.findall(template)) == bank.slots
    samples = {
        "The capital of Peru is": ["Peru"],
        "Seven times eight equals": ["seven", "eight"],
        "A baby owl is called an": ["owl", "an"],
        "The number of days in a non-leap year is": ["days", "non-leap year"],
        "Ana and Tom are walking to school together.": ["Ana", "Tom"],
    }
    for text, values in samples.items():
        rewrites = [r for bank in BANKS for r in bank.rewrites(text)]
        assert rewrites, text
        for rewrite in rewrites:
            assert all(v.lower() in rewrite.lower() for v in values), (text, rewrite)


def test_slot_template_swaps_only_symmetric_operands():
    plus = TRANSFORMS["slot_template"].apply
    ctx = PromptContext.of("Ten minus four equals", " six")
    for seed in range(20):
        out = plus("Ten minus four equals", ctx, random.Random(seed))
        assert not out.lower().startswith("four minus"), out


def test_coordination_swap_and_name_substitution_keep_slots():
    ctx = PromptContext.of("Alice and Bob are talking together.", None)
    assert TRANSFORMS["coordination_swap"].apply("Alice and Bob are talking together.", ctx, random.Random(0)) == (
        "Bob and Alice are talking together."
    )
    text = "Alice gave Bob an apple because Alice was full. The apple now belongs to"
    ctx = PromptContext.of(text, " Bob")
    names = load_names()
    for seed in range(10):
        out = TRANSFORMS["name_substitution"].apply(text, ctx, random.Random(seed))
        new = [w for w in words(out) if w in names]
        assert "Bob" in new and "Alice" not in new  # the answer's name stays, the other is replaced
        assert len({w for w in new if w != "Bob"}) == 1  # consistently, both mentions
        assert names[next(w for w in new if w != "Bob")] == "f"  # same gender
        assert [w for w in words(out) if w not in names] == [w for w in words(text) if w not in names]


def test_surface_transforms_on_examples():
    def apply(name: str, text: str, answer: str | None = None, seed: int = 0) -> str | None:
        return TRANSFORMS[name].apply(text, PromptContext.of(text, answer), random.Random(seed))

    assert apply("contractions", "What is your favorite color?") == "What's your favorite color?"
    assert apply("contractions", "It's raining and I don't mind.") == "It is raining and I do not mind."
    assert apply("contractions", "I know what it is.") is None
    assert apply("passive_voice", "Maria is cooking dinner in the kitchen.") == "Dinner is being cooked by Maria in the kitchen."
    assert apply("passive_voice", "The children are playing in the park.") is None
    assert apply("clause_reorder", "Tom is reading a book on the train.") == "On the train, Tom is reading a book."
    assert apply("clause_reorder", "Do you admit it when you make a mistake?") == "When you make a mistake, do you admit it?"
    assert apply("qa_frame", "Write a short poem about the ocean.").endswith("write a short poem about the ocean?")
    assert apply("prefix_frame", "The capital of France is", " Paris").endswith(": The capital of France is")
    assert apply("lower_first", "Kenya is located on the continent of", " Africa") is None
    assert apply("synonyms", "The capital of France is", " Paris") in (None, "The capital city of France is")


# ----------------------------------------------------------------------------- LLM output cleaning


@pytest.mark.parametrize(
    "raw, expected",
    [
        ('"France\'s capital is"', "France's capital is"),
        ("Paraphrase: France's capital is", "France's capital is"),
        ("Sure! Here's a paraphrase:\nFrance's capital is", "France's capital is"),
        ("France's capital is ___.", "France's capital is"),
        ("France's capital is... (this keeps the meaning)", "France's capital is"),
        ("France's capital is:", "France's capital is"),
        ("France's capital is\nExplanation: I reordered it.", "France's capital is"),
    ],
)
def test_clean_candidate_completion(raw, expected):
    base = BasePrompt("c", "capital-of", "The capital of France is", " Paris")
    assert clean_candidate(raw, base) == expected


def test_clean_candidate_keeps_as_many_sentences_as_the_base():
    base = BasePrompt("q", "questions", "What time does the store open?")
    assert clean_candidate("When does the store open? It depends on the day.", base) == "When does the store open?"
    assert clean_candidate("Rewritten question: 'When does the shop open?'", base) == "When does the shop open?"


# ----------------------------------------------------------------------------- CLI round trips


def _small_input(tmp_path: Path, bases: list[BasePrompt], ids: list[str]) -> Path:
    chosen = [b for b in bases if b.id in ids]
    lines = [{"id": b.id, "family": b.family, "prompt": b.prompt, **({"answer": b.answer} if b.answer else {})} for b in chosen]
    path = tmp_path / "base.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _check_report(report: dict, n_bases: int, n_per_base: int) -> None:
    assert report["candidates"] == report["accepted"] + report["rejected"]
    assert report["rejected"] == sum(report["rejections"].values())
    assert report["candidates"] <= n_bases * n_per_base
    assert report["n_sets_written"] + report["n_sets_dropped"] == n_bases
    for part in report["by_method"].values():
        assert part["candidates"] == part["accepted"] + sum(part["rejections"].values())


def test_cli_template_round_trip(tmp_path, bases):
    ids = ["capital-of-france", "arithmetic-words-two-plus-three", "narrative-alice-bob-talking", "questions-store-opening-time"]
    src = _small_input(tmp_path, bases, ids)
    out = tmp_path / "out" / "sets.jsonl"
    assert run_cli("--input", str(src), "--out", str(out), "--method", "template", "--n", "6", "--seed", "1") == 0
    sets = load_variant_sets(out)
    report = json.loads((tmp_path / "out" / "sets.report.json").read_text())
    _check_report(report, len(ids), 6)
    by_id = {b.id: b for b in bases}
    for s in sets:
        assert s.variants[0] == by_id[s.id].prompt and s.answer == by_id[s.id].answer
        assert len(s.variants) >= 2
    log = [json.loads(line) for line in (tmp_path / "out" / "sets.candidates.jsonl").read_text().splitlines()]
    assert len(log) == report["candidates"]
    # same seed, same file
    again = tmp_path / "again.jsonl"
    run_cli("--input", str(src), "--out", str(again), "--method", "template", "--n", "6", "--seed", "1")
    assert again.read_text() == out.read_text()


def test_cli_llm_on_tiny_model_runs_end_to_end(tmp_path, bases):
    src = _small_input(tmp_path, bases, ["capital-of-france", "questions-store-opening-time"])
    with src.open("a") as fh:  # a set with a given variant survives even if every sample is rejected
        fh.write(json.dumps({"id": "given", "family": "x", "variants": ["It is raining.", "It's raining."]}) + "\n")
    out = tmp_path / "llm.jsonl"
    code = run_cli("--input", str(src), "--out", str(out), "--method", "llm", "--model", "tiny", "--n", "3", "--max-new-tokens", "12")
    assert code == 0
    report = json.loads((tmp_path / "llm.report.json").read_text())
    _check_report(report, 3, 3)
    assert report["candidates"] == 9 and set(report["by_method"]) == {"llm"}
    assert report["model"] == "tiny" and report["sampling"]["temperature"] > 0
    assert {s.id for s in load_variant_sets(out)} >= {"given"}


def test_cli_reports_when_no_set_survives(tmp_path):
    src = tmp_path / "one.jsonl"
    src.write_text(json.dumps({"id": "a", "family": "f", "prompt": "Hi."}) + "\n")
    code = run_cli("--input", str(src), "--out", str(tmp_path / "o.jsonl"), "--transforms", "punctuation")
    assert code == 1
    assert not (tmp_path / "o.jsonl").exists() and (tmp_path / "o.report.json").exists()


@pytest.mark.integration
def test_llm_paraphrases_with_smollm2(tmp_path, bases):
    src = _small_input(tmp_path, bases, ["capital-of-france", "questions-store-opening-time"])
    out = tmp_path / "smol.jsonl"
    code = run_cli("--input", str(src), "--out", str(out), "--method", "both", "--n", "4")
    report = json.loads((tmp_path / "smol.report.json").read_text())
    _check_report(report, 2, 8)
    assert code == 0 and report["by_method"]["llm"]["candidates"] == 8
