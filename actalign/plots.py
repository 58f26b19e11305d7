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


def plot_compare(before: dict, after: dict, labels: tuple[str, str] = ("before", "after"), title: str | None = None,
                 comparison: dict | None = None):
    """Before vs after per layer: gap with CIs, centered within/null cosine and, given a
    ``compare_results`` dict with paired CIs, the gap change with its paired 95% CI."""
    paired = comparison is not None and "gap_delta_ci" in comparison["layers"][0]
    fig, axes = plt.subplots(1, 3 if paired else 2, figsize=(17 if paired else 12, 4.5))
    gap_ax, cos_ax = axes[0], axes[1]
    if paired:
        x = np.array([row["layer"] for row in comparison["layers"]], dtype=float)
        ci = np.array([row["gap_delta_ci"] for row in comparison["layers"]], dtype=float)
        axes[2].fill_between(x, ci[:, 0], ci[:, 1], alpha=0.3, color="tab:green", label="paired 95% CI (sets)")
        axes[2].plot(x, [row["gap_delta"] for row in comparison["layers"]], "o-", ms=3, color="tab:green", label="gap change")
        axes[2].axhline(0, color="black", lw=0.8)
        axes[2].set_title(f"gap change ({labels[1]} - {labels[0]})")
        axes[2].set_xlabel("layer (0 = embeddings)")
        axes[2].grid(alpha=0.3)
        axes[2].legend(fontsize=8)
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


# ----------------------------------------------------------------------------- analysis views (issue 5)


def plot_layer_similarity(matrix, measure: str = "linear CKA", labels: tuple[str, str] = ("A", "B"), title: str | None = None):
    """Heatmap of a ``[layer_a, layer_b]`` similarity matrix (e.g. ``measures.layer_similarity``)."""
    values = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    image = ax.imshow(values, origin="lower", cmap="magma", aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=measure)
    ax.set_ylabel(f"layer of {labels[0]}")
    ax.set_xlabel(f"layer of {labels[1]}")
    ax.set_title(title or f"{measure}: {labels[0]} vs {labels[1]}")
    fig.tight_layout()
    return fig


def plot_pca(coords, set_index, set_labels=None, explained=None, highlight=None, max_sets: int = 12, title: str | None = None):
    """Scatter of PCA coordinates ``[prompt, >=2]`` coloured by set. ``highlight`` (set indices;
    default the first ``max_sets``) are coloured, each prompt joined to its set's centroid so tight
    paraphrase clusters read as small stars; the other prompts are grey context."""
    coords = np.asarray(coords, dtype=float)
    set_index = np.asarray(set_index)
    shown = list(highlight) if highlight is not None else list(np.unique(set_index)[:max_sets])
    colours = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(7.5, 6))
    context = ~np.isin(set_index, shown)
    ax.scatter(coords[context, 0], coords[context, 1], s=6, color="lightgrey", label="other sets" if context.any() else None)
    for rank, s in enumerate(shown):
        points = coords[set_index == s, :2]
        centre = points.mean(0)
        colour = colours(rank % 20)
        for point in points:
            ax.plot([centre[0], point[0]], [centre[1], point[1]], color=colour, lw=0.7, alpha=0.6)
        ax.scatter(points[:, 0], points[:, 1], s=16, color=colour, label=set_labels[int(s)] if set_labels is not None else f"set {s}")
    axis = [f"PC{i + 1}" + (f" ({100 * float(explained[i]):.1f}% var)" if explained is not None else "") for i in range(2)]
    ax.set_xlabel(axis[0])
    ax.set_ylabel(axis[1])
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(title or "PCA of pooled vectors, coloured by variant set")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_position_coherence(result: dict, title: str | None = None):
    """Per-position coherence (``analysis.position_coherence``): gap heatmap over (offset from the end,
    layer), and the gap per offset at a few layers with the shared-suffix coverage."""
    gap = np.asarray(result["gap"], dtype=float)  # [offset, layer]
    offsets, layers = np.asarray(result["offsets"]), np.asarray(result["layers"])
    fig, (heat_ax, line_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    image = heat_ax.imshow(gap, origin="lower", aspect="auto", cmap="viridis", interpolation="nearest",
                           extent=(layers[0] - 0.5, layers[-1] + 0.5, offsets[0] - 0.5, offsets[-1] + 0.5))
    fig.colorbar(image, ax=heat_ax, label="gap (centered within - null)")
    heat_ax.set_xlabel("layer (0 = embeddings)")
    heat_ax.set_ylabel("token offset from the end (0 = last)")
    heat_ax.set_title("coherence gap by position")
    picks = sorted({0, len(layers) // 3, 2 * len(layers) // 3, len(layers) - 1})
    for layer in picks:
        line_ax.plot(offsets, gap[:, layer], "o-", ms=3, label=f"layer {layers[layer]}")
    line_ax.bar(offsets, result["in_suffix"], color="grey", alpha=0.25, label="fraction of sets: offset in shared suffix")
    line_ax.set_xlabel("token offset from the end (0 = last)")
    line_ax.set_ylabel("gap / fraction")
    line_ax.set_title("gap per position at selected layers")
    line_ax.grid(alpha=0.3)
    line_ax.legend(fontsize=8)
    n_sets = len(result.get("sets", []))
    fig.suptitle(title or f"{result.get('model', '?')}: per-position coherence over {n_sets} sets sharing a token suffix")
    fig.tight_layout()
    return fig


def plot_family_bars(rows, key: str = "gap", title: str | None = None):
    """Horizontal bars of ``key`` per family (``analysis.family_breakdown`` rows), with the bootstrap
    CI when plotting the gap; least coherent at the top."""
    rows = sorted(rows, key=lambda r: r[key], reverse=True)
    names = [r["family"] for r in rows]
    values = np.array([r[key] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.4))
    errors = None
    if key == "gap" and all("gap_ci" in r for r in rows):
        ci = np.array([r["gap_ci"] for r in rows], dtype=float)
        errors = np.abs(np.stack([values - ci[:, 0], ci[:, 1] - values]))
    ax.barh(names, values, xerr=errors, color="tab:blue", alpha=0.8, ecolor="black", capsize=2)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(key + (" (95% bootstrap CI over sets)" if errors is not None else ""))
    ax.set_title(title or f"{key} per family")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
