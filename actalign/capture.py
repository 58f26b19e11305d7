"""Capture residual-stream activations for every prompt, pooled per prompt, at every layer.

Hooks pool each layer's ``[batch, pos, d_model]`` activation down to ``[batch, d_model]`` inside the
forward pass, so memory stays O(prompts x layers x d_model) and no per-token cache is ever kept.
The same hooks serve training: :func:`pooled_forward` keeps the graph when called with grad enabled.

Layers: for ``resid_post`` (the default) layer 0 is the embedding output (``blocks.0.hook_resid_pre``)
and layer ``l + 1`` is block ``l``'s ``hook_resid_post``; other hook points give one layer per block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import einops
import torch
from jaxtyping import Float, Int, jaxtyped
from beartype import beartype as typechecker
from torch import Tensor
from tqdm.auto import tqdm

from actalign.models import LoadedModel

HOOK_POINTS = {
    "resid_post": "blocks.{layer}.hook_resid_post",
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
}
POOLS = ("last", "mean", "suffix")
EMBEDDING_HOOK = "blocks.0.hook_resid_pre"


@dataclass
class Capture:
    """Pooled activations of a list of prompts.

    acts: ``[prompt, layer, d_model]`` float32; ``set_index[p]`` is prompt p's set;
    ``next_logprobs`` (when kept): ``[prompt, vocab]`` log-probabilities of the next token after the
    prompt's last token.
    """

    acts: Float[Tensor, "prompt layer d_model"]
    set_index: Int[Tensor, "prompt"]
    layer_names: list[str]
    next_logprobs: Float[Tensor, "prompt vocab"] | None = None
    meta: dict = field(default_factory=dict)


def hook_names(n_layers: int, hook: str = "resid_post") -> list[str]:
    """Hook names captured for ``hook``, in layer order (embedding output first for resid_post)."""
    if hook not in HOOK_POINTS:
        raise ValueError(f"unknown hook {hook!r}; choose one of {sorted(HOOK_POINTS)}")
    names = [HOOK_POINTS[hook].format(layer=layer) for layer in range(n_layers)]
    return [EMBEDDING_HOOK, *names] if hook == "resid_post" else names


def format_prompts(model: LoadedModel, prompts: Sequence[str], chat: bool) -> list[str]:
    """Wrap each prompt as a user turn in the model's chat template when ``chat``."""
    if not chat:
        return list(prompts)
    if not getattr(model.tokenizer, "chat_template", None):
        raise ValueError(f"model {model.name!r} has no chat template; run without --chat")
    return [
        model.tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]


def tokenize(model: LoadedModel, prompts: Sequence[str], chat: bool = False) -> list[list[int]]:
    """Token ids per prompt, using the tokenizer's own special-token convention (none added in chat mode,
    where the template already carries them)."""
    texts = format_prompts(model, prompts, chat)
    ids = model.tokenizer(texts, add_special_tokens=not chat)["input_ids"]
    empty = [p for p, row in zip(prompts, ids) if not row]
    if empty:
        raise ValueError(f"prompt {empty[0]!r} tokenizes to nothing; remove empty prompts")
    return ids


def pad_batch(
    rows: Sequence[Sequence[int]], pad_id: int, side: str = "right"
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Pad token rows to a rectangle; returns (input_ids, attention_mask)."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


@jaxtyped(typechecker=typechecker)
def pool_weights(
    attention_mask: Int[Tensor, "batch pos"], pool: str, suffix_len: Int[Tensor, "batch"] | None = None
) -> Float[Tensor, "batch pos"]:
    """Per-position pooling weights (rows sum to 1): ``last`` real token, ``mean`` over real tokens, or
    ``suffix``: mean over the last ``suffix_len[b]`` real tokens of row b."""
    mask = attention_mask.float()
    if pool == "mean":
        return mask / mask.sum(-1, keepdim=True)
    # rank of each real token counted from the end: 0 for the last real token
    from_end = (mask.flip(-1).cumsum(-1).flip(-1) - 1) * mask - (1 - mask)
    if pool == "last":
        return (from_end == 0).float()
    if pool == "suffix":
        if suffix_len is None:
            raise ValueError("pool='suffix' needs suffix_len (tokens of the suffix shared by a set's variants)")
        chosen = (from_end >= 0) & (from_end < suffix_len.clamp(min=1)[:, None])
        return chosen.float() / chosen.float().sum(-1, keepdim=True)
    raise ValueError(f"unknown pool {pool!r}; choose one of {POOLS}")


def pooled_forward(
    model: LoadedModel,
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"],
    weights: Float[Tensor, "batch pos"],
    names: Sequence[str],
    logits: str | None = "all",
    runner: torch.nn.Module | None = None,
) -> tuple[Float[Tensor, "batch layer d_model"], Float[Tensor, "batch pos vocab"] | None]:
    """One forward pass; returns pooled activations at ``names`` (float32) and the logits: at every
    position (``"all"``), only at the final position (``"last"``: needs left padding, skips the
    vocabulary projection elsewhere), or none.

    Differentiable when grad is enabled: hooks pool the live tensors and never detach. ``runner``:
    the module to call instead of ``model.bridge`` (the DDP-wrapped bridge in multi-process training).
    """
    if logits not in ("all", "last", None):
        raise ValueError(f"logits must be 'all', 'last' or None, got {logits!r}")
    extra = {}
    if logits == "last":
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("logits='last' needs left padding (every row's last token real)")
        extra["logits_to_keep"] = 1
    device = model.device
    weights = weights.to(device=device, dtype=torch.float32)
    pooled: dict[int, Tensor] = {}

    def make_hook(slot: int):
        def hook(activation: Tensor, hook) -> Tensor:
            with torch.autocast(device.type, enabled=False):  # pool in float32 under bfloat16 autocast
                pooled[slot] = einops.einsum(activation.float(), weights, "b p d, b p -> b d")
            return activation

        return hook

    with model.bridge.hooks(fwd_hooks=[(name, make_hook(slot)) for slot, name in enumerate(names)]):
        output = (runner or model.bridge)(
            input_ids.to(device), attention_mask=attention_mask.to(device), return_type="logits" if logits else None, **extra
        )
    missing = [names[i] for i in range(len(names)) if i not in pooled]
    if missing:
        raise RuntimeError(f"hooks never fired for {missing}; this model does not expose them")
    stacked = torch.stack([pooled[i] for i in range(len(names))], dim=1)
    return stacked, output if logits else None


def final_logits(
    logits: Float[Tensor, "batch pos vocab"], attention_mask: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch vocab"]:
    """Logits of the token after each row's last real token (``logits`` may hold only the final
    position, as ``pooled_forward(..., logits="last")`` returns)."""
    if logits.shape[1] == 1:
        return logits[:, 0]
    last = pool_weights(attention_mask.cpu(), "last").argmax(-1).to(logits.device)
    return logits[torch.arange(logits.shape[0], device=logits.device), last]


def last_token_logprobs(
    logits: Float[Tensor, "batch pos vocab"], attention_mask: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch vocab"]:
    """Log-probabilities (float32) of the token after each row's last real token."""
    return torch.log_softmax(final_logits(logits, attention_mask).float(), dim=-1)


@torch.no_grad()
def capture(
    model: LoadedModel,
    prompts: Sequence[str],
    set_index: Sequence[int] | None = None,
    hook: str = "resid_post",
    pool: str = "last",
    batch_size: int = 16,
    chat: bool = False,
    padding_side: str = "left",
    keep_logprobs: bool = True,
    progress: bool = True,
) -> Capture:
    """Pooled activations of every prompt at every layer (no grad).

    Prompts are batched in order of token length to limit padding; results come back in input order.
    With left padding (the default) only the final position goes through the unembedding.
    """
    if pool == "suffix":
        raise ValueError("pool='suffix' is for training batches of sets; use 'last' or 'mean' for analysis")
    pool_weights(torch.ones(1, 1, dtype=torch.long), pool)  # validates the name early
    names = hook_names(model.n_layers, hook)
    rows = tokenize(model, prompts, chat)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    acts = torch.empty(len(rows), len(names), model.d_model, dtype=torch.float32)
    logprobs = None
    pad_id = model.tokenizer.pad_token_id
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=f"capture {hook}/{pool}", disable=not progress, leave=False):
        ids, mask = pad_batch([rows[i] for i in batch], pad_id, padding_side)
        logits_mode = ("last" if padding_side == "left" else "all") if keep_logprobs else None
        pooled, logits = pooled_forward(model, ids, mask, pool_weights(mask, pool), names, logits=logits_mode)
        acts[batch] = pooled.float().cpu()
        if keep_logprobs:
            batch_logprobs = last_token_logprobs(logits, mask).cpu()
            if logprobs is None:
                logprobs = torch.empty(len(rows), batch_logprobs.shape[-1], dtype=torch.float32)
            logprobs[batch] = batch_logprobs
    index = torch.tensor(list(set_index) if set_index is not None else range(len(rows)), dtype=torch.long)
    meta = {"hook": hook, "pool": pool, "chat": chat, "n_tokens": [len(r) for r in rows]}
    return Capture(acts=acts, set_index=index, layer_names=names, next_logprobs=logprobs, meta=meta)
