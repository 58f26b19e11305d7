"""Coherence metrics over pooled activations, computed in float64.

Conventions
-----------
- ``acts``: ``[prompt, layer, d_model]``; ``set_index[p]``: the set of prompt p; ``family_of_set[s]``.
- Within-set cosine: mean over all within-set prompt pairs, pooled over sets.
- Null: for every within-set pair of set s, one *null draw*: a random set t (seeded) from another
  family (another set when there is one family); the draw's value is the mean over all prompt pairs
  between s and t. Same number of draws as within pairs, and computed from set sums, so it is exactly
  invariant to the order of prompts inside a set.
- Centered variants subtract, per layer, the mean pooled vector over all prompts first.
- ``gap`` = centered within - centered null; its CI is a percentile bootstrap over sets.

Invariances (tested): cosine statistics are invariant to rotation and positive scaling of the features
and to the order of prompts within a set; CKA is invariant to rotation and isotropic scaling; every
similarity is <= 1. Degenerate input (a zero vector, zero variance, n < 4 for unbiased CKA) gives NaN
with a ``DegenerateWarning``, never a silent NaN or a value above 1.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from beartype import beartype as typechecker
from jaxtyping import Float, Int, jaxtyped
from torch import Tensor

F64 = torch.float64


class DegenerateWarning(UserWarning):
    """A statistic is undefined for this input and was reported as NaN."""


# ----------------------------------------------------------------------------- structure


@dataclass(frozen=True)
class SetStructure:
    """Which prompt belongs to which set and family, plus seeded null draws."""

    set_index: Int[Tensor, "prompt"]
    family_of_set: tuple[str, ...]
    null_sets: Int[Tensor, "draw 2"]  # (s, t): set s paired with a set t from another family

    @property
    def n_sets(self) -> int:
        return len(self.family_of_set)

    @property
    def set_sizes(self) -> Int[Tensor, "set"]:
        return torch.bincount(self.set_index, minlength=self.n_sets)

    @property
    def within_pairs(self) -> Int[Tensor, "set"]:
        n = self.set_sizes
        return n * (n - 1) // 2


def make_structure(set_index, family_of_set, seed: int = 0) -> SetStructure:
    """Build the set structure and draw the null sets (one draw per within-set pair), seeded."""
    set_index = torch.as_tensor(set_index, dtype=torch.long)
    families = tuple(family_of_set)
    n_sets = len(families)
    if n_sets < 2:
        raise ValueError("coherence needs at least 2 variant sets (the null baseline pairs prompts across sets)")
    sizes = torch.bincount(set_index, minlength=n_sets)
    if int(sizes.min()) < 2:
        raise ValueError(f"set {int(sizes.argmin())} has fewer than 2 prompts; every set needs at least 2 variants")
    fam = np.array(families)
    several_families = len(set(families)) > 1
    rng = np.random.default_rng(seed)
    draws = []
    for s in range(n_sets):
        allowed = np.flatnonzero(fam != fam[s]) if several_families else np.flatnonzero(np.arange(n_sets) != s)
        count = int(sizes[s] * (sizes[s] - 1) // 2)
        partners = rng.choice(allowed, size=count, replace=True)
        draws.extend((s, int(t)) for t in partners)
    return SetStructure(set_index, families, torch.tensor(draws, dtype=torch.long))


# ----------------------------------------------------------------------------- cosine statistics


@jaxtyped(typechecker=typechecker)
def unit_rows(x: Float[Tensor, "n layer d"]) -> Float[Tensor, "n layer d"]:
    """Rows scaled to unit norm (float64); zero rows become NaN with a warning."""
    x = x.to(F64)
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        warnings.warn("a pooled vector is exactly zero; its cosines are NaN", DegenerateWarning, stacklevel=3)
    return x / norms


@jaxtyped(typechecker=typechecker)
def center(x: Float[Tensor, "n layer d"]) -> Float[Tensor, "n layer d"]:
    """Subtract, per layer, the mean vector over all rows (float64)."""
    x = x.to(F64)
    return x - x.mean(dim=0, keepdim=True)


@dataclass
class PairSums:
    """Per-set sums of pair cosines (within and null draws) and their counts; the bootstrap unit."""

    within: Float[Tensor, "set layer"]
    within_count: Float[Tensor, "set"]
    null: Float[Tensor, "set layer"]
    null_count: Float[Tensor, "set"]

    def means(self, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(within mean, null mean) per layer; ``weights [..., set]`` resample sets (bootstrap)."""
        if weights is None:
            weights = torch.ones(self.within.shape[0], dtype=F64)
        weights = weights.to(F64)
        within = (weights @ self.within) / (weights @ self.within_count)[..., None]
        null = (weights @ self.null) / (weights @ self.null_count)[..., None]
        # cosines are bounded by 1; the clamp removes only floating-point excess (~1e-16)
        return within.clamp(-1.0, 1.0), null.clamp(-1.0, 1.0)


@jaxtyped(typechecker=typechecker)
def cosine_pair_sums(acts: Float[Tensor, "prompt layer d"], structure: SetStructure) -> PairSums:
    """Sums of cosines over within-set pairs and over null draws, per set and layer.

    Uses set sums of unit vectors U_s: within pairs of s sum to (|U_s|^2 - n_s) / 2 and a null draw
    (s, t) is U_s . U_t / (n_s n_t).
    """
    unit = unit_rows(acts)
    n_sets = structure.n_sets
    set_sums = torch.zeros(n_sets, unit.shape[1], unit.shape[2], dtype=F64).index_add_(0, structure.set_index, unit)
    sizes = structure.set_sizes.to(F64)
    within = ((set_sums * set_sums).sum(-1) - sizes[:, None]) / 2
    s, t = structure.null_sets[:, 0], structure.null_sets[:, 1]
    draw_values = (set_sums[s] * set_sums[t]).sum(-1) / (sizes[s] * sizes[t])[:, None]
    null = torch.zeros(n_sets, unit.shape[1], dtype=F64).index_add_(0, s, draw_values)
    null_count = torch.bincount(s, minlength=n_sets).to(F64)
    return PairSums(within, structure.within_pairs.to(F64), null, null_count)


def bootstrap_weights(n_sets: int, n_boot: int, seed: int) -> Float[Tensor, "boot set"]:
    """How often each set is drawn in each of ``n_boot`` resamples with replacement (seeded)."""
    draws = np.random.default_rng(seed).integers(0, n_sets, size=(n_boot, n_sets))
    return torch.from_numpy(np.stack([np.bincount(row, minlength=n_sets) for row in draws])).to(F64)


def _percentile_ci(samples: Tensor, level: float) -> Float[Tensor, "layer 2"]:
    alpha = (1 - level) / 2
    low, high = np.nanquantile(samples.numpy(), [alpha, 1 - alpha], axis=0)
    return torch.from_numpy(np.stack([low, high], axis=-1))


def bootstrap_gap_ci(
    sums: PairSums, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> Float[Tensor, "layer 2"]:
    """Percentile bootstrap CI of (within mean - null mean), resampling sets with replacement."""
    within, null = sums.means(bootstrap_weights(sums.within.shape[0], n_boot, seed))
    return _percentile_ci(within - null, level)


def paired_gap_delta_ci(
    before: PairSums, after: PairSums, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> Float[Tensor, "layer 2"]:
    """Percentile CI of gap(after) - gap(before) for the same sets, resampled together (paired), so
    that set-to-set variation common to both runs cancels."""
    if before.within.shape != after.within.shape:
        raise ValueError("paired comparison needs the same sets and layers in both results")
    weights = bootstrap_weights(before.within.shape[0], n_boot, seed)
    within_b, null_b = before.means(weights)
    within_a, null_a = after.means(weights)
    return _percentile_ci((within_a - null_a) - (within_b - null_b), level)


# ----------------------------------------------------------------------------- CKA


def _gram(x: Tensor) -> Tensor:
    x = x.to(F64)
    return x @ x.transpose(-1, -2)


def center_gram(gram: Tensor) -> Tensor:
    return gram - gram.mean(-1, keepdim=True) - gram.mean(-2, keepdim=True) + gram.mean((-1, -2), keepdim=True)


def _ucenter_gram(gram: Tensor) -> Tensor:
    """U-centering (Szekely & Rizzo 2014): <U(K), U(L)> / (n (n-3)) is the unbiased HSIC estimator."""
    n = gram.shape[-1]
    k = gram.clone()
    k.diagonal(dim1=-2, dim2=-1).zero_()
    rows = k.sum(-1, keepdim=True) / (n - 2)
    cols = k.sum(-2, keepdim=True) / (n - 2)
    total = k.sum((-1, -2), keepdim=True) / ((n - 1) * (n - 2))
    out = k - rows - cols + total
    out.diagonal(dim1=-2, dim2=-1).zero_()
    return out


def _cka_from_centered(kc: Tensor, lc: Tensor) -> Tensor:
    hsic_kl = (kc * lc).sum((-1, -2))
    hsic_kk = (kc * kc).sum((-1, -2))
    hsic_ll = (lc * lc).sum((-1, -2))
    denom = torch.sqrt(hsic_kk * hsic_ll)
    if bool((denom <= 0).any()):
        warnings.warn("CKA of a representation with zero variance is undefined; reported as NaN", DegenerateWarning, stacklevel=3)
    value = hsic_kl / torch.where(denom > 0, denom, torch.nan)
    # Cauchy-Schwarz bounds the ratio by 1; clamp removes only floating-point excess (~1e-16).
    return value.clamp(-1.0, 1.0)


@jaxtyped(typechecker=typechecker)
def linear_cka(x: Float[Tensor, "*layer n d1"], y: Float[Tensor, "*layer n d2"]) -> Float[Tensor, "*layer"]:
    """Biased linear CKA (Kornblith et al. 2019) between row-aligned representations, float64."""
    return _cka_from_centered(center_gram(_gram(x)), center_gram(_gram(y)))


@jaxtyped(typechecker=typechecker)
def linear_cka_unbiased(x: Float[Tensor, "*layer n d1"], y: Float[Tensor, "*layer n d2"]) -> Float[Tensor, "*layer"]:
    """Linear CKA from the unbiased HSIC estimator (Song et al. 2012; Nguyen et al. 2021); needs n >= 4.
    Near 0 for independent data at any n (the biased estimator is not); may be negative."""
    n = x.shape[-2]
    if n < 4:
        raise ValueError(f"unbiased CKA needs at least 4 rows (sets), got {n}")
    return _cka_from_centered(_ucenter_gram(_gram(x)), _ucenter_gram(_gram(y)))


@jaxtyped(typechecker=typechecker)
def variant_views(acts: Float[Tensor, "prompt layer d"], set_index: Int[Tensor, "prompt"]) -> Float[Tensor, "view layer set d"]:
    """View k = the k-th variant of every set (k < the smallest set size)."""
    n_sets = int(set_index.max()) + 1
    members = [torch.nonzero(set_index == s).flatten() for s in range(n_sets)]
    n_views = min(len(m) for m in members)
    rows = torch.stack([torch.stack([m[k] for m in members]) for k in range(n_views)])  # [view, set]
    return acts[rows].permute(0, 2, 1, 3)


def view_cka(acts: Float[Tensor, "prompt layer d"], set_index: Int[Tensor, "prompt"]) -> dict[str, Tensor]:
    """Mean linear CKA (biased and unbiased) over all pairs of variant views, per layer."""
    views = variant_views(acts, set_index)
    pairs = [(a, b) for a in range(views.shape[0]) for b in range(a + 1, views.shape[0])]
    biased = torch.stack([linear_cka(views[a], views[b]) for a, b in pairs]).mean(0)
    if views.shape[2] >= 4:
        unbiased = torch.stack([linear_cka_unbiased(views[a], views[b]) for a, b in pairs]).mean(0)
    else:
        warnings.warn("unbiased CKA needs at least 4 sets; reported as NaN", DegenerateWarning, stacklevel=2)
        unbiased = torch.full_like(biased, torch.nan)
    return {"cka": biased, "cka_unbiased": unbiased}


# ----------------------------------------------------------------------------- output level


def top1_agreement(logprobs: Float[Tensor, "prompt vocab"], structure: SetStructure) -> tuple[float, float]:
    """Fraction of within-set pairs with the same argmax next token, and the same over null draws."""
    top = logprobs.argmax(-1)
    vocab = torch.unique(top, return_inverse=True)[1]
    counts = torch.zeros(structure.n_sets, int(vocab.max()) + 1, dtype=F64).index_put_(
        (structure.set_index, vocab), torch.ones(len(vocab), dtype=F64), accumulate=True
    )
    agree_pairs = (counts * (counts - 1) / 2).sum()
    within = float(agree_pairs / structure.within_pairs.sum())
    sizes = structure.set_sizes.to(F64)
    s, t = structure.null_sets[:, 0], structure.null_sets[:, 1]
    null = float(((counts[s] * counts[t]).sum(-1) / (sizes[s] * sizes[t])).mean())
    return within, null


def symmetric_kl(logprobs: Float[Tensor, "prompt vocab"], structure: SetStructure) -> tuple[float, float]:
    """Mean KL(p||q) + KL(q||p) (nats) over within-set pairs, and over null draws.

    With M = P @ logP^T, the pair (a, b) has M_aa + M_bb - M_ab - M_ba.
    """
    within_sum = torch.zeros((), dtype=F64)
    n_sets = structure.n_sets
    self_term = torch.zeros(n_sets, dtype=F64)  # sum_a p_a . log p_a per set
    prob_sums, logprob_sums = [], []
    for s in range(n_sets):
        lp = logprobs[structure.set_index == s].to(F64)
        p = lp.exp()
        m = p @ lp.T
        diag = m.diagonal()
        pair_matrix = diag[:, None] + diag[None, :] - m - m.T
        within_sum += pair_matrix.triu(1).sum()
        self_term[s] = diag.sum()
        prob_sums.append(p.sum(0))
        logprob_sums.append(lp.sum(0))
    within = float(within_sum / structure.within_pairs.sum())
    sizes = structure.set_sizes.to(F64)
    prob_sums_t, logprob_sums_t = torch.stack(prob_sums), torch.stack(logprob_sums)
    s, t = structure.null_sets[:, 0], structure.null_sets[:, 1]
    cross = (prob_sums_t[s] * logprob_sums_t[t]).sum(-1) + (prob_sums_t[t] * logprob_sums_t[s]).sum(-1)
    null_draws = self_term[s] / sizes[s] + self_term[t] / sizes[t] - cross / (sizes[s] * sizes[t])
    return within, float(null_draws.mean())


def answer_metrics(
    logprobs: Float[Tensor, "prompt vocab"],
    structure: SetStructure,
    answer_token_of_set: list[int | None],
) -> dict[str, float] | None:
    """ParaRel-style metrics restricted to each family's candidate answers (their first tokens).

    ``answer_accuracy``: fraction of prompts whose argmax over the candidates is the set's own answer;
    ``answer_agreement``: fraction of within-set pairs whose restricted argmax is the same.
    Families with fewer than 2 distinct candidate tokens are skipped (with a warning).
    """
    candidates: dict[str, set[int]] = {}
    for s, token in enumerate(answer_token_of_set):
        if token is not None:
            candidates.setdefault(structure.family_of_set[s], set()).add(token)
    usable = {f: sorted(c) for f, c in candidates.items() if len(c) >= 2}
    for family in sorted(set(candidates) - set(usable)):
        warnings.warn(f"family {family!r} has fewer than 2 distinct answer tokens; skipped in answer metrics", DegenerateWarning, stacklevel=2)
    if not usable:
        return None
    correct, prompts, agree, pairs = 0, 0, 0, 0
    for s, token in enumerate(answer_token_of_set):
        family = structure.family_of_set[s]
        if token is None or family not in usable:
            continue
        cands = torch.tensor(usable[family])
        picks = cands[logprobs[structure.set_index == s][:, cands].argmax(-1)]
        correct += int((picks == token).sum())
        prompts += len(picks)
        same = picks[:, None] == picks[None, :]
        agree += int(same.triu(1).sum())
        pairs += len(picks) * (len(picks) - 1) // 2
    return {"answer_accuracy": correct / prompts, "answer_agreement": agree / pairs, "answer_prompts": prompts}
