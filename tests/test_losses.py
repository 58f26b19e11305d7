"""Alignment losses: zero for identical variants, positive otherwise, gradients only where chosen."""

import pytest
import torch

from actalign import losses
from actalign.capture import hook_names, pad_batch, pool_weights, pooled_forward, tokenize
from actalign.train import named_hf_parameters, select_trainable

SET_INDEX = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
WEIGHTS = losses.default_layer_weights(3)


def identical_variants(seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 3, 8, generator=g)
    return centres[SET_INDEX]


def noisy_variants(seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    return identical_variants(seed) + 0.5 * torch.randn(12, 3, 8, generator=g)


REPRESENTATION = {
    "cosine": lambda a: losses.cosine_loss(a, SET_INDEX, WEIGHTS, center=a.mean(0).detach()),
    "l2_stopgrad": lambda a: losses.l2_stopgrad_loss(a, SET_INDEX, WEIGHTS),
    "l2_stopgrad_canonical": lambda a: losses.l2_stopgrad_loss(a, SET_INDEX, WEIGHTS, canonical=torch.tensor([0, 3, 6, 9])),
    "cka": lambda a: losses.cka_loss(a, SET_INDEX, WEIGHTS),
}


@pytest.mark.parametrize("name", sorted(REPRESENTATION))
def test_representation_losses_zero_for_identical_positive_otherwise(name):
    loss = REPRESENTATION[name]
    assert float(loss(identical_variants())) == pytest.approx(0.0, abs=1e-5)
    assert float(loss(noisy_variants())) > 1e-3


@pytest.mark.parametrize("kind", ["sym_kl", "js"])
def test_output_consistency_zero_for_identical_positive_otherwise(kind):
    g = torch.Generator().manual_seed(3)
    per_set = torch.randn(4, 50, generator=g)
    assert float(losses.output_consistency_loss(per_set[SET_INDEX], SET_INDEX, kind)) == pytest.approx(0.0, abs=1e-6)
    noisy = per_set[SET_INDEX] + torch.randn(12, 50, generator=g)
    assert float(losses.output_consistency_loss(noisy, SET_INDEX, kind)) > 1e-3


def test_anchor_kl_zero_at_reference_and_matches_exact_kl_when_k_is_vocab():
    g = torch.Generator().manual_seed(4)
    ref, model = torch.randn(6, 20, generator=g), torch.randn(6, 20, generator=g)
    idx, logp = losses.topk_reference(ref, k=5)
    assert float(losses.anchor_kl_loss(ref, idx, logp)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.anchor_kl_loss(model, idx, logp)) > 0
    idx_full, logp_full = losses.topk_reference(ref, k=20)
    p, q = torch.log_softmax(ref, -1), torch.log_softmax(model, -1)
    exact = (p.exp() * (p - q)).sum(-1).mean()
    assert float(losses.anchor_kl_loss(model, idx_full, logp_full)) == pytest.approx(float(exact), abs=1e-4)


def test_lm_loss_ignores_padding():
    logits = torch.randn(2, 4, 10)
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    expected = torch.nn.functional.cross_entropy(torch.stack([logits[0, 0], logits[0, 1], logits[1, 0]]), torch.tensor([2, 3, 5]))
    assert float(losses.lm_loss(logits, ids, mask)) == pytest.approx(float(expected), abs=1e-6)


def test_running_mean_tracks_batches():
    running = losses.RunningMean(2, 3, momentum=0.5)
    first = running.update(torch.ones(4, 2, 3))
    second = running.update(3 * torch.ones(4, 2, 3))
    assert torch.allclose(first, torch.ones(2, 3)) and torch.allclose(second, 2 * torch.ones(2, 3))


LOSS_ON_MODEL = {
    "cosine": lambda acts, logits, idx: losses.cosine_loss(acts, idx, losses.default_layer_weights(acts.shape[1])),
    "l2_stopgrad": lambda acts, logits, idx: losses.l2_stopgrad_loss(acts, idx, losses.default_layer_weights(acts.shape[1])),
    "cka": lambda acts, logits, idx: losses.cka_loss(acts, idx, losses.default_layer_weights(acts.shape[1])),
    "output_kl": lambda acts, logits, idx: losses.output_consistency_loss(logits[:, -1], idx),
}


@pytest.mark.parametrize("name", sorted(LOSS_ON_MODEL))
def test_gradient_reaches_only_the_chosen_parameters(tiny, name):
    prompts = ["Alice and Bob are talking together", "Bob and Alice are talking together",
               "The capital of France is", "France's capital city is",
               "Two plus two equals", "Two added to two equals"]
    idx = torch.tensor([0, 0, 1, 1, 2, 2])
    trainable = select_trainable(tiny, "last:1")
    try:
        ids, mask = pad_batch(tokenize(tiny, prompts), tiny.tokenizer.pad_token_id, "left")
        acts, logits = pooled_forward(tiny, ids, mask, pool_weights(mask, "mean"), hook_names(tiny.n_layers), logits="last")
        LOSS_ON_MODEL[name](acts, logits, idx).backward()
        chosen = {id(p) for p in trainable}
        for param_name, param in named_hf_parameters(tiny):
            if id(param) not in chosen:
                assert param.grad is None, f"{param_name} is frozen but got a gradient"
        last_block = [p for n, p in named_hf_parameters(tiny) if f"layers.{tiny.n_layers - 1}.mlp" in n]
        assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in last_block)
        assert any(float(p.grad.abs().sum()) > 0 for p in trainable)
        block_params = [n for n, p in named_hf_parameters(tiny) if id(p) in chosen]
        assert all(f"layers.{tiny.n_layers - 1}." in n or n.endswith("norm.weight") for n in block_params)
    finally:
        select_trainable(tiny, "all")
        tiny.hf_model.zero_grad(set_to_none=True)
