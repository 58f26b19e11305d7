"""Similarity measures: reference formulas, invariances, minibatch convergence, the large-N path."""

import math
import warnings

import numpy as np
import pytest
import torch

from reference_formulas import unbiased_hsic
from actalign import measures
from actalign.measures import (
    MEASURES,
    GramTooLarge,
    cknna,
    get_measure,
    gram_limit,
    layer_similarity,
    linear_cka,
    linear_cka_space,
    linear_cka_unbiased,
    minibatch_cka,
    mutual_knn,
    procrustes,
    rbf_cka,
    similarity,
    svcca,
)
from actalign.metrics import DegenerateWarning
from actalign.metrics import linear_cka as metrics_linear_cka
from actalign.metrics import linear_cka_unbiased as metrics_linear_cka_unbiased

F64 = torch.float64
# small options so every measure is meaningful on 40-60 rows
OPTIONS = {"mutual_knn": {"k": 5}, "cknna": {"k": 5}, "svcca": {"keep": 5}, "minibatch_cka": {"batch_size": 16}}


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def rotation(d, seed=1):
    return torch.linalg.qr(randn(d, d, seed=seed)).Q


def related(n=48, d1=12, d2=9, noise=0.7, seed=0):
    """x and a noisy linear image of it in another width: a pair with similarity strictly in (0, 1)."""
    x = randn(n, d1, seed=seed)
    return x, x @ randn(d1, d2, seed=seed + 1) + noise * randn(n, d2, seed=seed + 2)


# ----------------------------------------------------------------------------- references (numpy)


def ref_hsic_biased(k, l):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h)


ref_hsic_unbiased = unbiased_hsic


def ref_cka(k, l, hsic):
    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


def ref_rbf(x, frac):
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    dists = np.sqrt(sq[np.triu_indices(len(x), 1)])
    sigma = frac * np.sort(dists)[(len(dists) - 1) // 2]  # lower median, as torch.median
    return np.exp(-sq / (2 * sigma**2))


def ref_knn(x, k):
    """Platonic-rep style: cosine, self excluded, top k by sorting."""
    f = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = f @ f.T
    np.fill_diagonal(sims, -1e8)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def ref_mutual_knn(x, y, k):
    a, b = ref_knn(x, k), ref_knn(y, k)
    return np.mean([len(set(a[i]) & set(b[i])) / k for i in range(len(x))])


def ref_cknna(x, y, k):
    """Huh et al. (2024) reference implementation, in numpy, without its +1e-6 in the denominator."""
    fx = x / np.linalg.norm(x, axis=1, keepdims=True)
    fy = y / np.linalg.norm(y, axis=1, keepdims=True)
    kk, ll = fx @ fx.T, fy @ fy.T
    n = len(x)

    def mask_of(kernel):
        hat = kernel.copy()
        np.fill_diagonal(hat, -np.inf)
        mask = np.zeros((n, n))
        np.put_along_axis(mask, np.argsort(-hat, axis=1)[:, :k], 1.0, axis=1)
        return mask

    def sim(a, b):
        mask = mask_of(a) * mask_of(b)
        return ref_hsic_unbiased(mask * a, mask * b)

    return sim(kk, ll) / math.sqrt(sim(kk, kk) * sim(ll, ll))


def ref_procrustes(x, y):
    """Solve min_R ||X - Y R||_F over orthogonal R explicitly (normalized, centered inputs, d1 = d2)."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    u, _, vt = np.linalg.svd(y.T @ x)
    return np.linalg.norm(x - y @ (u @ vt)) ** 2


def ref_svcca(x, y, keep):
    """Top-``keep`` principal components, then classical CCA by whitening the covariances."""

    def reduce(a):
        a = a - a.mean(0)
        _, _, vt = np.linalg.svd(a, full_matrices=False)
        return a @ vt[:keep].T

    a, b = reduce(x), reduce(y)

    def inv_sqrt(c):
        w, v = np.linalg.eigh(c)
        return v @ np.diag(w**-0.5) @ v.T

    m = inv_sqrt(a.T @ a) @ (a.T @ b) @ inv_sqrt(b.T @ b)
    return np.linalg.svd(m, compute_uv=False).mean()


# ----------------------------------------------------------------------------- agreement with references


@pytest.mark.parametrize("space", ["gram", "feature"])
def test_linear_cka_matches_the_centering_matrix_formula(space):
    x, y = related()
    k, l = (x @ x.T).numpy(), (y @ y.T).numpy()
    assert float(linear_cka(x, y, space=space)) == pytest.approx(ref_cka(k, l, ref_hsic_biased), abs=1e-12)
    assert float(linear_cka_unbiased(x, y, space=space)) == pytest.approx(ref_cka(k, l, ref_hsic_unbiased), abs=1e-12)


@pytest.mark.parametrize("n", [20, 300])  # n < d and n > d
def test_gram_and_feature_space_give_the_same_value_and_agree_with_metrics(n):
    """Also covers the wide (d >= 256) symmetric-block path of the feature space."""
    x, y = randn(3, n, 300, seed=3), randn(3, n, 48, seed=4)
    y = y + x[..., :48]
    for estimator, reference in ((linear_cka, metrics_linear_cka), (linear_cka_unbiased, metrics_linear_cka_unbiased)):
        gram_value, feature_value = estimator(x, y, space="gram"), estimator(x, y, space="feature")
        assert gram_value.shape == (3,) and gram_value.dtype == F64
        torch.testing.assert_close(gram_value, feature_value, atol=1e-9, rtol=0)
        torch.testing.assert_close(estimator(x, y), reference(x, y), atol=1e-9, rtol=0)


def test_the_cheaper_space_is_chosen_and_the_feature_space_builds_no_gram():
    assert linear_cka_space(100, 576, 576) == "gram"
    assert linear_cka_space(4096, 576, 576) == "feature"
    x, y = randn(200, 16), randn(200, 16, seed=1)
    with gram_limit(max_side=1) as stats:  # any sample x sample matrix would raise
        linear_cka(x, y)
    assert stats.count == 0
    with gram_limit(max_side=1), pytest.raises(GramTooLarge):
        linear_cka(x, y, space="gram")


@pytest.mark.parametrize("frac", [0.4, 0.8, 1.5])
def test_rbf_cka_matches_explicit_kernels(frac):
    x, y = related()
    k, l = ref_rbf(x.numpy(), frac), ref_rbf(y.numpy(), frac)
    assert float(rbf_cka(x, y, sigma_frac=frac)) == pytest.approx(ref_cka(k, l, ref_hsic_biased), abs=1e-10)
    assert float(rbf_cka(x, y, sigma_frac=frac, unbiased=True)) == pytest.approx(ref_cka(k, l, ref_hsic_unbiased), abs=1e-10)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_mutual_knn_matches_reference(k):
    x, y = related(n=60)
    assert float(mutual_knn(x, y, k=k)) == pytest.approx(ref_mutual_knn(x.numpy(), y.numpy(), k), abs=1e-12)


@pytest.mark.parametrize("k", [3, 10])
def test_cknna_matches_reference(k):
    x, y = related(n=60)
    assert float(cknna(x, y, k=k)) == pytest.approx(ref_cknna(x.numpy(), y.numpy(), k), abs=1e-10)


def test_cknna_with_every_neighbour_is_unbiased_cka_of_unit_rows():
    x, y = related(n=40)
    unit = lambda a: a / a.norm(dim=-1, keepdim=True)
    assert float(cknna(x, y, k=39)) == pytest.approx(float(linear_cka_unbiased(unit(x), unit(y))), abs=1e-12)


@pytest.mark.parametrize("n", [8, 60])  # the n < d path (QR factors) and the d x d path
def test_procrustes_matches_the_explicit_orthogonal_solution(n):
    x, y = related(n=n, d1=12, d2=12)
    assert float(procrustes(x, y)) == pytest.approx(ref_procrustes(x.numpy(), y.numpy()), abs=1e-10)


def test_svcca_matches_whitened_cca():
    x, y = related(n=80, d1=12, d2=10)
    assert float(svcca(x, y, keep=4)) == pytest.approx(ref_svcca(x.numpy(), y.numpy(), 4), abs=1e-10)


def test_svcca_variance_threshold_keeps_the_dominant_directions():
    x = randn(100, 10) * torch.tensor([10.0, 8.0, 6.0] + [0.01] * 7, dtype=F64)
    basis = measures._top_directions(x, 0.99)
    assert basis.shape == (100, 3)


# ----------------------------------------------------------------------------- properties of every measure


def call(name, x, y):
    return float(similarity(name, x, y, **OPTIONS.get(name, {})))


def identical_value(name):
    return 0.0 if MEASURES[name].kind == "distance" else 1.0


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_a_representation_compared_with_itself_is_identical(name):
    x = randn(48, 12)
    assert call(name, x, x) == pytest.approx(identical_value(name), abs=1e-9)


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_invariant_to_rotation_and_isotropic_scaling(name):
    x, y = related()
    base = call(name, x, y)
    assert call(name, 3.5 * x @ rotation(12), y) == pytest.approx(base, abs=1e-9)
    assert call(name, x, 0.2 * y @ rotation(9, seed=5)) == pytest.approx(base, abs=1e-9)
    assert call(name, 2.0 * x @ rotation(12), y) == pytest.approx(base, abs=1e-9)


@pytest.mark.parametrize("name", sorted(n for n, m in MEASURES.items() if m.symmetric))
def test_symmetric(name):
    x, y = related()
    assert call(name, x, y) == pytest.approx(call(name, y, x), abs=1e-10)


@pytest.mark.parametrize("name", sorted(n for n, m in MEASURES.items() if m.kind == "similarity"))
def test_similarities_are_bounded_and_float64(name):
    x, y = related()
    value = similarity(name, x.float(), y.float(), **OPTIONS.get(name, {}))
    assert value.dtype == F64 and value.shape == ()
    assert -1.0 <= float(value) <= 1.0


@pytest.mark.parametrize("name", sorted(n for n in MEASURES if n not in ("mutual_knn",)))
def test_zero_variance_gives_nan_with_a_warning(name):
    x = randn(20, 5)
    constant = torch.ones(20, 4, dtype=F64)
    with pytest.warns(DegenerateWarning):
        value = similarity(name, x, constant, **{**OPTIONS.get(name, {}), **({"k": 3} if name == "cknna" else {})})
    assert math.isnan(float(value))


def test_unknown_measure_and_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="unknown measure"):
        get_measure("cosine")
    with pytest.raises((ValueError, TypeError)):  # jaxtyping's TypeCheckError is a TypeError
        similarity("procrustes", randn(10, 3), randn(11, 3))
    with pytest.raises(ValueError, match=r"\[n, d1\]"):
        similarity("linear_cka", randn(2, 10, 3), randn(2, 10, 3))


# ----------------------------------------------------------------------------- specific known answers


def test_mutual_knn_of_a_set_with_itself_is_one_and_chance_for_independent_data():
    x = randn(400, 16)
    assert float(mutual_knn(x, x, k=10)) == 1.0
    chance = float(mutual_knn(x, randn(400, 16, seed=9), k=10))
    assert chance < 0.1  # k / (n - 1) = 0.025 expected


def test_procrustes_distance_is_zero_under_rotation_even_into_a_wider_space():
    x = randn(50, 8)
    assert float(procrustes(x, x @ rotation(8))) == pytest.approx(0.0, abs=1e-12)
    embed = torch.linalg.qr(randn(20, 20, seed=3)).Q[:8]  # orthonormal rows: an isometry R^8 -> R^20
    assert float(procrustes(x, 4.0 * x @ embed + 1.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(procrustes(x, randn(50, 8, seed=4))) > 0.5


# ----------------------------------------------------------------------------- minibatch CKA


def test_minibatch_cka_with_one_batch_is_the_full_unbiased_cka():
    x, y = related(n=200)
    full = float(linear_cka_unbiased(x, y))
    assert float(minibatch_cka(x, y, batch_size=200)) == pytest.approx(full, abs=1e-12)
    assert float(minibatch_cka(x, y, batch_size=10_000)) == pytest.approx(full, abs=1e-12)


def test_minibatch_cka_converges_to_full_unbiased_cka_as_batches_cover_the_data():
    x, y = related(n=120, noise=1.5)
    full = float(linear_cka_unbiased(x, y))

    def mean_error(batch_size, epochs):
        """Mean |minibatch - full| over 6 independently seeded runs."""
        return np.mean([abs(float(minibatch_cka(x, y, batch_size=batch_size, epochs=epochs, seed=s)) - full) for s in range(6)])

    # more random partitions: the average of the batch U-statistics tends to the full-data one
    # (error ~ 1/sqrt(epochs): 100 epochs should cut it ~10x)
    one_pass, many_passes = mean_error(30, 1), mean_error(30, 100)
    assert many_passes < one_pass / 3 and many_passes < 0.005
    # bigger batches cover more of the data: closer to the full value
    assert mean_error(60, 1) < mean_error(8, 1)


def test_minibatch_rbf_cka_with_one_batch_is_unbiased_rbf_cka():
    x, y = related(n=64)
    assert float(minibatch_cka(x, y, batch_size=64, kernel="rbf")) == pytest.approx(float(rbf_cka(x, y, unbiased=True)), abs=1e-12)


def test_minibatch_batches_partition_the_rows_each_epoch():
    batches = measures.minibatches(103, 10, epochs=2, seed=0)
    assert len(batches) == 20 and min(len(b) for b in batches) >= 10
    assert sorted(torch.cat(batches[:10]).tolist()) == list(range(103))


def test_large_n_minibatch_path_never_builds_an_n_by_n_matrix():
    n, d, batch = 50_000, 576, 512
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = x[:, torch.randperm(d, generator=g)] + torch.randn(n, d, generator=g)
    limit = 2 * batch  # batches hold between batch and 2 batch rows
    with gram_limit(max_side=limit) as stats:
        value = float(minibatch_cka(x, y, batch_size=batch))
        with pytest.raises(GramTooLarge):  # the same guard stops a full Gram before allocating it
            linear_cka(x, y, space="gram")
    assert stats.count > 0 and stats.largest <= limit**2
    with gram_limit(max_side=1):  # the full unbiased value, from d x d covariances only
        full = float(linear_cka_unbiased(x, y))
    assert value == pytest.approx(full, abs=0.02)
    assert full == pytest.approx(0.5, abs=0.01)  # population value: var(x) / (var(x) + var(noise))


# ----------------------------------------------------------------------------- layer x layer


def test_layer_similarity_matches_pairwise_and_chunking_does_not_matter():
    a, b = randn(30, 5, 8), randn(30, 4, 6, seed=1)
    b[:, 0] = a[:, 2, :6]
    for name in ("linear_cka", "linear_cka_unbiased"):
        pairwise = torch.tensor([[float(similarity(name, a[:, i], b[:, j])) for j in range(4)] for i in range(5)], dtype=F64)
        fast = layer_similarity(a, b, name)
        assert fast.shape == (5, 4)
        torch.testing.assert_close(fast, pairwise, atol=1e-12, rtol=0)
        torch.testing.assert_close(layer_similarity(a, b, name, max_gram_elements=2 * 30 * 30), pairwise, atol=1e-12, rtol=0)
        torch.testing.assert_close(layer_similarity(a, b, name, max_gram_elements=100), pairwise, atol=1e-12, rtol=0)
    self_map = layer_similarity(a, a)
    torch.testing.assert_close(self_map.diagonal(), torch.ones(5, dtype=F64))
    torch.testing.assert_close(self_map, self_map.T)


def test_layer_similarity_with_another_measure():
    a = randn(25, 3, 6)
    distances = layer_similarity(a, a, "procrustes")
    torch.testing.assert_close(distances.diagonal(), torch.zeros(3, dtype=F64), atol=1e-12, rtol=0)
    assert float(layer_similarity(a, a, "mutual_knn", k=3)[0, 0]) == 1.0


def test_layer_similarity_accepts_float32_captures():
    a = randn(20, 3, 8).float()
    assert layer_similarity(a, a).dtype == F64


def test_no_warnings_on_ordinary_input():
    x, y = related()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in MEASURES:
            call(name, x, y)
