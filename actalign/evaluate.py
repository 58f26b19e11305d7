"""Before/after evaluation on held-out families: coherence, output agreement, retention perplexity,
and the per-layer comparison written by ``actalign compare``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from actalign.coherence import analyze, load_coherence, pair_sums_from_result, save_coherence
from actalign.metrics import paired_gap_delta_ci
from actalign.models import LoadedModel
from actalign.retention import bundled_text, perplexity
from actalign.variants import VariantSet

DELTA_FIELDS = ("gap", "cosine_centered", "cosine_centered_null", "cosine", "cosine_null", "cka", "cka_unbiased")
OUTPUT_FIELDS = ("top1_agreement", "top1_agreement_null", "sym_kl", "sym_kl_null", "answer_accuracy", "answer_agreement")


def evaluate(
    model: LoadedModel, sets: Sequence[VariantSet], out_dir: str | Path, label: str | None = None, save: bool = True, **analyze_kwargs
) -> dict:
    """Coherence of ``sets`` (``analyze_kwargs``: hook, pool, chat, batch_size, seed, n_boot as for
    ``analyze``) plus held-out retention perplexity, saved as ``out_dir/coherence.json`` when ``save``."""
    model.hf_model.eval()
    result = analyze(model, sets, progress=False, **analyze_kwargs)
    result["retention"] = {"perplexity": perplexity(model, bundled_text("heldout")), "corpus": "retention_heldout.txt"}
    if save:
        save_coherence(result, out_dir, title=label)
    return result


def compare_results(before: dict, after: dict) -> dict:
    """Per-layer deltas (after - before), whether the gap CIs separate, and output/retention deltas."""
    if len(before["layers"]) != len(after["layers"]):
        raise ValueError(f"layer counts differ ({len(before['layers'])} vs {len(after['layers'])}); compare runs of the same model and hook")
    layers = []
    for b, a in zip(before["layers"], after["layers"]):
        row = {"layer": b["layer"]}
        for key in DELTA_FIELDS:
            if key in b and key in a:
                row[f"{key}_before"], row[f"{key}_after"], row[f"{key}_delta"] = b[key], a[key], a[key] - b[key]
        row["gap_ci_before"], row["gap_ci_after"] = b["gap_ci"], a["gap_ci"]
        row["gap_cis_separate"] = a["gap_ci"][0] > b["gap_ci"][1] or a["gap_ci"][1] < b["gap_ci"][0]
        layers.append(row)
    result = {"layers": layers, "n_layers_gap_up_separated": sum(r["gap_cis_separate"] and r["gap_delta"] > 0 for r in layers)}
    paired = paired_delta_ci(before, after)
    if paired is not None:
        for row, ci in zip(layers, paired.tolist()):
            row["gap_delta_ci"] = ci
        result["n_layers_gap_delta_ci_above_zero"] = sum(row["gap_delta_ci"][0] > 0 for row in layers)
        result["n_layers_gap_delta_ci_below_zero"] = sum(row["gap_delta_ci"][1] < 0 for row in layers)
    out_b, out_a = before.get("output", {}), after.get("output", {})
    result["output"] = {f"{k}_delta": out_a[k] - out_b[k] for k in OUTPUT_FIELDS if k in out_b and k in out_a}
    result["output"].update({f"{k}_before": out_b[k] for k in OUTPUT_FIELDS if k in out_b})
    result["output"].update({f"{k}_after": out_a[k] for k in OUTPUT_FIELDS if k in out_a})
    if "retention" in before and "retention" in after:
        ppl_b, ppl_a = before["retention"]["perplexity"], after["retention"]["perplexity"]
        result["retention"] = {"perplexity_before": ppl_b, "perplexity_after": ppl_a, "perplexity_change": ppl_a / ppl_b - 1}
    return result


def paired_delta_ci(before: dict, after: dict, n_boot: int = 1000, seed: int = 0):
    """Paired bootstrap CI of the per-layer gap change over the sets both results share (None when
    either result lacks per-set sums or their null draws differ)."""
    if "sets" not in before or "sets" not in after:
        return None
    ids_after = {row["id"] for row in after["sets"]}
    ids = [row["id"] for row in before["sets"] if row["id"] in ids_after]
    if len(ids) < 2:
        return None
    sums_before, sums_after = pair_sums_from_result(before, ids), pair_sums_from_result(after, ids)
    if not torch.equal(sums_before.null_count, sums_after.null_count):
        return None
    return paired_gap_delta_ci(sums_before, sums_after, n_boot=n_boot, seed=seed)


def save_compare(before_path: str | Path, after_path: str | Path, out_dir: str | Path) -> dict:
    """Write ``compare.json`` and ``compare.png`` for two ``coherence.json`` files."""
    import matplotlib.pyplot as plt

    from actalign.plots import plot_compare

    before, after = load_coherence(before_path), load_coherence(after_path)
    result = {"before": str(before_path), "after": str(after_path), **compare_results(before, after)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    fig = plot_compare(before, after, comparison=result)
    fig.savefig(out / "compare.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return result


def summary_lines(result: dict) -> list[str]:
    """Headline numbers of a comparison, for the terminal."""
    layers = result["layers"]
    n = len(layers)
    parts = {"early": layers[1 : n // 3], "middle": layers[n // 3 : 2 * n // 3], "late": layers[2 * n // 3 :]}
    lines = []
    for name, rows in parts.items():
        if rows:
            before = sum(r["gap_before"] for r in rows) / len(rows)
            after = sum(r["gap_after"] for r in rows) / len(rows)
            separated = sum(r["gap_cis_separate"] and r["gap_delta"] > 0 for r in rows)
            text = f"{name} layers: held-out gap {before:.3f} -> {after:.3f} (CIs separate upward at {separated}/{len(rows)} layers"
            if "gap_delta_ci" in rows[0]:
                up = sum(r["gap_delta_ci"][0] > 0 for r in rows)
                text += f"; paired 95% CI of the change above 0 at {up}/{len(rows)}"
            lines.append(text + ")")
    out = result.get("output", {})
    if "top1_agreement_delta" in out:
        lines.append(f"top-1 agreement {out['top1_agreement_before']:.3f} -> {out['top1_agreement_after']:.3f}; "
                     f"null {out['top1_agreement_null_before']:.3f} -> {out['top1_agreement_null_after']:.3f}")
    if "answer_accuracy_delta" in out:
        lines.append(f"answer accuracy {out['answer_accuracy_before']:.3f} -> {out['answer_accuracy_after']:.3f}")
    if "retention" in result:
        r = result["retention"]
        lines.append(f"held-out perplexity {r['perplexity_before']:.2f} -> {r['perplexity_after']:.2f} ({100 * r['perplexity_change']:+.1f}%)")
    return lines
