"""Retention text: the bundled plain-English corpus for the ``lm`` / text-anchor terms and perplexity."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

from actalign.capture import pad_batch
from actalign.losses import lm_loss
from actalign.models import LoadedModel


def bundled_text(split: str = "train") -> str:
    """The bundled retention corpus: ``train`` (~94 KB) or ``heldout`` (~24 KB), disjoint paragraphs."""
    if split not in ("train", "heldout"):
        raise ValueError(f"retention split must be 'train' or 'heldout', got {split!r}")
    return Path(str(resources.files("actalign") / "data" / f"retention_{split}.txt")).read_text(encoding="utf-8")


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def token_chunks(model: LoadedModel, text: str, seq_len: int) -> list[list[int]]:
    """Each paragraph tokenized (with the tokenizer's special tokens) and cut into pieces of at most
    ``seq_len`` tokens; pieces shorter than 8 tokens are dropped."""
    chunks = []
    for paragraph in paragraphs(text):
        ids = model.tokenizer(paragraph)["input_ids"]
        chunks.extend(ids[i : i + seq_len] for i in range(0, len(ids), seq_len))
    return [c for c in chunks if len(c) >= 8]


def batch_chunks(model: LoadedModel, chunks: list[list[int]]) -> tuple[Int[Tensor, "b p"], Int[Tensor, "b p"]]:
    return pad_batch(chunks, model.tokenizer.pad_token_id, "right")


@torch.no_grad()
def perplexity(model: LoadedModel, text: str, seq_len: int = 64, batch_size: int = 16, max_chunks: int | None = None) -> float:
    """exp(mean next-token cross-entropy) over all target tokens of ``text``'s chunks."""
    chunks = token_chunks(model, text, seq_len)[:max_chunks]
    total_nll, total_tokens = 0.0, 0
    for i in range(0, len(chunks), batch_size):
        ids, mask = (t.to(model.device) for t in batch_chunks(model, chunks[i : i + batch_size]))
        logits = model.bridge(ids, attention_mask=mask)
        n_targets = int(mask[:, 1:].sum())
        total_nll += float(lm_loss(logits, ids, mask)) * n_targets
        total_tokens += n_targets
    return math.exp(total_nll / total_tokens)
