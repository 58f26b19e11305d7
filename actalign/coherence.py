"""Per-layer coherence of a model over variant sets: capture + metrics -> ``coherence.json`` fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from actalign.capture import Capture, capture
from actalign.metrics import (
    PairSums,
    bootstrap_gap_ci,
    center,
    cosine_pair_sums,
    make_structure,
    answer_metrics,
    symmetric_kl,
    top1_agreement,
    view_cka,
)
from actalign.models import LoadedModel
from actalign.variants import VariantSet, flatten


def coherence_from_capture(
    cap: Capture,
    sets: Sequence[VariantSet],
    answer_tokens: list[int | None] | None = None,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict:
    """The ``layers`` and ``output`` parts of ``coherence.json`` from a capture of ``sets``."""
    structure = make_structure(cap.set_index, [s.family for s in sets], seed=seed)
    raw = cosine_pair_sums(cap.acts, structure)
    centered = cosine_pair_sums(center(cap.acts), structure)
    raw_within, raw_null = raw.means()
    cen_within, cen_null = centered.means()
    ci = bootstrap_gap_ci(centered, n_boot=n_boot, seed=seed)
    cka = view_cka(cap.acts, cap.set_index)
    layers = []
    for layer, name in enumerate(cap.layer_names):
        layers.append(
            {
                "layer": layer,
                "hook_name": name,
                "cosine": float(raw_within[layer]),
                "cosine_null": float(raw_null[layer]),
                "cosine_centered": float(cen_within[layer]),
                "cosine_centered_null": float(cen_null[layer]),
                "cka": float(cka["cka"][layer]),
                "cka_unbiased": float(cka["cka_unbiased"][layer]),
                "gap": float(cen_within[layer] - cen_null[layer]),
                "gap_ci": [float(ci[layer, 0]), float(ci[layer, 1])],
            }
        )
    result = {"layers": layers, "n_null_draws": int(structure.null_sets.shape[0]), "sets": per_set_sums(centered, sets)}
    if cap.next_logprobs is not None:
        result["output"] = output_metrics(cap.next_logprobs, structure, answer_tokens)
    return result


def per_set_sums(sums: PairSums, sets: Sequence[VariantSet]) -> list[dict]:
    """Per set: sums of centered cosines over its within pairs and its null draws, per layer, with
    their counts; what a paired before/after bootstrap and per-family breakdowns need."""
    return [
        {
            "id": s.id,
            "family": s.family,
            "n_within": int(sums.within_count[i]),
            "within_centered_sum": [round(float(v), 7) for v in sums.within[i]],
            "n_null": int(sums.null_count[i]),
            "null_centered_sum": [round(float(v), 7) for v in sums.null[i]],
        }
        for i, s in enumerate(sets)
    ]


def pair_sums_from_result(result: dict, ids: Sequence[str]) -> PairSums:
    """Rebuild the centered per-set sums of a ``coherence.json`` for the sets ``ids``, in that order."""
    by_id = {row["id"]: row for row in result["sets"]}
    rows = [by_id[i] for i in ids]
    tensor = lambda key: torch.tensor([row[key] for row in rows], dtype=torch.float64)
    return PairSums(tensor("within_centered_sum"), tensor("n_within"), tensor("null_centered_sum"), tensor("n_null"))


def output_metrics(logprobs, structure, answer_tokens) -> dict:
    top1, top1_null = top1_agreement(logprobs, structure)
    kl, kl_null = symmetric_kl(logprobs, structure)
    output = {"top1_agreement": top1, "top1_agreement_null": top1_null, "sym_kl": kl, "sym_kl_null": kl_null}
    if answer_tokens is not None and any(t is not None for t in answer_tokens):
        answers = answer_metrics(logprobs, structure, answer_tokens)
        if answers:
            output.update(answers)
    return output


def answer_first_tokens(model: LoadedModel, sets: Sequence[VariantSet]) -> list[int | None]:
    """First token id of each set's answer (None where a set has no answer)."""
    tokens = []
    for s in sets:
        ids = model.tokenizer(s.answer, add_special_tokens=False)["input_ids"] if s.answer else []
        tokens.append(ids[0] if ids else None)
    return tokens


def analyze(
    model: LoadedModel,
    sets: Sequence[VariantSet],
    hook: str = "resid_post",
    pool: str = "last",
    chat: bool = False,
    batch_size: int = 16,
    seed: int = 0,
    n_boot: int = 1000,
    progress: bool = True,
) -> dict:
    """Capture ``sets`` on ``model`` and return the full ``coherence.json`` dictionary."""
    prompts, set_index = flatten(sets)
    cap = capture(model, prompts, set_index, hook=hook, pool=pool, chat=chat, batch_size=batch_size, progress=progress)
    body = coherence_from_capture(cap, sets, answer_first_tokens(model, sets), seed=seed, n_boot=n_boot)
    header = {
        "model": model.name,
        "hook": hook,
        "pool": pool,
        "chat": chat,
        "n_sets": len(sets),
        "n_prompts": len(prompts),
        "n_families": len({s.family for s in sets}),
        "seed": seed,
    }
    return {**header, **body}


def save_coherence(result: dict, out_dir: str | Path, config: dict | None = None, title: str | None = None) -> Path:
    """Write ``coherence.json``, ``coherence.png`` and (given) ``config.json`` into ``out_dir``."""
    from actalign.plots import plot_coherence

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "coherence.json").write_text(json.dumps(result, indent=2, allow_nan=True))
    if config is not None:
        (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    fig = plot_coherence(result, title=title)
    fig.savefig(out / "coherence.png", dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out / "coherence.json"


def load_coherence(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such coherence.json; run `actalign analyze` first")
    result = json.loads(path.read_text())
    if "layers" not in result:
        raise ValueError(f"{path}: not a coherence.json (no 'layers' field)")
    return result


def headline(result: dict) -> str:
    """One line summarising a coherence result: gap at the middle layer and output agreement."""
    layers = result["layers"]
    mid = layers[len(layers) // 2]
    text = f"middle layer {mid['layer']}: gap {mid['gap']:.3f} [{mid['gap_ci'][0]:.3f}, {mid['gap_ci'][1]:.3f}]"
    out = result.get("output")
    if out:
        text += f"; top-1 agreement {out['top1_agreement']:.3f} (null {out['top1_agreement_null']:.3f})"
        if "answer_accuracy" in out:
            text += f"; answer accuracy {out['answer_accuracy']:.3f}"
    return text

