"""Metric invariances and reference values (float64 everywhere)."""

import math
import warnings

import numpy as np
import pytest
import torch

from reference_formulas import unbiased_hsic

from actalign.metrics import (
    DegenerateWarning,
    answer_metrics,
    bootstrap_gap_ci,
    center,
    cosine_pair_sums,
    linear_cka,
    linear_cka_unbiased,
    make_structure,
    symmetric_kl,
    top1_agreement,
    view_cka,
)

F64 = torch.float64


def random_rotation(d: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return q


def clustered(n_sets=12, per_set=5, layers=3, d=16, noise=0.5, seed=0):
    """Prompts = set centre + noise: a known positive within-set structure."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_sets, layers, d, generator=g, dtype=F64)
    set_index = torch.arange(n_sets).repeat_interleave(per_set)
    acts = centres[set_index] + noise * torch.randn(len(set_index), layers, d, generator=g, dtype=F64)
    families = [f"fam{s % 4}" for s in range(n_sets)]
    return acts, set_index, families


def reference_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019 with an explicit centering matrix H."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)
    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


def test_cka_matches_reference_formulas():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 7, generator=g, dtype=F64), torch.randn(20, 5, generator=g, dtype=F64)
    assert float(linear_cka(x, y)) == pytest.approx(reference_cka(x.numpy(), y.numpy()), abs=1e-12)
    k, l = (x @ x.T).numpy(), (y @ y.T).numpy()
    expected = unbiased_hsic(k, l) / math.sqrt(unbiased_hsic(k, k) * unbiased_hsic(l, l))
    assert float(linear_cka_unbiased(x, y)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("estimator", [linear_cka, linear_cka_unbiased])
def test_cka_invariant_to_rotation_and_isotropic_scaling(estimator):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 8, generator=g, dtype=F64)
    y = x @ torch.randn(8, 8, generator=g, dtype=F64) + 0.3 * torch.randn(30, 8, generator=g, dtype=F64)
    base = float(estimator(x, y))
    assert float(estimator(x @ random_rotation(8, 3), y)) == pytest.approx(base, abs=1e-10)
    assert float(estimator(x, 7.5 * y @ random_rotation(8, 4))) == pytest.approx(base, abs=1e-10)
    assert float(estimator(x + 3.0, y)) == pytest.approx(base, abs=1e-10)  # translation too (centering)


@pytest.mark.parametrize("estimator", [linear_cka, linear_cka_unbiased])
def test_self_cka_is_one(estimator):
    x = torch.randn(25, 6, dtype=F64)
    assert float(estimator(x, x)) == pytest.approx(1.0, abs=1e-12)


def test_unbiased_cka_near_zero_on_independent_data_biased_is_not():
    g = torch.Generator().manual_seed(5)
    n, d = 40, 200  # d >> n: the regime where the biased estimator is badly inflated
    biased, unbiased = [], []
    for _ in range(20):
        x, y = torch.randn(n, d, generator=g, dtype=F64), torch.randn(n, d, generator=g, dtype=F64)
        biased.append(float(linear_cka(x, y)))
        unbiased.append(float(linear_cka_unbiased(x, y)))
    assert abs(np.mean(unbiased)) < 0.02
    assert np.mean(biased) > 0.5


def test_similarities_never_exceed_one():
    acts, set_index, families = clustered(noise=0.0)  # identical prompts within sets: cosine exactly 1
    structure = make_structure(set_index, families)
    within, null = cosine_pair_sums(acts, structure).means()
    assert float(within.max()) <= 1.0
    assert float(within.min()) == pytest.approx(1.0, abs=1e-12)
    cka = view_cka(acts, set_index)
    assert float(cka["cka"].max()) <= 1.0 and float(cka["cka_unbiased"].max()) <= 1.0


def test_cosine_stats_invariant_to_rotation_and_per_prompt_scaling():
    acts, set_index, families = clustered()
    structure = make_structure(set_index, families, seed=3)
    base_w, base_n = cosine_pair_sums(acts, structure).means()
    scales = torch.rand(acts.shape[0], 1, 1, dtype=F64) * 10 + 0.1
    rotated = torch.einsum("nld,de->nle", acts, random_rotation(acts.shape[-1], 9)) * scales
    w, n = cosine_pair_sums(rotated, structure).means()
    torch.testing.assert_close(w, base_w)
    torch.testing.assert_close(n, base_n)


def test_permuting_prompts_inside_a_set_changes_nothing():
    acts, set_index, families = clustered()
    structure = make_structure(set_index, families, seed=0)
    g = torch.Generator().manual_seed(11)
    order = torch.cat([torch.nonzero(set_index == s).flatten()[torch.randperm(5, generator=g)] for s in range(12)])
    for transform in (lambda a: a, center):
        before = cosine_pair_sums(transform(acts), structure)
        after = cosine_pair_sums(transform(acts[order]), structure)
        torch.testing.assert_close(before.within, after.within)
        torch.testing.assert_close(before.null, after.null)
    logprobs = torch.log_softmax(torch.randn(len(set_index), 30, dtype=F64), -1)
    assert top1_agreement(logprobs, structure) == pytest.approx(top1_agreement(logprobs[order], structure))
    assert symmetric_kl(logprobs, structure) == pytest.approx(symmetric_kl(logprobs[order], structure))


def test_within_cosine_matches_explicit_pair_loop():
    acts, set_index, families = clustered(n_sets=5, per_set=4, layers=2, d=6)
    structure = make_structure(set_index, families, seed=1)
    within, null = cosine_pair_sums(acts, structure).means()
    unit = acts / acts.norm(dim=-1, keepdim=True)
    pairs = [(a, b) for a in range(len(set_index)) for b in range(a + 1, len(set_index)) if set_index[a] == set_index[b]]
    expected = torch.stack([(unit[a] * unit[b]).sum(-1) for a, b in pairs]).mean(0)
    torch.testing.assert_close(within, expected)
    draws = []
    for s, t in structure.null_sets.tolist():
        rows_s, rows_t = torch.nonzero(set_index == s).flatten(), torch.nonzero(set_index == t).flatten()
        draws.append(torch.stack([(unit[a] * unit[b]).sum(-1) for a in rows_s for b in rows_t]).mean(0))
    torch.testing.assert_close(null, torch.stack(draws).mean(0))
    assert structure.null_sets.shape[0] == len(pairs)  # an equal number of null draws


def test_null_pairs_cross_families_and_are_seeded():
    _, set_index, families = clustered()
    a, b = make_structure(set_index, families, seed=4), make_structure(set_index, families, seed=4)
    assert torch.equal(a.null_sets, b.null_sets)
    assert all(families[s] != families[t] for s, t in a.null_sets.tolist())
    one_family = make_structure(set_index, ["same"] * 12, seed=4)
    assert all(s != t for s, t in one_family.null_sets.tolist())


def test_gap_positive_for_clustered_data_and_ci_brackets_it():
    acts, set_index, families = clustered(n_sets=30)
    structure = make_structure(set_index, [f"f{s % 5}" for s in range(30)])
    sums = cosine_pair_sums(center(acts), structure)
    within, null = sums.means()
    ci = bootstrap_gap_ci(sums, n_boot=500)
    gap = within - null
    assert bool((ci[:, 0] > 0).all())
    assert bool(((ci[:, 0] <= gap) & (gap <= ci[:, 1])).all())


def test_gap_ci_covers_zero_for_unstructured_data():
    g = torch.Generator().manual_seed(8)
    set_index = torch.arange(40).repeat_interleave(4)
    acts = torch.randn(160, 2, 32, generator=g, dtype=F64)
    structure = make_structure(set_index, [f"f{s % 5}" for s in range(40)])
    ci = bootstrap_gap_ci(cosine_pair_sums(center(acts), structure), n_boot=500)
    assert bool(((ci[:, 0] < 0) & (ci[:, 1] > 0)).all())


def test_degenerate_inputs_warn_or_raise_never_silent():
    x = torch.zeros(10, 4, dtype=F64)
    with pytest.warns(DegenerateWarning):
        assert math.isnan(float(linear_cka(x, torch.randn(10, 4, dtype=F64))))
    with pytest.raises(ValueError, match="at least 4"):
        linear_cka_unbiased(torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64))
    acts, set_index, families = clustered(n_sets=3, per_set=2)
    acts[0] = 0.0
    with pytest.warns(DegenerateWarning):
        cosine_pair_sums(acts, make_structure(set_index, families))
    with pytest.raises(ValueError, match="at least 2"):
        make_structure(torch.tensor([0, 1, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="at least 2 variant sets"):
        make_structure(torch.tensor([0, 0]), ["a"])


def test_output_metrics_reference_values():
    # two sets of two prompts; vocab 3
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]], dtype=F64)
    lp = probs.log()
    structure = make_structure(torch.tensor([0, 0, 1, 1]), ["a", "b"])
    within, null = top1_agreement(lp, structure)
    assert within == pytest.approx(0.5)  # set 0 agrees (0, 0); set 1 does not (2, 1)
    assert null == pytest.approx(0.0)  # set 0 picks {0}, set 1 picks {2, 1}
    kl = lambda p, q: float((p * (p / q).log()).sum())
    sym = lambda a, b: kl(probs[a], probs[b]) + kl(probs[b], probs[a])
    kl_within, kl_null = symmetric_kl(lp, structure)
    assert kl_within == pytest.approx((sym(0, 1) + sym(2, 3)) / 2)
    cross = np.mean([sym(a, b) for a in (0, 1) for b in (2, 3)])
    assert kl_null == pytest.approx(cross)
    with pytest.warns(DegenerateWarning, match="fewer than 2 distinct answer tokens"):
        assert answer_metrics(lp, structure, [0, 2]) is None  # one candidate per family: nothing to choose
    structure_one_family = make_structure(torch.tensor([0, 0, 1, 1]), ["a", "a"])
    metrics = answer_metrics(lp, structure_one_family, [0, 2])
    # candidates {0, 2}: prompts pick 0, 0, 2, 2 -> all correct; pairs agree in both sets
    assert metrics["answer_accuracy"] == pytest.approx(1.0)
    assert metrics["answer_agreement"] == pytest.approx(1.0)


def test_paired_delta_ci_positive_for_an_improvement_and_zero_for_no_change():
    from actalign.metrics import paired_gap_delta_ci

    acts, set_index, families = clustered(n_sets=30, noise=1.0, seed=2)
    structure = make_structure(set_index, [f"f{s % 5}" for s in range(30)])
    g = torch.Generator().manual_seed(3)
    centres = torch.stack([acts[set_index == s].mean(0) for s in range(30)])[set_index]
    improved = acts + 0.25 * (centres - acts) + 1e-3 * torch.randn(acts.shape, generator=g, dtype=F64)  # each variant moves toward its set
    before, after = cosine_pair_sums(center(acts), structure), cosine_pair_sums(center(improved), structure)
    delta = paired_gap_delta_ci(before, after, n_boot=500)
    assert bool((delta[:, 0] > 0).all())
    same = paired_gap_delta_ci(before, before, n_boot=200)
    assert torch.allclose(same, torch.zeros_like(same))
