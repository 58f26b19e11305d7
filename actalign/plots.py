"""Figures for coherence results (matplotlib; returned figures display inline in Jupyter)."""

from __future__ import annotations

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "nbagg", "widget"):
    matplotlib.use("Agg")  # headless-safe outside notebooks
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _series(result: dict, key: str) -> np.ndarray:
    return np.array([layer[key] for layer in result["layers"]], dtype=float)


def plot_coherence(result: dict, title: str | None = None):
    """Four panels per layer: raw cosine within vs null, centered within vs null, gap with its 95% CI,
    and linear CKA (biased and unbiased) between variant views."""
    x = _series(result, "layer")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    pairs = [("cosine", "cosine_null", "raw cosine"), ("cosine_centered", "cosine_centered_null", "mean-centered cosine")]
    for ax, (within, null, label) in zip(axes[0], pairs):
        ax.plot(x, _series(result, within), "o-", ms=3, label="paraphrase pairs (within set)")
        ax.plot(x, _series(result, null), "s--", ms=3, color="grey", label="null pairs (other family)")
        ax.set_title(label)
        ax.set_ylabel("mean cosine")
        ax.legend(fontsize=8)
    gap_ax, cka_ax = axes[1]
    ci = np.array([layer["gap_ci"] for layer in result["layers"]], dtype=float)
    gap_ax.fill_between(x, ci[:, 0], ci[:, 1], alpha=0.3, label="95% bootstrap CI (sets)")
    gap_ax.plot(x, _series(result, "gap"), "o-", ms=3, label="gap = centered within - null")
    gap_ax.axhline(0, color="black", lw=0.8)
    gap_ax.set_title("coherence gap")
    gap_ax.set_ylabel("cosine difference")
    gap_ax.legend(fontsize=8)
    cka_ax.plot(x, _series(result, "cka"), "o-", ms=3, label="linear CKA (biased)")
    if "cka_unbiased" in result["layers"][0]:
        cka_ax.plot(x, _series(result, "cka_unbiased"), "^-", ms=3, label="linear CKA (unbiased HSIC)")
    cka_ax.set_title("CKA between variant views")
    cka_ax.set_ylabel("CKA")
    cka_ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("layer (0 = embeddings)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    name = title or f"{result.get('model', '?')}: {result.get('hook', '')}/{result.get('pool', '')}, {result.get('n_sets', '?')} sets"
    fig.suptitle(name)
    fig.tight_layout()
    return fig


def plot_compare(before: dict, after: dict, labels: tuple[str, str] = ("before", "after"), title: str | None = None):
    """Before vs after per layer: gap with CIs, and centered within/null cosine."""
    fig, (gap_ax, cos_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for result, label, colour in ((before, labels[0], "tab:blue"), (after, labels[1], "tab:orange")):
        x = _series(result, "layer")
        ci = np.array([layer["gap_ci"] for layer in result["layers"]], dtype=float)
        gap_ax.fill_between(x, ci[:, 0], ci[:, 1], alpha=0.25, color=colour)
        gap_ax.plot(x, _series(result, "gap"), "o-", ms=3, color=colour, label=f"{label} gap (95% CI)")
        cos_ax.plot(x, _series(result, "cosine_centered"), "o-", ms=3, color=colour, label=f"{label} within")
        cos_ax.plot(x, _series(result, "cosine_centered_null"), "--", color=colour, alpha=0.7, label=f"{label} null")
    gap_ax.axhline(0, color="black", lw=0.8)
    gap_ax.set_title("coherence gap (centered within - null)")
    cos_ax.set_title("mean-centered cosine")
    for ax in (gap_ax, cos_ax):
        ax.set_xlabel("layer (0 = embeddings)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or f"{labels[0]} vs {labels[1]}")
    fig.tight_layout()
    return fig
