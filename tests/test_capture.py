"""Pooled capture equals the activations TransformerLens caches, whatever the padding and batch size."""

import pytest
import torch

from actalign.capture import capture, hook_names, pad_batch, pool_weights, pooled_forward, tokenize

PROMPTS = [
    "The capital of France is",
    "Bob",
    "Alice and Bob are talking together in the kitchen",
    "Hi",
    "Please summarize the following text.",
    "How would you feel about being shut down?",
    "Two plus three equals",
    "The chemical symbol for gold is",
]


def cached_reference(model, prompt, names, pool):
    """Unpadded single-prompt run_with_cache, pooled by hand."""
    ids = torch.tensor([tokenize(model, [prompt])[0]])
    _, cache = model.bridge.run_with_cache(ids, names_filter=lambda n: n in names)
    stacked = torch.stack([cache[n][0] for n in names])  # [layer, pos, d]
    return stacked[:, -1] if pool == "last" else stacked.mean(1)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("batch_size", [1, 7])
@pytest.mark.parametrize("pool", ["last", "mean"])
def test_pooled_capture_matches_run_with_cache(tiny, padding_side, batch_size, pool):
    cap = capture(tiny, PROMPTS, pool=pool, padding_side=padding_side, batch_size=batch_size, progress=False)
    names = hook_names(tiny.n_layers)
    assert cap.acts.shape == (len(PROMPTS), tiny.n_layers + 1, tiny.d_model)
    for i, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(cap.acts[i], cached_reference(tiny, prompt, names, pool), atol=1e-5, rtol=1e-5)


def test_last_token_logprobs_match_unpadded_logits(tiny):
    cap = capture(tiny, PROMPTS, padding_side="left", batch_size=3, progress=False)
    for i, prompt in enumerate(PROMPTS):
        logits = tiny.bridge(torch.tensor([tokenize(tiny, [prompt])[0]]))
        torch.testing.assert_close(cap.next_logprobs[i], torch.log_softmax(logits[0, -1], -1), atol=1e-5, rtol=1e-5)


def test_layers_are_embedding_then_blocks_and_other_hooks_selectable(tiny):
    assert hook_names(3) == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    cap = capture(tiny, PROMPTS[:3], hook="mlp_out", progress=False, keep_logprobs=False)
    assert cap.acts.shape[1] == tiny.n_layers and cap.next_logprobs is None
    with pytest.raises(ValueError, match="unknown hook"):
        hook_names(3, "resid_everywhere")
    with pytest.raises(ValueError, match="unknown pool"):
        capture(tiny, PROMPTS[:2], pool="max", progress=False)


def test_pool_weights_rows_sum_to_one_and_pick_real_tokens():
    _, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
    last = pool_weights(mask, "last")
    assert last.tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    mean = pool_weights(mask, "mean")
    assert torch.allclose(mean.sum(-1), torch.ones(2)) and mean[1].tolist() == [0.0, 0.0, 1.0]
    _, mask_right = pad_batch([[5, 6, 7], [8, 9]], pad_id=0, side="right")
    suffix = pool_weights(mask_right, "suffix", suffix_len=torch.tensor([2, 1]))
    assert suffix.tolist() == [[0.0, 0.5, 0.5], [0.0, 1.0, 0.0]]


def test_pooled_forward_keeps_the_graph_for_training(tiny):
    rows = tokenize(tiny, PROMPTS[:4])
    ids, mask = pad_batch(rows, tiny.tokenizer.pad_token_id, "right")
    pooled, logits = pooled_forward(tiny, ids, mask, pool_weights(mask, "mean"), hook_names(tiny.n_layers))
    assert pooled.requires_grad
    pooled[:, -1].pow(2).sum().backward()
    grads = [p.grad for p in tiny.hf_model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    tiny.hf_model.zero_grad(set_to_none=True)


def test_chat_template_wraps_prompts(tiny):
    plain = tokenize(tiny, ["Hello there"])[0]
    chat = tokenize(tiny, ["Hello there"], chat=True)[0]
    assert len(chat) > len(plain)
    cap = capture(tiny, ["Hello there", "Hi there"], chat=True, progress=False)
    assert torch.isfinite(cap.acts).all()
