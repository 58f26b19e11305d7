"""Differentiable alignment losses over a batch of variant sets.

Shapes: ``acts [prompt, layer, d_model]`` pooled activations (graph attached), ``set_index [prompt]``
(sets numbered 0..S-1 within the batch), ``layer_weights [layer]`` (default: 0 for the embedding
layer, 1 for every block). Every loss is >= 0 and is 0 (or minimal) when all variants of each set
are identical. Statistics are computed in float32 (the autograd dtype); see ``metrics`` for the
float64 evaluation statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from actalign.metrics import center_gram, variant_views


def default_layer_weights(n_layers_captured: int, skip_embedding: bool = True) -> Float[Tensor, "layer"]:
    """Uniform weights over blocks, 0 on the embedding layer; normalised to sum to 1."""
    weights = torch.ones(n_layers_captured)
    if skip_embedding:
        weights[0] = 0.0
    return weights / weights.sum()


def set_centroids(acts: Float[Tensor, "prompt layer d"], set_index: Int[Tensor, "prompt"]) -> Float[Tensor, "set layer d"]:
    n_sets = int(set_index.max()) + 1
    sums = torch.zeros(n_sets, *acts.shape[1:], dtype=acts.dtype, device=acts.device).index_add(0, set_index, acts)
    counts = torch.bincount(set_index, minlength=n_sets).to(acts.dtype)
    return sums / counts[:, None, None]


class RunningMean(torch.nn.Module):
    """Exponential moving average of the pooled vector per layer (no grad), used to center the
    cosine loss so that the residual stream's common direction does not make it trivially small."""

    def __init__(self, n_layers: int, d_model: int, momentum: float = 0.05):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(n_layers, d_model))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, acts: Float[Tensor, "prompt layer d"]) -> Float[Tensor, "layer d"]:
        return self.update_with_mean(acts.detach().float().mean(0))

    @torch.no_grad()
    def update_with_mean(self, batch_mean: Float[Tensor, "layer d"]) -> Float[Tensor, "layer d"]:
        """Fold in the mean pooled vector of a batch (in multi-process training: of the global batch)."""
        batch_mean = batch_mean.to(self.mean)
        if not bool(self.initialised):
            self.mean.copy_(batch_mean)
            self.initialised.fill_(True)
        else:
            self.mean.lerp_(batch_mean, self.momentum)
        return self.mean.clone()


def cosine_loss(
    acts: Float[Tensor, "prompt layer d"],
    set_index: Int[Tensor, "prompt"],
    layer_weights: Float[Tensor, "layer"],
    center: Float[Tensor, "layer d"] | None = None,
) -> Tensor:
    """Mean over prompts of 1 - cos(x - c, centroid - c), weighted over layers (c: running mean)."""
    x = acts.float() - (center if center is not None else 0.0)
    target = set_centroids(x, set_index)[set_index]
    per_layer = (1 - F.cosine_similarity(x, target, dim=-1, eps=1e-8)).mean(0)
    return (per_layer * layer_weights.to(per_layer)).sum()


def l2_stopgrad_loss(
    acts: Float[Tensor, "prompt layer d"],
    set_index: Int[Tensor, "prompt"],
    layer_weights: Float[Tensor, "layer"],
    canonical: Int[Tensor, "set"] | None = None,
    scale: Float[Tensor, "layer"] | None = None,
) -> Tensor:
    """Squared L2 to a stop-gradient target (set centroid, or the prompt ``canonical[s]`` of each set),
    divided by ``scale``: by default the batch's mean squared residual norm per layer (detached), so one
    weight fits all models."""
    x = acts.float()
    target = (x[canonical] if canonical is not None else set_centroids(x, set_index)).detach()[set_index]
    scale = (x.detach().pow(2).sum(-1).mean(0) if scale is None else scale.to(x)).clamp_min(1e-12)
    per_layer = (x - target).pow(2).sum(-1).mean(0) / scale
    return (per_layer * layer_weights.to(per_layer)).sum()


def cka_loss(acts: Float[Tensor, "prompt layer d"], set_index: Int[Tensor, "prompt"], layer_weights: Float[Tensor, "layer"]) -> Tensor:
    """1 - mean linear CKA between variant views (needs >= 3 sets in the batch), weighted over layers."""
    views = variant_views(acts.float(), set_index)
    if views.shape[2] < 3:
        raise ValueError("the cka loss needs at least 3 sets per batch; raise sets_per_step")
    grams = center_gram(views @ views.transpose(-1, -2))  # [view, layer, set, set]
    norms = grams.pow(2).sum((-1, -2)).clamp_min(1e-12).sqrt()
    losses = []
    for a in range(views.shape[0]):
        for b in range(a + 1, views.shape[0]):
            cka = (grams[a] * grams[b]).sum((-1, -2)) / (norms[a] * norms[b])
            losses.append(1 - cka)
    per_layer = torch.stack(losses).mean(0)
    return (per_layer * layer_weights.to(per_layer)).sum()


def output_consistency_loss(logits: Float[Tensor, "prompt vocab"], set_index: Int[Tensor, "prompt"], kind: str = "sym_kl") -> Tensor:
    """Mean over within-set pairs of KL(p||q) + KL(q||p) (``sym_kl``) or Jensen-Shannon (``js``)
    between next-token distributions."""
    logp = F.log_softmax(logits.float(), dim=-1)
    a_idx, b_idx = torch.triu_indices(len(set_index), len(set_index), offset=1)
    same = set_index[a_idx] == set_index[b_idx]
    a_idx, b_idx = a_idx[same], b_idx[same]
    la, lb = logp[a_idx], logp[b_idx]
    if kind == "sym_kl":
        return ((la.exp() - lb.exp()) * (la - lb)).sum(-1).mean()
    if kind == "js":
        log_m = torch.logsumexp(torch.stack([la, lb]), 0) - torch.log(torch.tensor(2.0))
        return 0.5 * (F.kl_div(log_m, la, log_target=True, reduction="none").sum(-1) + F.kl_div(log_m, lb, log_target=True, reduction="none").sum(-1)).mean()
    raise ValueError(f"unknown output loss kind {kind!r}; use 'sym_kl' or 'js'")


def topk_reference(logits: Float[Tensor, "n vocab"], k: int) -> tuple[Tensor, Tensor]:
    """Compress reference next-token distributions to their top-k log-probs plus the tail mass:
    returns (indices [n, k], log-probs [n, k + 1]) where the last column is log(1 - sum top-k)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    top, idx = logp.topk(k, dim=-1)
    tail = torch.log1p(-top.exp().sum(-1).clamp(max=1 - 1e-7))
    return idx, torch.cat([top, tail[:, None]], dim=-1)


def anchor_kl_loss(logits: Float[Tensor, "n vocab"], ref_idx: Int[Tensor, "n k"], ref_logp: Float[Tensor, "n k1"]) -> Tensor:
    """KL(reference || model) over the reference's top-k tokens plus one tail bin, mean over rows."""
    logp = F.log_softmax(logits.float(), dim=-1)
    top = logp.gather(-1, ref_idx)
    tail = torch.log1p(-top.exp().sum(-1).clamp(max=1 - 1e-7))
    model_logp = torch.cat([top, tail[:, None]], dim=-1)
    return (ref_logp.exp() * (ref_logp - model_logp)).sum(-1).mean()


def lm_loss(logits: Float[Tensor, "batch pos vocab"], input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"]) -> Tensor:
    """Mean next-token cross-entropy over real (unpadded) target tokens."""
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100)
