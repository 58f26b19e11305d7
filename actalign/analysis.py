"""Views of a capture for exploration: per-family and per-set coherence, the least coherent sets,
per-token-position coherence for sets sharing a token suffix, and PCA of one layer.

All statistics follow ``actalign.metrics``: centered cosine within sets vs seeded null draws from
other families, ``gap`` = within - null, computed in float64. "Summary" numbers average the chosen
layers (default: the middle third, as the training log's ``eval_gap_middle``).
"""

from __future__ import annotations

import math
from typing import Sequence

import einops
import numpy as np
import torch
from jaxtyping import Float, Int, jaxtyped
from beartype import beartype as typechecker
from torch import Tensor

from actalign.capture import Capture, hook_names, pad_batch, tokenize
from actalign.metrics import PairSums, SetStructure, bootstrap_gap_ci, center, cosine_pair_sums, make_structure
from actalign.models import LoadedModel
from actalign.variants import VariantSet

F64 = torch.float64
STAT_COLUMNS = ("cosine", "cosine_null", "cosine_centered", "cosine_centered_null", "gap")


# ----------------------------------------------------------------------------- selection helpers


def middle_layers(n_layers: int) -> list[int]:
    """The middle third of ``n_layers`` layers (same slice as ``train.quick_eval``)."""
    return list(range(n_layers))[n_layers // 3 : 2 * n_layers // 3 + 1]


def take_per_family(sets: Sequence[VariantSet], per_family: int | None) -> list[VariantSet]:
    """The first ``per_family`` sets of every family, in corpus order (``None``/0: all sets)."""
    if not per_family:
        return list(sets)
    taken: dict[str, int] = {}
    chosen = []
    for s in sets:
        if taken.get(s.family, 0) < per_family:
            taken[s.family] = taken.get(s.family, 0) + 1
            chosen.append(s)
    return chosen


def _check_capture(cap: Capture, sets: Sequence[VariantSet]) -> None:
    if int(cap.set_index.max()) + 1 != len(sets):
        raise ValueError(f"capture has {int(cap.set_index.max()) + 1} sets but {len(sets)} VariantSets were given; pass the sets it was captured from")


# ----------------------------------------------------------------------------- per family / per set


def _sums(cap: Capture, sets: Sequence[VariantSet], seed: int) -> tuple[SetStructure, PairSums, PairSums]:
    _check_capture(cap, sets)
    structure = make_structure(cap.set_index, [s.family for s in sets], seed=seed)
    return structure, cosine_pair_sums(cap.acts, structure), cosine_pair_sums(center(cap.acts), structure)


def _group_stats(raw: PairSums, centered: PairSums, members: Tensor) -> dict[str, Tensor]:
    """Per-layer within/null means (raw and centered) pooled over the sets in ``members`` (bool [set])."""
    weights = members.to(F64)
    raw_within, raw_null = raw.means(weights)
    cen_within, cen_null = centered.means(weights)
    return {"cosine": raw_within, "cosine_null": raw_null, "cosine_centered": cen_within,
            "cosine_centered_null": cen_null, "gap": cen_within - cen_null}


def _layer_mean_ci(centered: PairSums, members: Tensor, layers: list[int], n_boot: int, seed: int) -> list[float]:
    """Bootstrap CI (over the group's sets) of the gap averaged over ``layers``."""
    pick = members.nonzero().flatten()
    averaged = PairSums(
        centered.within[pick][:, layers].mean(-1, keepdim=True), centered.within_count[pick],
        centered.null[pick][:, layers].mean(-1, keepdim=True), centered.null_count[pick],
    )
    low, high = bootstrap_gap_ci(averaged, n_boot=n_boot, seed=seed)[0].tolist()
    return [low, high]


def family_breakdown(
    cap: Capture, sets: Sequence[VariantSet], layers: Sequence[int] | None = None, n_boot: int = 200, seed: int = 0
) -> list[dict]:
    """One row per family, least coherent first: set/prompt counts, the statistics of
    ``STAT_COLUMNS`` averaged over ``layers`` (default: middle third), a bootstrap CI of that gap over
    the family's sets, and ``gap_by_layer``. Null draws pair each set with other families' sets."""
    structure, raw, centered = _sums(cap, sets, seed)
    layers = list(layers) if layers is not None else middle_layers(cap.acts.shape[1])
    families = np.array(structure.family_of_set)
    sizes = structure.set_sizes
    rows = []
    for family in sorted(set(structure.family_of_set)):
        members = torch.from_numpy(families == family)
        stats = _group_stats(raw, centered, members)
        row = {"family": family, "n_sets": int(members.sum()), "n_prompts": int(sizes[members].sum())}
        row.update({key: float(value[layers].mean()) for key, value in stats.items()})
        row["gap_ci"] = _layer_mean_ci(centered, members, layers, n_boot, seed)
        row["gap_by_layer"] = stats["gap"].tolist()
        rows.append(row)
    return sorted(rows, key=lambda r: r["gap"])


def set_breakdown(cap: Capture, sets: Sequence[VariantSet], layers: Sequence[int] | None = None, seed: int = 0) -> list[dict]:
    """One row per set, least coherent first: id, family, the ``STAT_COLUMNS`` averaged over
    ``layers`` (default: middle third), ``gap_by_layer`` and the set's variants."""
    structure, raw, centered = _sums(cap, sets, seed)
    layers = list(layers) if layers is not None else middle_layers(cap.acts.shape[1])
    rows = []
    for s, variant_set in enumerate(sets):
        stats = _group_stats(raw, centered, torch.arange(structure.n_sets) == s)
        row = {"id": variant_set.id, "family": variant_set.family, "n_prompts": len(variant_set.variants)}
        row.update({key: float(value[layers].mean()) for key, value in stats.items()})
        row["gap_by_layer"] = stats["gap"].tolist()
        row["variants"] = list(variant_set.variants)
        rows.append(row)
    return sorted(rows, key=lambda r: r["gap"])


def least_coherent(cap: Capture, sets: Sequence[VariantSet], k: int = 10, layers: Sequence[int] | None = None, seed: int = 0) -> list[dict]:
    """The ``k`` sets with the smallest gap (see :func:`set_breakdown`)."""
    return set_breakdown(cap, sets, layers, seed)[:k]


def _is_interval(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, float) for v in value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None, floatfmt: str = ".3f") -> str:
    """A Markdown (GitHub pipe) table of ``rows``; ``columns`` default to the keys of the first row
    holding scalars or ``[low, high]`` intervals. Floats use ``floatfmt``."""
    if not rows:
        return ""
    columns = list(columns or [k for k, v in rows[0].items() if _is_interval(v) or not isinstance(v, (list, tuple, dict))])

    def cell(value) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else format(value, floatfmt)
        if _is_interval(value):
            return f"[{cell(value[0])}, {cell(value[1])}]"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- per token position


@torch.no_grad()
def capture_positions(
    model: LoadedModel,
    prompts: Sequence[str],
    n_positions: int = 6,
    hook: str = "resid_post",
    chat: bool = False,
    batch_size: int = 16,
) -> tuple[Float[Tensor, "prompt offset layer d_model"], Int[Tensor, "prompt offset"]]:
    """Activations at the last ``n_positions`` tokens of every prompt, aligned from the end (offset 0 =
    last token), and ``valid[p, o]`` = 1 where prompt p has a token at offset o. Left padding, no logits."""
    names = hook_names(model.n_layers, hook)
    rows = tokenize(model, prompts, chat)
    acts = torch.zeros(len(rows), n_positions, len(names), model.d_model)
    valid = torch.zeros(len(rows), n_positions, dtype=torch.long)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        ids, mask = pad_batch(batch, model.tokenizer.pad_token_id, "left")
        ids, mask = _left_pad_to(ids, mask, n_positions, model.tokenizer.pad_token_id)
        slots: dict[int, Tensor] = {}

        def make_hook(slot: int):
            def keep_tail(activation: Tensor, hook) -> Tensor:
                slots[slot] = activation[:, -n_positions:].detach().float().cpu()
                return activation

            return keep_tail

        model.bridge.run_with_hooks(ids.to(model.device), attention_mask=mask.to(model.device), fwd_hooks=[(n, make_hook(i)) for i, n in enumerate(names)], return_type=None)
        tail = torch.stack([slots[i] for i in range(len(names))], dim=2)  # [batch, pos, layer, d]
        acts[start : start + len(batch)] = tail.flip(1)
        valid[start : start + len(batch)] = mask[:, -n_positions:].flip(1)
    return acts, valid


def _left_pad_to(ids: Tensor, mask: Tensor, width: int, pad_id: int) -> tuple[Tensor, Tensor]:
    missing = width - ids.shape[1]
    if missing <= 0:
        return ids, mask
    return (torch.cat([torch.full((ids.shape[0], missing), pad_id), ids], 1),
            torch.cat([torch.zeros(ids.shape[0], missing, dtype=mask.dtype), mask], 1))


def _offset_stats(acts: Tensor, valid: Tensor, set_index: Tensor, families: list[str], seed: int) -> tuple[Tensor, Tensor, int]:
    """Centered within and null cosine per layer at one offset, over sets with >= 2 valid prompts."""
    counts = torch.bincount(set_index[valid], minlength=len(families))
    kept_sets = (counts >= 2).nonzero().flatten()
    if len(kept_sets) < 2:
        nan = torch.full((acts.shape[1],), torch.nan, dtype=F64)
        return nan, nan, len(kept_sets)
    rows = valid & torch.isin(set_index, kept_sets)
    new_index = torch.searchsorted(kept_sets, set_index[rows])
    structure = make_structure(new_index, [families[s] for s in kept_sets.tolist()], seed=seed)
    within, null = cosine_pair_sums(center(acts[rows]), structure).means()
    return within, null, len(kept_sets)


def _spread_over_families(indices: list[int], sets: Sequence[VariantSet], limit: int | None) -> list[int]:
    """At most ``limit`` of ``indices``: the first set of every family, then the second, ... (sorted)."""
    if limit is None or len(indices) <= limit:
        return indices
    rank: dict[str, int] = {}
    keyed = []
    for i in indices:
        rank[sets[i].family] = rank.get(sets[i].family, -1) + 1
        keyed.append((rank[sets[i].family], i))
    return sorted(i for _, i in sorted(keyed)[:limit])


def position_coherence(
    model: LoadedModel,
    sets: Sequence[VariantSet],
    n_positions: int = 6,
    min_shared: int = 1,
    max_sets: int | None = None,
    hook: str = "resid_post",
    chat: bool = False,
    batch_size: int = 16,
    seed: int = 0,
) -> dict:
    """Coherence at each token position counted from the end, for the sets whose variants share at
    least ``min_shared`` final tokens: which positions (inside the shared suffix or before it) carry
    the within-set agreement, layer by layer. ``max_sets`` caps the sets used (one forward pass per
    prompt), taking them round-robin over families.

    Returns ``offsets`` (0 = last token), per offset x layer lists ``gap``, ``cosine_centered`` and
    ``cosine_centered_null``; ``in_suffix[o]`` = fraction of the chosen sets whose shared suffix
    covers offset o; ``n_sets[o]`` = sets with >= 2 prompts long enough for offset o; ``sets``: id,
    family, shared suffix length and text of each chosen set."""
    from actalign.train import shared_suffix_len

    token_rows = [tokenize(model, s.variants, chat) for s in sets]
    shared = [shared_suffix_len(rows) for rows in token_rows]
    chosen = _spread_over_families([i for i, n in enumerate(shared) if n >= min_shared], sets, max_sets)
    if len(chosen) < 2:
        raise ValueError(f"only {len(chosen)} set(s) share a suffix of >= {min_shared} token(s); need at least 2")
    prompts = [v for i in chosen for v in sets[i].variants]
    set_index = torch.tensor([k for k, i in enumerate(chosen) for _ in sets[i].variants])
    acts, valid = capture_positions(model, prompts, n_positions, hook, chat, batch_size)
    families = [sets[i].family for i in chosen]
    stats = [_offset_stats(acts[:, o], valid[:, o].bool(), set_index, families, seed) for o in range(n_positions)]
    within = torch.stack([s[0] for s in stats])
    null = torch.stack([s[1] for s in stats])
    shared_chosen = torch.tensor([shared[i] for i in chosen])
    return {
        "model": model.name,
        "hook": hook,
        "offsets": list(range(n_positions)),
        "layers": list(range(acts.shape[2])),
        "gap": (within - null).tolist(),
        "cosine_centered": within.tolist(),
        "cosine_centered_null": null.tolist(),
        "in_suffix": [float((shared_chosen > o).to(F64).mean()) for o in range(n_positions)],
        "n_sets": [s[2] for s in stats],
        "sets": [{"id": sets[i].id, "family": sets[i].family, "shared_suffix": shared[i],
                  "suffix_text": model.tokenizer.decode(token_rows[i][0][-shared[i]:])} for i in chosen],
    }


# ----------------------------------------------------------------------------- PCA


@jaxtyped(typechecker=typechecker)
def pca(x: Float[Tensor, "n d"], k: int = 2) -> tuple[Float[Tensor, "n k"], Float[Tensor, "k"]]:
    """Coordinates of the rows on the top ``k`` principal axes (float64, exact SVD) and the fraction
    of variance each axis explains."""
    centered = x.to(F64) - x.to(F64).mean(0)
    u, s, _ = torch.linalg.svd(centered, full_matrices=False)
    variance = s.square()
    return u[:, :k] * s[:k], variance[:k] / variance.sum()


def pooled_pca(cap: Capture, layer: int, k: int = 2) -> dict:
    """PCA of one layer's pooled vectors: ``coords [prompt, k]``, ``explained [k]``, ``set_index``."""
    coords, explained = pca(cap.acts[:, layer], k)
    return {"layer": layer, "coords": coords, "explained": explained, "set_index": cap.set_index}


def stack_layers(acts: Float[Tensor, "prompt layer d"]) -> Float[Tensor, "layer prompt d"]:
    """``[prompt, layer, d] -> [layer, prompt, d]`` (the batched layout of ``measures.linear_cka``)."""
    return einops.rearrange(acts, "p l d -> l p d")
