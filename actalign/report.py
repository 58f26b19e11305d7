"""One-page report for an ``actalign analyze`` or ``actalign train`` output folder.

``write_report(folder)`` detects the kind of folder (``compare.json`` / ``before/`` + ``after/`` =
train, ``coherence.json`` = analyze), collects the headline numbers and embeds every figure: the
standard PNGs first, then any other ``*.png`` in the folder (e.g. the views a notebook saved there).
Markdown links the images by relative path; HTML inlines them (one self-contained file).
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

import numpy as np

from actalign.analysis import markdown_table

Block = tuple  # ("h1"|"h2"|"p", text) | ("ul", [lines]) | ("table", rows, columns) | ("img", path, caption)


def folder_kind(folder: str | Path) -> str:
    """``"train"`` or ``"analyze"`` (ValueError for anything else)."""
    folder = Path(folder)
    if (folder / "compare.json").is_file() or ((folder / "before").is_dir() and (folder / "after").is_dir()):
        return "train"
    if (folder / "coherence.json").is_file():
        return "analyze"
    raise ValueError(f"{folder} is neither an analyze folder (coherence.json) nor a train folder (compare.json, before/, after/)")


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def layer_bands(result: dict) -> list[dict]:
    """Mean per-layer statistics over early / middle / late thirds (as ``evaluate.summary_lines``;
    layer 0 = embeddings left out)."""
    layers = result["layers"]
    n = len(layers)
    bands = {"early": layers[1 : n // 3], "middle": layers[n // 3 : 2 * n // 3], "late": layers[2 * n // 3 :]}
    keys = ("gap", "cosine_centered", "cosine_centered_null", "cka", "cka_unbiased")
    rows = []
    for name, band in bands.items():
        if band:
            row = {"layers": f"{band[0]['layer']}-{band[-1]['layer']}", "band": name}
            row.update({k: float(np.mean([l[k] for l in band])) for k in keys if k in band[0]})
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- content


def _analyze_blocks(folder: Path) -> list[Block]:
    from actalign.coherence import headline, load_coherence

    result = load_coherence(folder / "coherence.json")
    peak = max(result["layers"], key=lambda l: l["gap"])
    facts = [f"model: `{result.get('model', '?')}`, hook `{result.get('hook', '?')}`, pool `{result.get('pool', '?')}`, chat {result.get('chat', False)}",
             f"{result.get('n_sets', '?')} variant sets, {result.get('n_prompts', '?')} prompts, {result.get('n_families', '?')} families, seed {result.get('seed', '?')}",
             f"largest gap {peak['gap']:.3f} [{peak['gap_ci'][0]:.3f}, {peak['gap_ci'][1]:.3f}] at layer {peak['layer']}"]
    blocks: list[Block] = [("h1", f"actalign analyze: {result.get('model', folder.name)}"), ("p", f"**{headline(result)}**"), ("ul", facts),
                           ("h2", "Coherence by layer band"), ("table", layer_bands(result), None)]
    if result.get("output"):
        blocks += [("h2", "Output agreement"), ("table", [result["output"]], None)]
    return blocks + [("h2", "Figures"), ("img", "coherence.png", "per-layer coherence")]


def _train_log_figure(folder: Path) -> str | None:
    """Write ``train_log.png`` (loss terms per step) from ``train_log.jsonl``; return its name."""
    entries = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines() if line.strip()] if (folder / "train_log.jsonl").is_file() else []
    if not entries:
        return None
    import matplotlib.pyplot as plt

    from actalign.train import LOSS_NAMES

    fig, ax = plt.subplots(figsize=(7, 3.6))
    steps = [e["step"] for e in entries]
    for name in ("loss", *LOSS_NAMES):
        if name in entries[0]:
            ax.plot(steps, [e.get(name, np.nan) for e in entries], label=name, lw=1.2 if name != "loss" else 2)
    ax.set_xlabel("optimizer step")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_title("training loss terms")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "train_log.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "train_log.png"


def _log_summary(folder: Path) -> list[dict]:
    path = folder / "train_log.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if not entries:
        return []
    first, last = entries[0], entries[-1]
    keys = [k for k in first if k not in ("step", "lr", "step_time") and isinstance(first[k], (int, float))]
    return [{"term": k, "first step": float(first[k]), "last step": float(last.get(k, np.nan))} for k in keys]


def _train_blocks(folder: Path) -> list[Block]:
    from actalign.evaluate import compare_results, summary_lines

    config = _read_json(folder / "config.json") or {}
    before, after = _read_json(folder / "before" / "coherence.json"), _read_json(folder / "after" / "coherence.json")
    comparison = _read_json(folder / "compare.json") or (compare_results(before, after) if before and after else None)
    blocks: list[Block] = [("h1", f"actalign train: {config.get('model', folder.name)}")]
    facts = [f"{key}: `{config[key]}`" for key in ("model", "steps", "lr", "trainable", "pool", "loss_weights", "seed") if key in config]
    blocks.append(("ul", facts))
    if comparison:
        blocks += [("h2", "Held-out families, before vs after"), ("ul", summary_lines(comparison))]
    if before and after:
        rows = [{"band": b["band"], "layers": b["layers"], "gap before": b["gap"], "gap after": a["gap"], "change": a["gap"] - b["gap"]}
                for b, a in zip(layer_bands(before), layer_bands(after))]
        blocks.append(("table", rows, None))
    summary = _log_summary(folder)
    if summary:
        blocks += [("h2", "Training log"), ("table", summary, None)]
    blocks.append(("h2", "Figures"))
    blocks += [("img", "compare.png", "before vs after on held-out families")]
    log_figure = _train_log_figure(folder)
    if log_figure:
        blocks.append(("img", log_figure, "loss terms per step"))
    return blocks + [("img", "before/coherence.png", "before training"), ("img", "after/coherence.png", "after training")]


def report_blocks(folder: str | Path) -> list[Block]:
    """The report's content for ``folder`` (analyze or train), figures that exist only."""
    folder = Path(folder)
    blocks = _analyze_blocks(folder) if folder_kind(folder) == "analyze" else _train_blocks(folder)
    shown = {b[1] for b in blocks if b[0] == "img"}
    extra = [p.name for p in sorted(folder.glob("*.png")) if p.name not in shown]
    blocks += [("img", name, name.removesuffix(".png").replace("_", " ")) for name in extra]
    return [b for b in blocks if b[0] != "img" or (folder / b[1]).is_file()]


# ----------------------------------------------------------------------------- rendering


def to_markdown(blocks: list[Block], image_prefix: str = "") -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + block[1])
        elif kind == "p":
            out.append(block[1])
        elif kind == "ul":
            out.append("\n".join(f"- {line}" for line in block[1]))
        elif kind == "table":
            out.append(markdown_table(block[1], block[2]))
        elif kind == "img":
            out.append(f"![{block[2]}]({image_prefix}{block[1]})")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then render ``**bold**`` and ``code`` spans."""
    parts = html.escape(text).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def _html_table(rows: list[dict], columns) -> str:
    lines = markdown_table(rows, columns).splitlines()
    cells = [[c.strip().replace("\\|", "|") for c in line.strip("|").split(" | ")] for line in lines]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells[2:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(blocks: list[Block], folder: Path) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{_inline(block[1])}</{kind}>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(line)}</li>" for line in block[1]) + "</ul>")
        elif kind == "table" and block[1]:
            out.append(_html_table(block[1], block[2]))
        elif kind == "img":
            data = base64.b64encode((folder / block[1]).read_bytes()).decode()
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block[2])}"><figcaption>{html.escape(block[2])}</figcaption></figure>')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>{''.join(out)}</body></html>\n"


def write_report(folder: str | Path, fmt: str = "md", out: str | Path | None = None) -> Path:
    """Write ``report.md`` (``fmt="md"``) or a self-contained ``report.html`` for an analyze or train
    output folder; returns its path (default: inside ``folder``)."""
    if fmt not in ("md", "html"):
        raise ValueError(f"fmt must be 'md' or 'html', got {fmt!r}")
    folder = Path(folder)
    blocks = report_blocks(folder)
    path = Path(out) if out else folder / f"report.{fmt}"
    prefix = os.path.relpath(folder, path.parent) + "/" if path.parent.resolve() != folder.resolve() else ""
    path.write_text(to_markdown(blocks, prefix) if fmt == "md" else to_html(blocks, folder), encoding="utf-8")
    return path
