"""Model names resolve offline; tiny is seeded; folders round-trip; conversion is atomic."""

import pytest
import torch

import actalign.models as models
from actalign.models import build_tiny, load_model


def test_unknown_model_lists_accepted_names(tmp_path):
    with pytest.raises(ValueError, match="accepted --model values: 'smollm2-135m'.*'tiny'"):
        load_model("not a model name!")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        load_model(str(tmp_path / "empty"))


def test_tiny_is_seeded_and_deterministic():
    a, _ = build_tiny(seed=0)
    b, _ = build_tiny(seed=0)
    c, _ = build_tiny(seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_tiny_exposes_standard_hooks(tiny):
    ids = torch.tensor([tiny.tokenizer("The capital of France is")["input_ids"]])
    _, cache = tiny.bridge.run_with_cache(ids)
    for name in ("blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", f"blocks.{tiny.n_layers - 1}.hook_resid_post"):
        assert name in cache


def test_saved_folder_loads_back_with_identical_outputs(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "ckpt")
    again = load_model(str(tmp_path / "ckpt"))
    ids = torch.tensor([tiny.tokenizer("Alice and Bob are talking together")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(tiny.bridge(ids), again.bridge(ids))


def test_interrupted_conversion_leaves_no_model(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTALIGN_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "smollm2_gguf_path", lambda: tmp_path / "fake.gguf")

    def half_written(gguf, out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt("killed mid-conversion")

    monkeypatch.setattr(models, "_convert_gguf", half_written)
    with pytest.raises(KeyboardInterrupt):
        models.ensure_smollm2_folder()
    assert not (tmp_path / models.SMOLLM2_DIRNAME).exists()
    assert list(tmp_path.iterdir()) == []  # the staging folder is cleaned up too
