"""Representation similarity measures behind one registry, all float64 and jaxtyped.

Every measure has the call shape ``measure(x [n, d1], y [n, d2], **options) -> float64 scalar``;
rows of ``x`` and ``y`` are the same n inputs seen by two representations (two layers, two models,
two variant views). ``MEASURES`` maps names to :class:`Measure` entries; ``similarity(name, x, y)``
calls one and ``layer_similarity`` fills a layer x layer matrix.

==================== ===================================================================================
name                 what it is
==================== ===================================================================================
linear_cka           biased linear CKA (Kornblith et al. 2019), in the cheaper of Gram / feature space
linear_cka_unbiased  linear CKA from the unbiased HSIC estimator (Song et al. 2012), same two spaces
rbf_cka              CKA with an RBF kernel, bandwidth = ``sigma_frac`` x median pairwise distance
minibatch_cka        unbiased HSIC accumulated over minibatches (Nguyen et al. 2021): no N x N matrix
mutual_knn           mean overlap of the k nearest neighbours (cosine) in both spaces (Huh et al. 2024)
cknna                CKA restricted to mutual k-NN pairs (Huh et al. 2024)
procrustes           orthogonal Procrustes *distance* in [0, 2] (Ding et al. 2021): 0 = same up to rotation
svcca                mean canonical correlation after SVD to ``keep`` variance (Raghu et al. 2017)
==================== ===================================================================================

All except ``procrustes`` are similarities (1 = same up to the measure's invariances). Degenerate
input (zero variance) gives NaN with a :class:`~actalign.metrics.DegenerateWarning`, as in
``actalign.metrics``.

Sample x sample matrices (Gram and RBF kernels, neighbour similarity blocks) are built through one
helper that :func:`gram_limit` can watch: inside ``with gram_limit(max_side) as stats`` any such matrix
with more than ``max_side**2`` elements raises :class:`GramTooLarge` *before* it is allocated, and
``stats.largest`` records the largest one built. That is how tests assert which code path ran.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import einops
import torch
from beartype import beartype as typechecker
from jaxtyping import Float, jaxtyped
from torch import Tensor

from actalign.metrics import DegenerateWarning, _ucenter_gram, center_gram

F64 = torch.float64
Scalar = Float[Tensor, ""]


# ----------------------------------------------------------------------------- pairwise-matrix guard


class GramTooLarge(RuntimeError):
    """A sample x sample matrix larger than the active :func:`gram_limit` was about to be built."""


@dataclass
class GramStats:
    """Sample x sample matrices built inside a :func:`gram_limit` block."""

    max_side: int | None
    largest: int = 0  # elements of the largest matrix built
    count: int = 0


_ACTIVE_LIMIT: GramStats | None = None


@contextmanager
def gram_limit(max_side: int | None = None) -> Iterator[GramStats]:
    """Watch (and, given ``max_side``, forbid) sample x sample matrices with more than ``max_side**2``
    elements built by this module; yields the running :class:`GramStats`."""
    global _ACTIVE_LIMIT
    previous, _ACTIVE_LIMIT = _ACTIVE_LIMIT, GramStats(max_side)
    try:
        yield _ACTIVE_LIMIT
    finally:
        _ACTIVE_LIMIT = previous


def _reserve_pairwise(rows: int, cols: int) -> None:
    """Record (or refuse) a ``rows x cols`` sample-pair matrix before it is allocated."""
    stats = _ACTIVE_LIMIT
    if stats is None:
        return
    if stats.max_side is not None and rows * cols > stats.max_side**2:
        raise GramTooLarge(f"a {rows} x {cols} sample-pair matrix exceeds the limit of {stats.max_side}^2 elements")
    stats.largest = max(stats.largest, rows * cols)
    stats.count += 1


def gram(x: Tensor) -> Tensor:
    """``x @ x^T`` in float64 for ``x [*batch, n, d]`` (watched by :func:`gram_limit`)."""
    _reserve_pairwise(x.shape[-2], x.shape[-2])
    x = x.to(F64)
    return x @ x.transpose(-1, -2)


# ----------------------------------------------------------------------------- shared helpers


def _centered(x: Tensor) -> Tensor:
    """float64 copy of ``x [*batch, n, d]`` with the mean row subtracted."""
    x = x.to(F64)
    return x - x.mean(-2, keepdim=True)


def _ratio(xy: Tensor, xx: Tensor, yy: Tensor) -> Tensor:
    """``xy / sqrt(xx yy)`` clamped to [-1, 1]; NaN with a warning where a variance term is 0."""
    denom = torch.sqrt(xx * yy)
    if bool((denom <= 0).any()):
        warnings.warn("similarity of a representation with zero variance is undefined; reported as NaN", DegenerateWarning, stacklevel=3)
    return (xy / torch.where(denom > 0, denom, torch.nan)).clamp(-1.0, 1.0)


def _check_rows(x: Tensor, y: Tensor, minimum: int = 2) -> None:
    if x.shape[-2] != y.shape[-2]:
        raise ValueError(f"x and y must have the same rows (inputs), got {x.shape[-2]} and {y.shape[-2]}")
    if x.shape[-2] < minimum:
        raise ValueError(f"this measure needs at least {minimum} rows, got {x.shape[-2]}")


# ----------------------------------------------------------------------------- linear CKA


def linear_cka_space(n: int, d1: int, d2: int) -> str:
    """``"gram"`` or ``"feature"``: whichever needs fewer multiply-adds for linear CKA.

    Gram space costs n^2 (d1 + d2) (two n x n Grams); feature space n (d1 d2 + d1^2 + d2^2) (three
    covariance products). For d1 = d2 = d the Gram space wins when n < 1.5 d."""
    return "gram" if n * (d1 + d2) < d1 * d1 + d1 * d2 + d2 * d2 else "feature"


def _hsic_terms_gram(x: Tensor, y: Tensor, unbiased: bool) -> tuple[Tensor, Tensor, Tensor]:
    centering = _ucenter_gram if unbiased else center_gram
    k, l = centering(gram(x)), centering(gram(y))
    return (k * l).sum((-1, -2)), (k * k).sum((-1, -2)), (l * l).sum((-1, -2))


def _self_frobenius(xc: Tensor) -> Tensor:
    """``||xc^T xc||_F^2``; for wide ``xc`` via symmetry: two half-width blocks need 3/4 of the product."""
    if xc.shape[-1] < 256:
        return (xc.transpose(-1, -2) @ xc).square().sum((-1, -2))
    half = xc.shape[-1] // 2
    a, b = xc[..., :half], xc[..., half:]
    gram_ab = a.transpose(-1, -2) @ b
    parts = [(a.transpose(-1, -2) @ a), (b.transpose(-1, -2) @ b)]
    return sum(p.square().sum((-1, -2)) for p in parts) + 2 * gram_ab.square().sum((-1, -2))


def _hsic_terms_feature(x: Tensor, y: Tensor, unbiased: bool) -> tuple[Tensor, Tensor, Tensor]:
    """HSIC numerators from covariances, never forming an n x n matrix.

    With centered X (so K = X X^T has zero row sums) and k_i = |x_i|^2, Song et al.'s estimator times
    n(n-3) is ``||X^T Y||^2 - k.l + (sum k)(sum l)/((n-1)(n-2)) - 2 k.l/(n-2)``; the biased one is
    ``||X^T Y||^2``. The common factor cancels in CKA."""
    xc, yc = _centered(x), _centered(y)
    xy = (xc.transpose(-1, -2) @ yc).square().sum((-1, -2))
    xx, yy = _self_frobenius(xc), _self_frobenius(yc)
    if not unbiased:
        return xy, xx, yy
    n = x.shape[-2]
    kx, ky = xc.square().sum(-1), yc.square().sum(-1)

    def correct(full: Tensor, a: Tensor, b: Tensor) -> Tensor:
        dot = (a * b).sum(-1)
        return full - dot + a.sum(-1) * b.sum(-1) / ((n - 1) * (n - 2)) - 2 * dot / (n - 2)

    return correct(xy, kx, ky), correct(xx, kx, kx), correct(yy, ky, ky)


def _linear_cka(x: Tensor, y: Tensor, unbiased: bool, space: str) -> Tensor:
    _check_rows(x, y, minimum=4 if unbiased else 2)
    if space == "auto":
        space = linear_cka_space(x.shape[-2], x.shape[-1], y.shape[-1])
    if space not in ("gram", "feature"):
        raise ValueError(f"space must be 'auto', 'gram' or 'feature', got {space!r}")
    if space == "gram":
        return _ratio(*_hsic_terms_gram(x, y, unbiased))
    # one [n, d] slice at a time: small float64 copies beat one big batch (memory-bound centering)
    slices_x = einops.rearrange(x, "... n d -> (...) n d")
    slices_y = einops.rearrange(y, "... n d -> (...) n d")
    values = [_ratio(*_hsic_terms_feature(a, b, unbiased)) for a, b in zip(slices_x, slices_y)]
    return torch.stack(values).reshape(x.shape[:-2])


@jaxtyped(typechecker=typechecker)
def linear_cka(x: Float[Tensor, "*layer n d1"], y: Float[Tensor, "*layer n d2"], space: str = "auto") -> Float[Tensor, "*layer"]:
    """Biased linear CKA, batched over leading dims; ``space``: auto | gram | feature (same value)."""
    return _linear_cka(x, y, unbiased=False, space=space)


@jaxtyped(typechecker=typechecker)
def linear_cka_unbiased(x: Float[Tensor, "*layer n d1"], y: Float[Tensor, "*layer n d2"], space: str = "auto") -> Float[Tensor, "*layer"]:
    """Linear CKA from unbiased HSIC (n >= 4), batched over leading dims; near 0 for independent data."""
    return _linear_cka(x, y, unbiased=True, space=space)


# ----------------------------------------------------------------------------- RBF CKA


def _sq_distances(x: Tensor) -> Tensor:
    """Squared Euclidean distances ``[n, n]`` (float64, via the centered Gram)."""
    k = gram(_centered(x))
    norms = k.diagonal()
    sq = (norms[:, None] + norms[None, :] - 2 * k).clamp_(min=0)
    sq.fill_diagonal_(0)
    return sq


def _median_sq_distance(sq: Tensor) -> Tensor:
    """Median over pairs i < j of the squared distances (lower median)."""
    n = sq.shape[0]
    return sq[torch.ones(n, n, dtype=torch.bool).triu(1)].median()


def _rbf_from_sq(sq: Tensor, sigma: Tensor | float) -> Tensor:
    return torch.exp(-sq / (2 * torch.as_tensor(sigma, dtype=F64) ** 2))


def rbf_bandwidth(x: Tensor, sigma_frac: float = 0.8) -> Tensor:
    """``sigma_frac`` x the median pairwise Euclidean distance of the rows of ``x``."""
    return sigma_frac * _median_sq_distance(_sq_distances(x)).sqrt()


def _rbf_kernel(x: Tensor, sigma_frac: float) -> Tensor:
    sq = _sq_distances(x)
    sigma = sigma_frac * _median_sq_distance(sq).sqrt()
    if float(sigma) == 0:
        warnings.warn("all rows are identical (median distance 0): RBF kernel undefined; CKA is NaN", DegenerateWarning, stacklevel=3)
        return torch.full_like(sq, torch.nan)
    return _rbf_from_sq(sq, sigma)


@jaxtyped(typechecker=typechecker)
def rbf_cka(x: Float[Tensor, "n d1"], y: Float[Tensor, "n d2"], sigma_frac: float = 0.8, unbiased: bool = False) -> Scalar:
    """CKA with RBF kernels; each side's bandwidth is ``sigma_frac`` x its median pairwise distance
    (so the value is invariant to rotation and isotropic scaling). Builds two n x n kernels."""
    _check_rows(x, y, minimum=4 if unbiased else 2)
    centering = _ucenter_gram if unbiased else center_gram
    k, l = centering(_rbf_kernel(x, sigma_frac)), centering(_rbf_kernel(y, sigma_frac))
    return _ratio((k * l).sum(), (k * k).sum(), (l * l).sum())


# ----------------------------------------------------------------------------- minibatch CKA


def minibatches(n: int, batch_size: int, epochs: int = 1, seed: int | None = 0) -> list[Tensor]:
    """Row indices of the minibatches: ``epochs`` passes over a (seeded) permutation of ``n`` rows, each
    pass cut into ``max(1, n // batch_size)`` near-equal batches of at least ``batch_size`` rows
    (``seed=None``: in order, one pass)."""
    if batch_size < 4:
        raise ValueError(f"minibatch CKA needs batch_size >= 4 (unbiased HSIC), got {batch_size}")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    batches = []
    for _ in range(epochs if seed is not None else 1):
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        batches.extend(torch.tensor_split(order, max(1, n // batch_size)))
    return batches


def _batch_hsic(x: Tensor, y: Tensor, kernel: str, sigmas: tuple[Tensor, Tensor] | None) -> Tensor:
    """(xy, xx, yy) unbiased HSIC of one batch, times n(n-3) undone so batches of any size average."""
    m = x.shape[0]
    if kernel == "linear":
        space = linear_cka_space(m, x.shape[-1], y.shape[-1])
        terms = (_hsic_terms_gram if space == "gram" else _hsic_terms_feature)(x, y, True)
    else:
        k = _ucenter_gram(_rbf_from_sq(_sq_distances(x), sigmas[0]))
        l = _ucenter_gram(_rbf_from_sq(_sq_distances(y), sigmas[1]))
        terms = ((k * l).sum(), (k * k).sum(), (l * l).sum())
    return torch.stack(list(terms)) / (m * (m - 3))


@jaxtyped(typechecker=typechecker)
def minibatch_cka(
    x: Float[Tensor, "n d1"],
    y: Float[Tensor, "n d2"],
    batch_size: int = 1024,
    kernel: str = "linear",
    sigma_frac: float = 0.8,
    epochs: int = 1,
    seed: int | None = 0,
) -> Scalar:
    """CKA from unbiased HSIC averaged over minibatches (Nguyen et al. 2021); the largest sample x
    sample matrix is ``< 2 batch_size`` on a side (none at all for a linear kernel with batch > 1.5 d).

    The unbiased HSIC is a U-statistic, so its average over random batches is an unbiased estimate of
    the full-data value: more ``epochs`` (fresh permutations) converge to ``linear_cka_unbiased`` (or
    unbiased RBF CKA at fixed bandwidths); ``batch_size >= n`` gives it exactly. ``kernel="rbf"`` fixes
    each side's bandwidth once from a seeded subsample of ``batch_size`` rows."""
    _check_rows(x, y, minimum=4)
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
    sigmas = None
    if kernel == "rbf":
        sample = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed or 0))[:batch_size]
        sigmas = (rbf_bandwidth(x[sample], sigma_frac), rbf_bandwidth(y[sample], sigma_frac))
    total = torch.zeros(3, dtype=F64)
    for rows in minibatches(x.shape[0], batch_size, epochs, seed):
        total += _batch_hsic(x[rows], y[rows], kernel, sigmas)
    return _ratio(total[0], total[1], total[2])


# ----------------------------------------------------------------------------- nearest neighbours


def _unit(x: Tensor) -> Tensor:
    x = x.to(F64)
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(torch.finfo(F64).tiny)


def knn_indices(x: Tensor, k: int, normalize: bool = True, block_rows: int = 1024) -> Tensor:
    """``[n, k]`` indices of each row's k most similar other rows (inner product; cosine when
    ``normalize``), computed in row blocks so memory stays ``block_rows x n``."""
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n-1] = [1, {n - 1}], got {k}")
    feats = _unit(x) if normalize else x.to(F64)
    out = []
    for start in range(0, n, block_rows):
        rows = feats[start : start + block_rows]
        _reserve_pairwise(rows.shape[0], n)
        sims = rows @ feats.T
        sims[torch.arange(rows.shape[0]), torch.arange(start, start + rows.shape[0])] = -torch.inf
        out.append(sims.topk(k, dim=-1).indices)
    return torch.cat(out)


@jaxtyped(typechecker=typechecker)
def mutual_knn(x: Float[Tensor, "n d1"], y: Float[Tensor, "n d2"], k: int = 10, normalize: bool = True) -> Scalar:
    """Mean over rows of |kNN_x(i) & kNN_y(i)| / k (Huh et al. 2024); 1 = same neighbourhoods."""
    _check_rows(x, y, minimum=2)
    knn_x, knn_y = knn_indices(x, k, normalize), knn_indices(y, k, normalize)
    shared = (knn_x[:, :, None] == knn_y[:, None, :]).any(-1).sum(-1)
    return (shared.to(F64) / k).mean()


def _hsic_song(k: Tensor, l: Tensor) -> Tensor:
    """Song et al. (2012) eq. 5 for general (possibly non-symmetric) square matrices."""
    n = k.shape[0]
    k, l = k.clone().fill_diagonal_(0), l.clone().fill_diagonal_(0)
    trace = (k * l.T).sum()
    cross = k.sum(0) @ l.sum(1)  # 1^T K L 1
    return (trace + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2 * cross / (n - 2)) / (n * (n - 3))


def _constant_off_diagonal(kernel: Tensor) -> bool:
    off = kernel[~torch.eye(kernel.shape[0], dtype=torch.bool)]
    return bool((off.max() - off.min()) <= 1e-12 * off.abs().max().clamp_min(1e-300))


def _knn_mask(kernel: Tensor, k: int) -> Tensor:
    hat = kernel.clone().fill_diagonal_(-torch.inf)
    return torch.zeros_like(kernel).scatter_(1, hat.topk(k, dim=1).indices, 1.0)


@jaxtyped(typechecker=typechecker)
def cknna(x: Float[Tensor, "n d1"], y: Float[Tensor, "n d2"], k: int = 10, normalize: bool = True) -> Scalar:
    """CKNNA (Huh et al. 2024): unbiased-HSIC alignment of the kernels restricted to pairs that are
    k-nearest neighbours in *both* spaces (inner-product kernels; cosine when ``normalize``).
    ``k = n - 1`` gives unbiased linear CKA of the (normalized) rows. Builds n x n matrices; like the
    reference implementation it is not exactly symmetric in (x, y)."""
    _check_rows(x, y, minimum=4)
    n = x.shape[0]
    if not 2 <= k < n:
        raise ValueError(f"CKNNA needs k in [2, n-1] = [2, {n - 1}], got {k}")
    feats_x, feats_y = (_unit(x), _unit(y)) if normalize else (x.to(F64), y.to(F64))
    kx, ky = gram(feats_x), gram(feats_y)
    if _constant_off_diagonal(kx) or _constant_off_diagonal(ky):
        warnings.warn("CKNNA of a representation whose kernel is constant (no neighbour structure) is undefined; reported as NaN",
                      DegenerateWarning, stacklevel=2)
        return torch.tensor(torch.nan, dtype=F64)
    mask_x, mask_y = _knn_mask(kx, k), _knn_mask(ky, k)

    def aligned(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
        return _hsic_song(mask * a, mask * b)

    return _ratio(aligned(kx, ky, mask_x * mask_y), aligned(kx, kx, mask_x), aligned(ky, ky, mask_y))


# ----------------------------------------------------------------------------- Procrustes and SVCCA


def _unit_frobenius(x: Tensor) -> Tensor | None:
    xc = _centered(x)
    norm = torch.linalg.matrix_norm(xc)
    return xc / norm if float(norm) > 0 else None


def _nuclear_cross(a: Tensor, b: Tensor) -> Tensor:
    """Nuclear norm of ``a^T b`` (``a [n, d1]``, ``b [n, d2]``), in an n x n space when n is smaller."""
    if a.shape[0] < min(a.shape[1], b.shape[1]):
        ra, rb = torch.linalg.qr(a.T).R, torch.linalg.qr(b.T).R  # a^T b = Qa Ra Rb^T Qb^T
        return torch.linalg.svdvals(ra @ rb.T).sum()
    return torch.linalg.svdvals(a.T @ b).sum()


@jaxtyped(typechecker=typechecker)
def procrustes(x: Float[Tensor, "n d1"], y: Float[Tensor, "n d2"]) -> Scalar:
    """Orthogonal Procrustes distance (Ding et al. 2021), a *distance* in [0, 2]: after centering and
    scaling each side to unit Frobenius norm, ``min_R ||X - Y R||_F^2 = 2 - 2 ||X^T Y||_*`` over
    orthogonal R. 0 when x and y agree up to rotation, translation and isotropic scaling."""
    _check_rows(x, y, minimum=2)
    xn, yn = _unit_frobenius(x), _unit_frobenius(y)
    if xn is None or yn is None:
        warnings.warn("Procrustes distance of a representation with zero variance is undefined; reported as NaN", DegenerateWarning, stacklevel=2)
        return torch.tensor(torch.nan, dtype=F64)
    return (2 - 2 * _nuclear_cross(xn, yn)).clamp(0.0, 2.0)


def _top_directions(x: Tensor, keep: float | int) -> Tensor | None:
    """Orthonormal ``[n, k]`` basis of the top principal directions of centered x: the smallest k
    reaching a ``keep`` fraction of the variance (float) or exactly ``keep`` of them (int)."""
    u, s, _ = torch.linalg.svd(_centered(x), full_matrices=False)
    var = s.square()
    if float(var.sum()) == 0:
        return None
    if isinstance(keep, int):
        count = min(keep, int((s > 0).sum()))
    else:
        count = int(torch.searchsorted(var.cumsum(0) / var.sum(), torch.tensor(keep, dtype=F64) - 1e-12)) + 1
    return u[:, :count]


@jaxtyped(typechecker=typechecker)
def svcca(x: Float[Tensor, "n d1"], y: Float[Tensor, "n d2"], keep: float | int = 0.99) -> Scalar:
    """SVCCA (Raghu et al. 2017): keep each side's top principal directions (``keep``: variance
    fraction or a count), then the mean of the min(kx, ky) canonical correlations between the two
    subspaces (singular values of Ux^T Uy). Needs n well above kx + ky, else correlations saturate at 1."""
    _check_rows(x, y, minimum=2)
    ux, uy = _top_directions(x, keep), _top_directions(y, keep)
    if ux is None or uy is None:
        warnings.warn("SVCCA of a representation with zero variance is undefined; reported as NaN", DegenerateWarning, stacklevel=2)
        return torch.tensor(torch.nan, dtype=F64)
    return torch.linalg.svdvals(ux.T @ uy).clamp(max=1.0).mean()


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Measure:
    """A registered measure: ``fn(x [n, d1], y [n, d2], **options) -> float64 scalar``."""

    name: str
    fn: Callable[..., Tensor]
    kind: str = "similarity"  # or "distance" (0 = same)
    symmetric: bool = True
    description: str = ""

    def __call__(self, x: Tensor, y: Tensor, **options) -> Tensor:
        return self.fn(x, y, **options)


def _scalar(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Restrict a batched linear CKA to the registry's [n, d] call shape."""

    def call(x: Tensor, y: Tensor, **options) -> Tensor:
        if x.ndim != 2 or y.ndim != 2:
            raise ValueError(f"registry measures take x [n, d1] and y [n, d2]; got {tuple(x.shape)} and {tuple(y.shape)}")
        return fn(x, y, **options)

    return call


MEASURES: dict[str, Measure] = {
    m.name: m
    for m in (
        Measure("linear_cka", _scalar(linear_cka), description="biased linear CKA (Gram or feature space, whichever is cheaper)"),
        Measure("linear_cka_unbiased", _scalar(linear_cka_unbiased), description="linear CKA from unbiased HSIC"),
        Measure("rbf_cka", rbf_cka, description="RBF-kernel CKA, bandwidth = sigma_frac x median distance"),
        Measure("minibatch_cka", minibatch_cka, description="unbiased HSIC accumulated over minibatches (no N x N Gram)"),
        Measure("mutual_knn", mutual_knn, description="mutual k-nearest-neighbour overlap"),
        Measure("cknna", cknna, symmetric=False, description="CKA restricted to mutual k-NN pairs"),
        Measure("procrustes", procrustes, kind="distance", description="orthogonal Procrustes distance in [0, 2]"),
        Measure("svcca", svcca, description="mean canonical correlation after SVD truncation"),
    )
}


def get_measure(name: str) -> Measure:
    """The registered measure called ``name``."""
    if name not in MEASURES:
        raise ValueError(f"unknown measure {name!r}; choose one of {sorted(MEASURES)}")
    return MEASURES[name]


def similarity(name: str, x: Tensor, y: Tensor, **options) -> Tensor:
    """``get_measure(name)(x, y, **options)``: a float64 scalar."""
    return get_measure(name)(x, y, **options)


# ----------------------------------------------------------------------------- layer x layer


def _unit_centered_grams(acts: Tensor, layers: range, unbiased: bool) -> Tensor:
    """``[len(layers), n*n]`` centered Grams of ``acts[:, layers]``, each scaled to unit norm."""
    block = einops.rearrange(acts[:, layers.start : layers.stop], "n l d -> l n d")
    centering = _ucenter_gram if unbiased else center_gram
    grams = einops.rearrange(centering(gram(block)), "l i j -> l (i j)")
    norms = torch.linalg.vector_norm(grams, dim=-1, keepdim=True)
    if bool((norms <= 0).any()):
        warnings.warn("a layer has zero variance; its CKA is NaN", DegenerateWarning, stacklevel=3)
    return grams / torch.where(norms > 0, norms, torch.nan)


def _layer_chunks(n_layers: int, n: int, max_elements: int) -> list[range]:
    per_chunk = max(1, max_elements // (n * n))
    return [range(i, min(i + per_chunk, n_layers)) for i in range(0, n_layers, per_chunk)]


def _linear_cka_layers(acts_a: Tensor, acts_b: Tensor, unbiased: bool, max_elements: int) -> Tensor:
    """CKA matrix from unit centered Grams: one Gram per layer (per chunk pair) instead of one per pair."""
    n = acts_a.shape[0]
    chunks_a = _layer_chunks(acts_a.shape[1], n, max_elements)
    chunks_b = _layer_chunks(acts_b.shape[1], n, max_elements)
    out = torch.empty(acts_a.shape[1], acts_b.shape[1], dtype=F64)
    for rows in chunks_a:
        grams_a = _unit_centered_grams(acts_a, rows, unbiased)
        for cols in chunks_b:
            grams_b = grams_a if acts_b is acts_a and cols == rows else _unit_centered_grams(acts_b, cols, unbiased)
            out[rows.start : rows.stop, cols.start : cols.stop] = grams_a @ grams_b.T
    return out.clamp(-1.0, 1.0)


@jaxtyped(typechecker=typechecker)
def layer_similarity(
    acts_a: Float[Tensor, "n layer_a d_a"],
    acts_b: Float[Tensor, "n layer_b d_b"],
    measure: str = "linear_cka",
    max_gram_elements: int = 2**25,
    **options,
) -> Float[Tensor, "layer_a layer_b"]:
    """``[La, Lb]`` matrix of ``measure`` between every layer of ``acts_a`` and every layer of
    ``acts_b`` (captures of the same n prompts: a model with itself, before vs after training, ...).

    Linear CKA (biased or unbiased) builds one unit-norm centered Gram per layer and takes inner
    products, chunking layers so that at most ``max_gram_elements`` Gram entries per side are held;
    when a single n x n Gram exceeds that it falls back to the feature-space formula per pair.
    Other measures are evaluated pair by pair."""
    if acts_a.shape[0] != acts_b.shape[0]:
        raise ValueError(f"captures must hold the same prompts, got {acts_a.shape[0]} and {acts_b.shape[0]} rows")
    n = acts_a.shape[0]
    if measure == "linear_cka_unbiased" and n < 4:
        raise ValueError(f"unbiased CKA needs at least 4 rows, got {n}")
    if measure in ("linear_cka", "linear_cka_unbiased") and not options and n * n <= max_gram_elements:
        return _linear_cka_layers(acts_a, acts_b, measure.endswith("unbiased"), max_gram_elements)
    fn = get_measure(measure)
    rows = [torch.stack([fn(acts_a[:, i], acts_b[:, j], **options) for j in range(acts_b.shape[1])]) for i in range(acts_a.shape[1])]
    return torch.stack(rows)
