"""Analysis views, their figures and the report, on the tiny model and a slice of the bundled sets."""

import json
import shutil
import warnings

import matplotlib.figure
import numpy as np
import pytest
import torch

from actalign import analysis, measures, plots
from actalign.capture import capture, hook_names, tokenize
from actalign.coherence import answer_first_tokens, coherence_from_capture, save_coherence
from actalign.evaluate import save_compare
from actalign.metrics import DegenerateWarning
from actalign.report import folder_kind, layer_bands, write_report
from actalign.variants import VariantSet, flatten, load_bundled


@pytest.fixture(scope="module")
def sliced():
    """Two sets per family of the bundled corpus (38 sets, 19 families)."""
    return analysis.take_per_family(load_bundled(), 2)


@pytest.fixture(scope="module")
def cap(tiny, sliced):
    prompts, set_index = flatten(sliced)
    return capture(tiny, prompts, set_index, progress=False)


@pytest.fixture(scope="module")
def result(tiny, sliced, cap):
    header = {"model": "tiny", "hook": "resid_post", "pool": "last", "chat": False, "n_sets": len(sliced),
              "n_prompts": int(cap.acts.shape[0]), "n_families": 19, "seed": 0}
    with warnings.catch_warnings():  # a slice has families with < 2 distinct answer tokens
        warnings.simplefilter("ignore", DegenerateWarning)
        return {**header, **coherence_from_capture(cap, sliced, answer_first_tokens(tiny, sliced), n_boot=50)}


@pytest.fixture
def analyze_dir(tmp_path, result):
    save_coherence(result, tmp_path / "analyze", config={"model": "tiny"})
    return tmp_path / "analyze"


# ----------------------------------------------------------------------------- selection


def test_take_per_family_keeps_corpus_order_and_every_family(sliced):
    bundled = load_bundled()
    assert len(sliced) == 2 * len({s.family for s in bundled})
    assert [bundled.index(s) for s in sliced] == sorted(bundled.index(s) for s in sliced)
    assert analysis.take_per_family(bundled, 0) == bundled
    assert analysis.middle_layers(31) == list(range(10, 21))


# ----------------------------------------------------------------------------- family and set tables


def test_family_breakdown_pools_back_to_the_overall_coherence(cap, sliced, result):
    """Weighting each family's within-set mean by its number of pairs gives the overall mean."""
    layer = 2
    rows = analysis.family_breakdown(cap, sliced, layers=[layer], n_boot=50)
    assert {r["family"] for r in rows} == {s.family for s in sliced}
    assert [r["gap"] for r in rows] == sorted(r["gap"] for r in rows)  # least coherent first
    pairs = {f: sum(len(s.variants) * (len(s.variants) - 1) / 2 for s in sliced if s.family == f) for f in {s.family for s in sliced}}
    pooled = sum(r["cosine_centered"] * pairs[r["family"]] for r in rows) / sum(pairs.values())
    assert pooled == pytest.approx(result["layers"][layer]["cosine_centered"], abs=1e-9)
    for row in rows:
        assert row["n_sets"] == 2 and row["gap"] == pytest.approx(row["gap_by_layer"][layer])
        assert row["gap_ci"][0] <= row["gap"] + 1e-9 and row["gap"] <= row["gap_ci"][1] + 1e-9


def test_family_breakdown_defaults_to_the_middle_layers(cap, sliced):
    rows = analysis.family_breakdown(cap, sliced, n_boot=20)
    middle = analysis.middle_layers(cap.acts.shape[1])
    for row in rows:
        assert row["gap"] == pytest.approx(np.mean([row["gap_by_layer"][l] for l in middle]))


def test_set_breakdown_and_least_coherent(cap, sliced):
    rows = analysis.set_breakdown(cap, sliced)
    assert len(rows) == len(sliced) and {r["id"] for r in rows} == {s.id for s in sliced}
    assert [r["gap"] for r in rows] == sorted(r["gap"] for r in rows)
    worst = analysis.least_coherent(cap, sliced, k=3)
    assert [r["id"] for r in worst] == [r["id"] for r in rows[:3]]
    assert worst[0]["variants"] == list(next(s for s in sliced if s.id == worst[0]["id"]).variants)


def test_views_reject_a_capture_of_other_sets(cap, sliced):
    with pytest.raises(ValueError, match="sets"):
        analysis.family_breakdown(cap, sliced[:-1])


def test_markdown_table():
    rows = [{"family": "a|b", "gap": 0.12345, "gap_ci": [0.1, 0.2], "n": 3, "series": [1, 2, 3]}]
    table = analysis.markdown_table(rows).splitlines()
    assert table[0] == "| family | gap | gap_ci | n |"  # intervals kept, other lists left out by default
    assert table[1] == "|---|---|---|---|"
    assert table[2] == "| a\\|b | 0.123 | [0.100, 0.200] | 3 |"
    assert analysis.markdown_table(rows, ["n", "gap"], floatfmt=".1f").splitlines()[2] == "| 3 | 0.1 |"
    assert analysis.markdown_table([]) == ""


# ----------------------------------------------------------------------------- positions


def test_capture_positions_are_the_cached_activations_aligned_from_the_end(tiny):
    prompts = ["The capital of France is", "Hi", "Two plus three equals"]
    acts, valid = analysis.capture_positions(tiny, prompts, n_positions=4, batch_size=2)
    names = hook_names(tiny.n_layers)
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([tokenize(tiny, [prompt])[0]])
        _, cache = tiny.bridge.run_with_cache(ids, names_filter=lambda n: n in names)
        per_layer = torch.stack([cache[n][0] for n in names], dim=1)  # [pos, layer, d]
        length = ids.shape[1]
        assert valid[i].tolist() == [1 if o < length else 0 for o in range(4)]
        for offset in range(min(4, length)):
            torch.testing.assert_close(acts[i, offset], per_layer[length - 1 - offset], atol=1e-5, rtol=1e-5)
    last = capture(tiny, prompts, progress=False).acts
    torch.testing.assert_close(acts[:, 0], last, atol=1e-5, rtol=1e-5)


def test_position_coherence_on_sets_sharing_a_suffix(tiny, sliced):
    result = analysis.position_coherence(tiny, sliced, n_positions=4)
    gap = np.array(result["gap"])
    assert gap.shape == (4, tiny.n_layers + 1)
    assert result["in_suffix"][0] == 1.0  # every chosen set shares at least its last token
    assert all(s["shared_suffix"] >= 1 for s in result["sets"])
    # the shared last token has the same embedding in every variant: perfect agreement at layer 0
    assert result["cosine_centered"][0][0] == pytest.approx(1.0, abs=1e-6)
    assert gap[0, 0] > gap[1:, 0].max()
    json.dumps(result)  # plain data, ready to save


def test_position_coherence_needs_two_sets_with_a_shared_suffix(tiny):
    sets = [VariantSet("a", "f", ("one cat", "two dogs")), VariantSet("b", "g", ("red car", "blue bus"))]
    with pytest.raises(ValueError, match="share a suffix"):
        analysis.position_coherence(tiny, sets, min_shared=5)


# ----------------------------------------------------------------------------- PCA


def test_pca_recovers_the_dominant_axes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64) * torch.tensor([5.0, 2.0, 0.1, 0.1, 0.1], dtype=torch.float64)
    x = x @ torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64)).Q
    coords, explained = analysis.pca(x, k=2)
    assert coords.shape == (200, 2) and explained[0] > explained[1] > 0.1 and float(explained.sum()) > 0.99
    cov = coords.T @ coords
    assert abs(float(cov[0, 1])) < 1e-8 * float(cov[0, 0])  # uncorrelated components


def test_pooled_pca(cap):
    view = analysis.pooled_pca(cap, layer=2, k=3)
    assert view["coords"].shape == (cap.acts.shape[0], 3) and torch.equal(view["set_index"], cap.set_index)


# ----------------------------------------------------------------------------- figures


def test_new_plots_return_figures(tiny, cap, sliced):
    figures = [
        plots.plot_layer_similarity(measures.layer_similarity(cap.acts, cap.acts), labels=("tiny", "tiny")),
        plots.plot_pca(*[analysis.pooled_pca(cap, 2)[k] for k in ("coords", "set_index")], [s.id for s in sliced]),
        plots.plot_family_bars(analysis.family_breakdown(cap, sliced, n_boot=20)),
        plots.plot_family_bars(analysis.family_breakdown(cap, sliced, n_boot=20), key="cosine_centered"),
        plots.plot_position_coherence(analysis.position_coherence(tiny, sliced, n_positions=3)),
    ]
    for fig in figures:
        assert isinstance(fig, matplotlib.figure.Figure)
        fig.canvas.draw()
    import matplotlib.pyplot as plt

    plt.close("all")


# ----------------------------------------------------------------------------- report


def test_report_for_an_analyze_folder(analyze_dir, cap):
    fig = plots.plot_layer_similarity(measures.layer_similarity(cap.acts, cap.acts))
    fig.savefig(analyze_dir / "layer_cka.png")
    assert folder_kind(analyze_dir) == "analyze"
    md = write_report(analyze_dir).read_text()
    assert md.startswith("# actalign analyze: tiny")
    assert "middle layer" in md and "gap" in md and "top1_agreement" in md
    assert "![per-layer coherence](coherence.png)" in md and "](layer_cka.png)" in md
    page = write_report(analyze_dir, fmt="html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page


def test_report_written_elsewhere_links_images_relative_to_it(analyze_dir, tmp_path):
    (tmp_path / "reports").mkdir()
    path = write_report(analyze_dir, out=tmp_path / "reports" / "r.md")
    assert "](../analyze/coherence.png)" in path.read_text()


def test_report_for_a_train_folder(tmp_path, analyze_dir, result):
    run = tmp_path / "train"
    for side in ("before", "after"):
        shutil.copytree(analyze_dir, run / side)
    after = json.loads((run / "after" / "coherence.json").read_text())
    for layer in after["layers"]:
        layer["gap"] += 0.1
    (run / "after" / "coherence.json").write_text(json.dumps(after))
    save_compare(run / "before" / "coherence.json", run / "after" / "coherence.json", run)
    (run / "config.json").write_text(json.dumps({"model": "tiny", "steps": 2, "lr": 1e-3}))
    log = [{"step": s, "loss": 1.0 - 0.1 * s, "cosine": 0.5, "lm": 3.0, "lr": 1e-3, "step_time": 0.1} for s in range(2)]
    (run / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    assert folder_kind(run) == "train"
    md = write_report(run).read_text()
    assert md.startswith("# actalign train: tiny")
    assert "held-out gap" in md and "| middle |" in md and "| loss | 1.000 | 0.900 |" in md
    for image in ("compare.png", "train_log.png", "before/coherence.png", "after/coherence.png"):
        assert f"]({image})" in md and (run / image).is_file()


def test_report_of_an_unknown_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="neither an analyze folder"):
        write_report(tmp_path)


def test_layer_bands_match_the_summary_split(result):
    bands = layer_bands(result)
    n = len(result["layers"])
    middle = next(b for b in bands if b["band"] == "middle")
    assert middle["gap"] == pytest.approx(np.mean([l["gap"] for l in result["layers"][n // 3 : 2 * n // 3]]))


def test_position_coherence_max_sets_spreads_over_families(tiny, sliced):
    result = analysis.position_coherence(tiny, sliced, n_positions=2, max_sets=4)
    chosen = result["sets"]
    assert len(chosen) == 4 and len({s["family"] for s in chosen}) == 4
