"""LLM paraphrasing: a few-shot chat prompt, sampled candidates, and chat-artefact cleaning.

The model is loaded as a plain Hugging Face causal LM (not through the TransformerLens bridge,
whose wrapped attention does not support the key/value cache ``generate`` relies on), from the same
sources ``actalign.models.load_model`` accepts: ``smollm2-135m``, ``tiny``, a local folder or a hub
name. Prompts that stop right before their answer ("The capital of France is") are asked for
paraphrases that stop there too; the judge then enforces it.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from actalign.generate.base import BasePrompt
from actalign.generate.lexicon import normalise_space, prompt_kind

SYSTEM = (
    "You rewrite text in different words while keeping exactly the same meaning. "
    "Reply with the rewritten text only, on a single line, with no quotes and no explanation."
)
COMPLETION_TASK = (
    "Rewrite this unfinished sentence in different words. Keep it unfinished: it must end right "
    "before the missing final word, and must not contain that word.\nSentence: {prompt}"
)
TEXT_TASK = "Rewrite this {what} in different words with exactly the same meaning.\n{What}: {prompt}"
WHAT = {"question": "question", "instruction": "instruction", "statement": "sentence"}
SHOTS = {
    "completion": [
        ("The author of Hamlet is", "Hamlet was written by"),
        ("The tallest mountain on Earth is", "Earth's highest mountain is"),
        ("The inventor of the telephone was", "The telephone was invented by"),
    ],
    "question": [
        ("What time does the museum close?", "When does the museum close?"),
        ("Do you like working with numbers?", "Do you enjoy working with numbers?"),
        ("How can I improve my handwriting?", "What can I do to improve my handwriting?"),
    ],
    "instruction": [
        ("List three kinds of fruit.", "Name three types of fruit."),
        ("Describe your ideal weekend.", "Tell me what your ideal weekend would be like."),
        ("Rewrite the paragraph below in plain English.", "Put the paragraph below into plain English."),
    ],
    "statement": [
        ("Lena is painting the fence.", "The fence is being painted by Lena."),
        ("The train was late this morning.", "This morning the train arrived late."),
        ("Two boys are playing chess.", "A pair of boys are having a game of chess."),
    ],
}
PREAMBLE_RE = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly)\b[,!.]?\s*)?"
    r"(?:(?:here(?:'s| is)|this is)\b[^:\n]{0,60}:|(?:paraphrased|paraphrase|rewritten|rewrite|reworded|output|"
    r"answer|sentence|text|question|instruction|assistant|response|result)"
    r"(?: (?:sentence|text|version|question|instruction|prompt|paraphrase))?\s*:)\s*",
    flags=re.IGNORECASE,
)
QUOTES = "\"'“”‘’`*"
BLANK_RE = re.compile(r"\s*(?:_{2,}|\.{3}|…|\[(?:blank|mask|answer)\]|<blank>)\s*[.?!]?\s*$", flags=re.IGNORECASE)
SENTENCE_SPLIT_RE = re.compile(r"(?<=[.?!])\s+(?=[A-Z\"'])")


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings; ``batch_size`` is the number of base prompts per ``generate`` call."""

    temperature: float = 0.9
    top_p: float = 0.95
    max_new_tokens: int = 40
    batch_size: int = 4


@dataclass
class ParaphraseModel:
    """A plain Hugging Face causal LM and its tokenizer (with a chat template)."""

    name: str
    model: object
    tokenizer: object

    @property
    def max_positions(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 4096) or 4096)


@dataclass(frozen=True)
class Sample:
    """One sampled candidate: the raw decoded text and the cleaned paraphrase."""

    raw: str
    text: str


def load_paraphrase_model(name: str, device: str = "cpu") -> ParaphraseModel:
    """Load ``name`` (``smollm2-135m``, ``tiny``, a local HF folder or a hub name) for sampling."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actalign import models

    if name == "tiny":
        model, tokenizer = models.build_tiny(seed=models.TINY_SEED)
    else:
        if name in ("smollm2-135m", "smollm2"):
            ref = str(models.ensure_smollm2_folder())
        elif Path(name).expanduser().exists():
            ref = str(Path(name).expanduser())
        else:
            ref = name
        try:
            tokenizer = AutoTokenizer.from_pretrained(ref)
            model = AutoModelForCausalLM.from_pretrained(ref)
        except OSError as err:
            raise ValueError(f"could not load model {name!r} for paraphrasing: {err}. {models.describe_accepted()}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"model {name!r} has no chat template; LLM paraphrasing needs an instruct/chat model")
    return ParaphraseModel(name, model.to(device).eval(), tokenizer)


def build_messages(base: BasePrompt, shots: int = 3) -> list[dict[str, str]]:
    """System prompt, ``shots`` worked examples of the base's kind, then the base prompt."""
    kind = prompt_kind(base.prompt, base.answer)
    messages = [{"role": "system", "content": SYSTEM}]
    for source, target in SHOTS[kind][:shots]:
        messages += [{"role": "user", "content": _task(kind, source)}, {"role": "assistant", "content": target}]
    return messages + [{"role": "user", "content": _task(kind, base.prompt)}]


def _task(kind: str, prompt: str) -> str:
    if kind == "completion":
        return COMPLETION_TASK.format(prompt=prompt)
    what = WHAT[kind]
    return TEXT_TASK.format(what=what, What=what.capitalize(), prompt=prompt)


def chat_prompt(pm: ParaphraseModel, base: BasePrompt, max_new_tokens: int) -> str:
    """The chat-formatted prompt, with as many shots as fit the model's context."""
    for shots in range(3, -1, -1):
        text = pm.tokenizer.apply_chat_template(build_messages(base, shots), tokenize=False, add_generation_prompt=True)
        if len(pm.tokenizer(text, add_special_tokens=False)["input_ids"]) + max_new_tokens <= pm.max_positions:
            return text
    raise ValueError(f"base prompt {base.id!r} does not fit model {pm.name!r}'s context of {pm.max_positions} tokens")


def clean_candidate(raw: str, base: BasePrompt) -> str:
    """Strip chat artefacts: preambles ("Sure! Here's a paraphrase:"), labels ("Paraphrase:"),
    wrapping quotes, extra lines, trailing explanations, and for completion prompts blanks
    ("___", "...") and a trailing colon. Keeps as many sentences as the base has."""
    lines = [line.strip() for line in raw.splitlines() if line.strip()]
    lines = [line for line in lines if PREAMBLE_RE.sub("", line).strip()]
    if not lines:
        return ""
    text = "".join(ch for ch in lines[0] if ch.isprintable() and ch != "\ufffd")
    for _ in range(3):
        text = PREAMBLE_RE.sub("", text).strip()
    text = _strip_quotes(text)
    text = re.sub(r"\s*\([^)]*\)\s*$", "", text)  # trailing parenthetical explanation
    text = re.split(r"\s+[-–—]\s+", text)[0]  # "X - this keeps the meaning"
    text = _keep_sentences(text, _sentence_count(base.prompt))
    if prompt_kind(base.prompt, base.answer) == "completion":
        text = BLANK_RE.sub("", text).rstrip(" :")
    return normalise_space(_strip_quotes(text))


def _strip_quotes(text: str) -> str:
    text = text.strip()
    if text[:1] in QUOTES:
        closing = next((i for i in range(len(text) - 1, 0, -1) if text[i] in QUOTES), None)
        text = text[1:closing] if closing else text[1:]
    return text.strip().strip(QUOTES).strip()


def _sentence_count(text: str) -> int:
    return len(SENTENCE_SPLIT_RE.split(text.strip()))


def _keep_sentences(text: str, count: int) -> str:
    return " ".join(SENTENCE_SPLIT_RE.split(text.strip())[:count])


def sample_paraphrases(
    pm: ParaphraseModel,
    bases: Sequence[BasePrompt],
    n: int,
    seed: int = 0,
    config: SamplingConfig = SamplingConfig(),
    progress: bool = True,
) -> dict[str, list[Sample]]:
    """``n`` sampled, cleaned candidates per base prompt (keyed by set id).

    Bases are batched ``config.batch_size`` at a time (left padding); each batch is seeded with
    ``torch.manual_seed(seed + index of its first base)``, so a run is reproducible.
    """
    from tqdm.auto import tqdm

    tokenizer = pm.tokenizer
    prompts = [chat_prompt(pm, b, config.max_new_tokens) for b in bases]
    out: dict[str, list[Sample]] = {}
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        starts = range(0, len(bases), config.batch_size)
        for start in tqdm(starts, desc=f"paraphrasing with {pm.name}", unit="batch", disable=not progress):
            chunk = bases[start : start + config.batch_size]
            raws = _generate(pm, prompts[start : start + config.batch_size], n, seed + start, config)
            for i, base in enumerate(chunk):
                out[base.id] = [Sample(r, clean_candidate(r, base)) for r in raws[i * n : (i + 1) * n]]
    finally:
        tokenizer.padding_side = side
    return out


def _generate(pm: ParaphraseModel, prompts: Sequence[str], n: int, seed: int, config: SamplingConfig) -> list[str]:
    """Decoded continuations: ``n`` per prompt, grouped by prompt.

    The prompts are run through the model once, and their key/value cache is repeated ``n`` times
    for sampling, instead of letting ``generate`` re-encode each prompt ``n`` times (the few-shot
    prompt is much longer than the paraphrase, so this is most of the work).
    """
    import torch

    enc = pm.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(pm.model.device)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    cache = _prefill(pm.model, ids[:, :-1], mask[:, :-1])
    cache.batch_repeat_interleave(n)
    torch.manual_seed(seed)
    with torch.no_grad():
        generated = pm.model.generate(
            input_ids=ids.repeat_interleave(n, dim=0),
            attention_mask=mask.repeat_interleave(n, dim=0),
            do_sample=True,
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
            pad_token_id=pm.tokenizer.pad_token_id,
            stop_strings=["\n"],
            tokenizer=pm.tokenizer,
            **{_cache_argument(pm.model): cache},
        )
    return pm.tokenizer.batch_decode(generated[:, ids.shape[1] :], skip_special_tokens=True)


def _cache_argument(model) -> str:
    """The forward/generate keyword for a key/value cache (``cache`` in transformers 5, else
    ``past_key_values``)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _prefill(model, ids, mask):
    """Key/value cache of the (left-padded) prompts, positions counted from each first real token."""
    import torch
    from transformers import DynamicCache

    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    key = _cache_argument(model)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{key: DynamicCache()})
    return out.cache if key == "cache" else out.past_key_values
