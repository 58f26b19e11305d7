"""The command line end to end on the tiny model."""

import json
import subprocess
import sys

from actalign.cli import main
from actalign.variants import load_bundled, save_variant_sets

REQUIRED_LAYER_FIELDS = {"layer", "cosine", "cosine_null", "cosine_centered", "cosine_centered_null", "cka", "gap", "gap_ci"}


def test_analyze_tiny_writes_contract_files(tmp_path, capsys):
    sets = load_bundled()[::6]  # 30 sets across the families keeps this fast
    save_variant_sets(sets, tmp_path / "sets.jsonl")
    code = main(["analyze", "--model", "tiny", "--variants", str(tmp_path / "sets.jsonl"), "--out", str(tmp_path / "out"), "--n-boot", "200"])
    assert code == 0
    result = json.loads((tmp_path / "out" / "coherence.json").read_text())
    assert result["model"] == "tiny" and result["hook"] == "resid_post" and result["pool"] == "last"
    assert result["n_sets"] == len(sets) and result["n_prompts"] == sum(len(s.variants) for s in sets)
    assert [layer["layer"] for layer in result["layers"]] == list(range(4))  # embeddings + 3 blocks
    for layer in result["layers"]:
        assert REQUIRED_LAYER_FIELDS <= layer.keys()
        assert layer["gap"] == layer["cosine_centered"] - layer["cosine_centered_null"]
        assert layer["gap_ci"][0] <= layer["gap"] <= layer["gap_ci"][1]
        assert -1 <= layer["cosine"] <= 1 and -1 <= layer["cka"] <= 1
    assert {"top1_agreement", "top1_agreement_null", "sym_kl", "answer_accuracy"} <= result["output"].keys()
    assert (tmp_path / "out" / "coherence.png").stat().st_size > 10_000
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model"] == "tiny" and config["variants"].endswith("sets.jsonl")
    assert "wrote" in capsys.readouterr().out


def test_analyze_mean_pool_and_other_hook(tmp_path):
    save_variant_sets(load_bundled()[::12], tmp_path / "sets.jsonl")
    code = main(["analyze", "--model", "tiny", "--variants", str(tmp_path / "sets.jsonl"), "--out", str(tmp_path / "o"), "--pool", "mean", "--hook", "attn_out", "--n-boot", "50"])
    result = json.loads((tmp_path / "o" / "coherence.json").read_text())
    assert code == 0 and result["pool"] == "mean" and result["hook"] == "attn_out" and len(result["layers"]) == 3


def test_bad_variant_file_gives_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "family": "f", "variants": ["one only"]}\n')
    assert main(["analyze", "--model", "tiny", "--variants", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1:" in err and "at least 2 variants" in err
    assert not (tmp_path / "o").exists()


def test_unknown_model_is_a_clear_error(tmp_path, capsys):
    assert main(["analyze", "--model", "no such model", "--out", str(tmp_path / "o")]) == 2
    assert "accepted --model values" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "actalign", "--help"], capture_output=True, text=True, check=True).stdout
    assert "analyze" in out


def test_compare_reports_paired_delta_from_per_set_sums(tmp_path):
    from actalign.coherence import coherence_from_capture, pair_sums_from_result
    from actalign.capture import Capture
    from actalign.evaluate import compare_results
    import torch

    sets = load_bundled()[:40]
    g = torch.Generator().manual_seed(0)
    index = torch.tensor([i for i, s in enumerate(sets) for _ in s.variants])
    centres = torch.randn(len(sets), 3, 16, generator=g)[index]
    noisy = centres + torch.randn(len(index), 3, 16, generator=g)
    names = ["a", "b", "c"]
    before = coherence_from_capture(Capture(noisy, index, names), sets, n_boot=200)
    after = coherence_from_capture(Capture(noisy + 0.5 * (centres - noisy), index, names), sets, n_boot=200)
    assert len(before["sets"]) == 40 and len(before["sets"][0]["within_centered_sum"]) == 3
    sums = pair_sums_from_result(before, [s.id for s in sets])
    within, null = sums.means()
    assert [round(float(w - n), 6) for w, n in zip(within, null)] == [round(l["gap"], 6) for l in before["layers"]]
    comparison = compare_results(before, after)
    assert comparison["n_layers_gap_delta_ci_above_zero"] == 3
    assert all(row["gap_delta_ci"][0] > 0 for row in comparison["layers"])


def test_report_command_and_threads_flag(tmp_path, capsys):
    import torch

    save_variant_sets(load_bundled()[::12], tmp_path / "sets.jsonl")
    threads = torch.get_num_threads()
    try:
        assert main(["analyze", "--model", "tiny", "--variants", str(tmp_path / "sets.jsonl"), "--out", str(tmp_path / "out"),
                     "--n-boot", "50", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert main(["report", str(tmp_path / "out")]) == 0
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "coherence.png" in markdown and "gap" in markdown
    assert main(["report", str(tmp_path / "out"), "--format", "html", "--out", str(tmp_path / "r.html")]) == 0
    assert "data:image/png;base64" in (tmp_path / "r.html").read_text()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
