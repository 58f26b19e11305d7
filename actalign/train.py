"""Alignment fine-tuning: make a model's representations and answers coherent across paraphrases,
held near the original by a KL anchor and a retention LM loss.

One optimizer step = ``grad_accum`` micro-batches; each micro-batch is ``sets_per_step`` variant sets
x ``variants_per_set`` variants (one forward with pooling hooks that keep the graph) plus
``retention_batch`` chunks of plain text. Which sets, variants and chunks a step uses is a pure
function of (seed, step, micro-batch), so a resumed run sees exactly the batches an uninterrupted
run would, and the weights and log come out bit-identical on CPU.

Several processes (``accelerate launch --multi_gpu`` / ``torchrun``, see :mod:`actalign.runtime`): each
takes whole sets of every micro-batch, loss terms are normalised by the micro-batch's global counts,
gradients are synchronised by DDP (or FSDP2 with ``fsdp``), and only rank 0 writes; the result equals
a single-process run with the same global batch up to float rounding.

Output folder: ``checkpoint/`` (HF folder + ``trainer_state.pt`` + ``COMPLETE`` marker, written to a
temporary folder and renamed), ``train_log.jsonl``, ``reference.pt`` (cached reference logits of
the original model), ``config.json``, and ``before/`` / ``after/`` evaluations on held-out families.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from actalign import losses
from actalign.capture import final_logits, hook_names, pad_batch, pool_weights, pooled_forward, tokenize
from actalign.models import LoadedModel, load_model
from actalign.retention import batch_chunks, bundled_text, token_chunks
from actalign.runtime import DEVICES, Runtime, full_state_dicts, load_optimizer_state, resolve_dtype, shard, shard_hf_model
from actalign.variants import VariantSet, bundled_path, flatten, load_variant_sets, split_by_family

REPRESENTATION_LOSSES = ("cosine", "l2_stopgrad", "cka")
OUTPUT_LOSSES = ("output_kl", "anchor_kl", "lm")
LOSS_NAMES = REPRESENTATION_LOSSES + OUTPUT_LOSSES


class CheckpointError(RuntimeError):
    """A checkpoint folder that cannot be resumed from (half-written or corrupt)."""


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.json`` beside the outputs."""

    model: str = "smollm2-135m"
    variants: str | None = None  # variant-set JSONL; default: the bundled corpus
    eval_variants: str | None = None  # held-out sets; default: a family split of ``variants``
    out: str = "runs/train"
    steps: int = 60
    sets_per_step: int = 4
    variants_per_set: int = 4
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 5
    min_lr_ratio: float = 0.1
    clip_grad: float = 1.0
    trainable: str = "all"  # "all" or "last:K" (last K blocks + final norm)
    hook: str = "resid_post"
    pool: str = "last"  # last | mean | suffix
    chat: bool = False
    loss_weights: dict = field(default_factory=lambda: {"cosine": 2.0, "output_kl": 1.0, "anchor_kl": 1.0, "lm": 1.0})
    output_kind: str = "sym_kl"  # sym_kl | js
    skip_embedding: bool = True
    retention_seq_len: int = 48
    retention_batch: int = 4
    anchor_topk: int = 32
    heldout_fraction: float = 0.25
    seed: int = 0
    eval_every: int = 0
    checkpoint_every: int = 20
    eval_batch_size: int = 16
    n_boot: int = 1000
    device: str = "auto"  # auto | cpu | cuda | mps (under a launcher: each process's own device)
    dtype: str = "float32"  # float32 | bfloat16 (autocast mixed precision, float32 master weights)
    gradient_checkpointing: bool = False
    fsdp: bool = False  # with several processes: shard parameters/gradients/optimizer state (FSDP2) instead of DDP

    def __post_init__(self) -> None:
        unknown = set(self.loss_weights) - set(LOSS_NAMES)
        if unknown:
            raise ValueError(f"unknown loss term(s) {sorted(unknown)}; choose from {LOSS_NAMES}")
        if not any(w > 0 for w in self.loss_weights.values()):
            raise ValueError(f"loss weights {self.loss_weights} train nothing; give at least one term a positive weight")
        if self.pool not in ("last", "mean", "suffix"):
            raise ValueError(f"pool must be last, mean or suffix, got {self.pool!r}")
        if not (self.trainable == "all" or re.fullmatch(r"last:\d+", self.trainable)):
            raise ValueError(f"trainable must be 'all' or 'last:K', got {self.trainable!r}")
        if self.variants_per_set < 2:
            raise ValueError("variants_per_set must be at least 2 (alignment compares variants)")
        resolve_dtype(self.dtype)
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "TrainConfig":
        """Read a JSON or YAML file of config fields; ``overrides`` win."""
        text = Path(path).read_text()
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown config field(s) {sorted(unknown)}")
        return cls(**{**data, **overrides})


# ----------------------------------------------------------------------------- data


@dataclass
class TrainData:
    train_sets: list[VariantSet]
    eval_sets: list[VariantSet]
    set_tokens: list[list[list[int]]]  # [set][variant] -> token ids
    prompt_offset: list[int]  # index of each set's first prompt in flatten(train_sets)
    chunks: list[list[int]]  # retention token chunks


def split_sets(cfg: TrainConfig) -> tuple[list[VariantSet], list[VariantSet]]:
    sets = load_variant_sets(cfg.variants or bundled_path())
    if cfg.eval_variants:
        eval_sets = load_variant_sets(cfg.eval_variants)
        shared = set(flatten(sets)[0]) & set(flatten(eval_sets)[0])
        if shared:
            raise ValueError(f"{len(shared)} prompt(s) appear in both training and eval sets, e.g. {sorted(shared)[0]!r}; remove them from one file")
        return sets, eval_sets
    return split_by_family(sets, cfg.heldout_fraction, cfg.seed)


def prepare_data(model: LoadedModel, cfg: TrainConfig) -> TrainData:
    train_sets, eval_sets = split_sets(cfg)
    set_tokens = [tokenize(model, s.variants, chat=cfg.chat) for s in train_sets]
    offsets = np.cumsum([0] + [len(s.variants) for s in train_sets])[:-1].tolist()
    chunks = token_chunks(model, bundled_text("train"), cfg.retention_seq_len)
    return TrainData(train_sets, eval_sets, set_tokens, offsets, chunks)


@dataclass
class MicroBatch:
    set_ids: list[int]
    variant_ids: list[list[int]]
    chunk_ids: list[int]


def plan_micro_batch(cfg: TrainConfig, data: TrainData, step: int, micro: int) -> MicroBatch:
    """The sets, variants and text chunks of one micro-batch: a pure function of (seed, step, micro)."""
    rng = np.random.default_rng([cfg.seed, step, micro])
    n_sets = min(cfg.sets_per_step, len(data.train_sets))
    set_ids = rng.choice(len(data.train_sets), size=n_sets, replace=False).tolist()
    variant_ids = []
    for s in set_ids:
        n_variants = len(data.train_sets[s].variants)
        variant_ids.append(sorted(rng.choice(n_variants, size=min(cfg.variants_per_set, n_variants), replace=False).tolist()))
    chunk_ids = rng.choice(len(data.chunks), size=min(cfg.retention_batch, len(data.chunks)), replace=False).tolist()
    return MicroBatch(set_ids, variant_ids, chunk_ids)


@dataclass
class Shard:
    """One process's part of a micro-batch: whole sets and whole text chunks, plus the micro-batch's
    global unit counts. Each loss term of a shard is (its sum over local units) / (global count), so
    the shards' terms add up to the single-process loss exactly, whatever the number of processes."""

    set_ids: list[int]
    variant_ids: list[list[int]]
    chunk_ids: list[int]
    n_prompts: int  # prompts in the whole micro-batch (cosine, l2, prompt anchor)
    n_pairs: int  # within-set prompt pairs in the whole micro-batch (output_kl)
    n_text_tokens: int  # retention tokens in the whole micro-batch (text anchor)
    n_targets: int  # next-token targets in the whole micro-batch (lm)


def shard_micro_batch(plan: MicroBatch, data: TrainData, rank: int = 0, world: int = 1) -> Shard:
    """Rank ``rank``'s sets and chunks of ``plan`` (round robin; a set never splits across processes)."""
    local_sets = shard(list(zip(plan.set_ids, plan.variant_ids)), rank, world)
    lengths = [len(data.chunks[c]) for c in plan.chunk_ids]
    return Shard(
        set_ids=[s for s, _ in local_sets],
        variant_ids=[v for _, v in local_sets],
        chunk_ids=shard(plan.chunk_ids, rank, world),
        n_prompts=sum(len(v) for v in plan.variant_ids),
        n_pairs=sum(len(v) * (len(v) - 1) // 2 for v in plan.variant_ids),
        n_text_tokens=sum(lengths),
        n_targets=sum(n - 1 for n in lengths),
    )


def check_world_size(cfg: TrainConfig, data: TrainData, world: int) -> None:
    """Every process needs at least one set (and one text chunk) per micro-batch."""
    if world == 1:
        return
    n_sets = min(cfg.sets_per_step, len(data.train_sets))
    if n_sets < world:
        raise ValueError(f"{world} processes but only {n_sets} variant sets per micro-batch; raise --sets-per-step to at least {world}")
    if text_losses_needed(cfg) and min(cfg.retention_batch, len(data.chunks)) < world:
        raise ValueError(f"{world} processes but retention_batch={cfg.retention_batch}; set it to at least {world}")
    if cfg.loss_weights.get("cka"):
        raise ValueError("the cka loss compares sets across the whole batch and is single-process only; use cosine or l2_stopgrad with several processes")


def autocast(runtime: Runtime | None):
    """The run's autocast context (bfloat16 or none); none without a runtime."""
    return runtime.autocast() if runtime else contextlib.nullcontext()


def prompt_padding(runtime: Runtime | None) -> str:
    """Left padding (only the final position is unembedded), except under bfloat16 autocast: there
    TransformerLens 4.3's attention turns the float32 padding mask into -inf and the queries of
    leading pads, which see no key, become NaN and spread; right padding has no such rows."""
    return "right" if runtime is not None and runtime.dtype == "bfloat16" else "left"


def shared_suffix_len(rows: list[list[int]]) -> int:
    """Number of trailing tokens shared by all rows."""
    n = 0
    while n < min(len(r) for r in rows) and len({r[-1 - n] for r in rows}) == 1:
        n += 1
    return n


# ----------------------------------------------------------------------------- reference (frozen original)


@torch.no_grad()
def compute_reference(model: LoadedModel, cfg: TrainConfig, data: TrainData, runtime: Runtime | None = None) -> dict:
    """Top-k next-token distributions of the original model, once, for every prompt and every
    retention chunk the run's schedule will use. With several processes each computes a share and
    all get the whole cache (so a resume may use any number of processes); with a sharded (FSDP)
    model, whose every forward involves all processes, each computes all of it in lockstep."""
    rank, world = (runtime.rank, runtime.world) if runtime and not runtime.fsdp else (0, 1)
    plans = [plan_micro_batch(cfg, data, step, micro) for step in range(cfg.steps) for micro in range(cfg.grad_accum)]
    prompt_ids = shard(sorted({data.prompt_offset[s] + v for p in plans for s, vs in zip(p.set_ids, p.variant_ids) for v in vs}), rank, world)
    chunk_ids = shard(sorted({c for p in plans for c in p.chunk_ids}), rank, world)
    flat_tokens = [row for rows in data.set_tokens for row in rows]
    names = hook_names(model.n_layers, cfg.hook)[-1:]
    reference = {"prompt": {}, "chunk": {}}
    quiet = runtime is not None and not runtime.is_main
    side = prompt_padding(runtime)
    for i in tqdm(range(0, len(prompt_ids), 32), desc="reference prompts", leave=False, disable=quiet):
        batch = prompt_ids[i : i + 32]
        ids, mask = pad_batch([flat_tokens[p] for p in batch], model.tokenizer.pad_token_id, side)
        with autocast(runtime):
            _, logits = pooled_forward(model, ids, mask, pool_weights(mask, "last"), names, logits="last" if side == "left" else "all")
        idx, logp = losses.topk_reference(final_logits(logits, mask), cfg.anchor_topk)
        for j, p in enumerate(batch):
            reference["prompt"][p] = (idx[j].cpu().clone(), logp[j].cpu().clone())
    for i in tqdm(range(0, len(chunk_ids), 16), desc="reference text", leave=False, disable=quiet):
        batch = chunk_ids[i : i + 16]
        ids, mask = (t.to(model.device) for t in batch_chunks(model, [data.chunks[c] for c in batch]))
        with autocast(runtime):
            logits = model.bridge(ids, attention_mask=mask)
        for j, c in enumerate(batch):
            length = len(data.chunks[c])
            reference["chunk"][c] = tuple(t.cpu().clone() for t in losses.topk_reference(logits[j, :length], cfg.anchor_topk))
    if world > 1:
        merged = {"prompt": {}, "chunk": {}}
        for part in runtime.gather_objects(reference):
            merged["prompt"].update(part["prompt"])
            merged["chunk"].update(part["chunk"])
        reference = merged
    return reference


# ----------------------------------------------------------------------------- parameters and optimizer


def named_hf_parameters(model: LoadedModel) -> list[tuple[str, torch.nn.Parameter]]:
    """Each parameter once, under its plain HF name, in a stable order."""
    seen, named = set(), []
    for name, param in model.hf_model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        named.append((name.replace("._original_component", ""), param))
    return sorted(named, key=lambda item: item[0])


def select_trainable(model: LoadedModel, spec: str) -> list[torch.nn.Parameter]:
    """Freeze everything but the chosen parameters: ``all`` or ``last:K`` (last K blocks + final norm)."""
    named = named_hf_parameters(model)
    if spec == "all":
        chosen = {name for name, _ in named}
    else:
        k = int(spec.split(":")[1])
        if not 1 <= k <= model.n_layers:
            raise ValueError(f"trainable last:K needs 1 <= K <= {model.n_layers}, got {k}")
        first = model.n_layers - k
        chosen = {n for n, _ in named if (m := re.search(r"layers\.(\d+)\.", n)) and int(m.group(1)) >= first}
        chosen |= {n for n, _ in named if re.search(r"(^|\.)norm\.", n) and "layers." not in n}
    for name, param in named:
        param.requires_grad_(name in chosen)
    return [param for name, param in named if name in chosen]


def set_activation_checkpointing(model: LoadedModel, enable: bool) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them
    (transformers' own mechanism; the pooling hooks sit outside the recomputed region)."""
    hf = model.hf_model
    if enable and hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5
        hf.activation_checkpointing_enable({"use_reentrant": False})
    elif enable:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        getattr(hf, "activation_checkpointing_disable", hf.gradient_checkpointing_disable)()


def lr_lambda(cfg: TrainConfig):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ----------------------------------------------------------------------------- one step


PROMPT_TERMS = ("cosine", "l2_stopgrad", "cka", "output_kl", "anchor_kl")  # anchor_kl: its prompt half
TEXT_TERMS = ("lm", "anchor_kl")  # anchor_kl: its retention-text half


def prompt_losses(
    model: LoadedModel, cfg: TrainConfig, data: TrainData, part: Shard, reference: dict,
    running: losses.RunningMean, runtime: Runtime | None = None, runner: torch.nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """The terms computed on the variant prompts of one shard (graph attached), each as this shard's
    share of the micro-batch mean (see :class:`Shard`)."""
    weights, device = cfg.loss_weights, model.device
    if not any(weights.get(name) for name in PROMPT_TERMS):
        return {}
    rows, set_index, prompt_ids, suffix = [], [], [], []
    for local, (s, variant_ids) in enumerate(zip(part.set_ids, part.variant_ids)):
        set_rows = [data.set_tokens[s][v] for v in variant_ids]
        rows += set_rows
        set_index += [local] * len(set_rows)
        prompt_ids += [data.prompt_offset[s] + v for v in variant_ids]
        suffix += [shared_suffix_len(set_rows)] * len(set_rows)
    side = prompt_padding(runtime)
    ids, mask = pad_batch(rows, model.tokenizer.pad_token_id, side)
    pool = pool_weights(mask, cfg.pool, torch.tensor(suffix) if cfg.pool == "suffix" else None)
    names = hook_names(model.n_layers, cfg.hook)
    with autocast(runtime):
        acts, logits = pooled_forward(model, ids, mask, pool, names, logits="last" if side == "left" else "all", runner=runner)
    set_index_t = torch.tensor(set_index, device=device)
    layer_weights = losses.default_layer_weights(len(names), cfg.skip_embedding).to(device)
    share = len(rows) / part.n_prompts  # this shard's fraction of the micro-batch's prompts
    reduce = runtime.sum if runtime else (lambda t: t)
    terms: dict[str, torch.Tensor] = {}
    if weights.get("cosine"):
        center = running.update_with_mean(reduce(acts.detach().sum(0)) / part.n_prompts)
        terms["cosine"] = share * losses.cosine_loss(acts, set_index_t, layer_weights, center=center.to(device))
    if weights.get("l2_stopgrad"):
        scale = reduce(acts.detach().pow(2).sum(-1).sum(0)) / part.n_prompts
        terms["l2_stopgrad"] = share * losses.l2_stopgrad_loss(acts, set_index_t, layer_weights, scale=scale)
    if weights.get("cka"):
        terms["cka"] = losses.cka_loss(acts, set_index_t, layer_weights)  # single process only (check_world_size)
    last_logits = final_logits(logits, mask)
    if weights.get("output_kl"):
        n_pairs = sum(len(v) * (len(v) - 1) // 2 for v in part.variant_ids)
        terms["output_kl"] = n_pairs / part.n_pairs * losses.output_consistency_loss(last_logits, set_index_t, cfg.output_kind)
    if weights.get("anchor_kl"):
        ref_idx = torch.stack([reference["prompt"][p][0] for p in prompt_ids]).to(device)
        ref_logp = torch.stack([reference["prompt"][p][1] for p in prompt_ids]).to(device)
        terms["anchor_kl"] = share * losses.anchor_kl_loss(last_logits, ref_idx, ref_logp)
    return terms


def text_losses(
    model: LoadedModel, cfg: TrainConfig, data: TrainData, part: Shard, reference: dict,
    runtime: Runtime | None = None, runner: torch.nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """The terms computed on the retention-text chunks of one shard (LM loss, text half of the anchor)."""
    weights = cfg.loss_weights
    if not text_losses_needed(cfg):
        return {}
    text_ids, text_mask = (t.to(model.device) for t in batch_chunks(model, [data.chunks[c] for c in part.chunk_ids]))
    with autocast(runtime):
        text_logits = (runner or model.bridge)(text_ids, attention_mask=text_mask)
    terms: dict[str, torch.Tensor] = {}
    if weights.get("lm"):
        n_targets = int(text_mask[:, 1:].sum())
        terms["lm"] = n_targets / part.n_targets * losses.lm_loss(text_logits, text_ids, text_mask)
    if weights.get("anchor_kl"):
        keep = text_mask.bool()
        ref_idx = torch.cat([reference["chunk"][c][0] for c in part.chunk_ids]).to(model.device)
        ref_logp = torch.cat([reference["chunk"][c][1] for c in part.chunk_ids]).to(model.device)
        terms["anchor_kl"] = int(keep.sum()) / part.n_text_tokens * losses.anchor_kl_loss(text_logits[keep], ref_idx, ref_logp)
    return terms


def micro_batch_losses(
    model: LoadedModel, cfg: TrainConfig, data: TrainData, plan: MicroBatch, reference: dict, running: losses.RunningMean
) -> dict[str, torch.Tensor]:
    """Every loss term with a non-zero weight for one whole micro-batch in one process (graph attached)."""
    part = shard_micro_batch(plan, data)
    terms = prompt_losses(model, cfg, data, part, reference, running)
    for name, value in text_losses(model, cfg, data, part, reference).items():
        terms[name] = terms[name] + value if name in terms else value
    return terms


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: LoadedModel, out: Path, state: dict, model_state: dict | None = None) -> Path:
    """Write ``out/checkpoint`` atomically: build ``.checkpoint-tmp``, then swap it into place.
    ``model_state``: the gathered full state dict of a sharded model (else the model's own)."""
    final, tmp, old = out / "checkpoint", out / ".checkpoint-tmp", out / ".checkpoint-old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, raw=model_state)
    torch.save(state, tmp / "trainer_state.pt")
    (tmp / "COMPLETE").write_text(json.dumps({"step": state["step"]}))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def check_out_folder(out: Path, resume: bool) -> None:
    """Refuse to start a new run over an existing checkpoint (it would be overwritten)."""
    if not resume and (out / "checkpoint").exists():
        raise ValueError(f"{out / 'checkpoint'} exists; pass --resume to continue it, or choose another --out")


def find_checkpoint(out: Path) -> Path | None:
    """The resumable checkpoint in ``out`` (recovering from a stop between the two renames)."""
    final, old = out / "checkpoint", out / ".checkpoint-old"
    if not final.exists() and (old / "COMPLETE").is_file():
        old.rename(final)
    if not final.exists():
        return None
    if not (final / "COMPLETE").is_file() or not (final / "trainer_state.pt").is_file():
        raise CheckpointError(
            f"{final} is incomplete (no COMPLETE marker or trainer_state.pt): it was being written when the run "
            f"stopped. Delete it to start over, or rerun without --resume into a new --out folder."
        )
    return final


def load_trainer_state(folder: Path) -> dict:
    try:
        return torch.load(folder / "trainer_state.pt", weights_only=False)
    except Exception as err:  # torch raises several types for truncated or garbled files
        raise CheckpointError(f"{folder / 'trainer_state.pt'} is corrupt ({err.__class__.__name__}); delete {folder} and start over") from err


def load_checkpoint_model(folder: Path, device: torch.device | str = "cpu", prepare_hf=None) -> LoadedModel:
    try:
        return load_model(str(folder), device=str(device), prepare_hf=prepare_hf)
    except Exception as err:
        raise CheckpointError(f"{folder} holds a corrupt model ({err.__class__.__name__}: {err}); delete it and start over") from err


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def read_log(path: Path, up_to_step: int) -> list[dict]:
    if not path.is_file():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in entries if e.get("step", -1) <= up_to_step]


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    model: LoadedModel
    out: Path
    log: list[dict]
    data: TrainData


def train(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    model: LoadedModel | None = None,
    runtime: Runtime | None = None,
) -> TrainResult:
    """Run (or resume) alignment training; returns the trained model and the log.

    ``model``: the already loaded original model (else ``cfg.model`` is loaded); ignored on resume,
    which loads the checkpoint. ``stop_after`` ends the loop after that many optimizer steps of this
    call without a final checkpoint, as a kill would (used to test resume). ``runtime``: this
    process's :class:`Runtime` (created from ``cfg.device`` / ``cfg.dtype`` when not given); under
    ``accelerate launch`` or ``torchrun`` every process calls ``train`` and only the main one writes.
    """
    runtime = runtime or Runtime.create(cfg.device, cfg.dtype, cfg.fsdp)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    check_out_folder(out, resume)
    runtime.wait()  # every process checked before the main one writes anything
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if resume:
            find_checkpoint(out)  # repairs a stop between the two renames of save_checkpoint
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    runtime.wait()
    checkpoint = find_checkpoint(out) if resume else None
    prepare_hf = shard_hf_model if runtime.fsdp else None
    if checkpoint:
        model = load_checkpoint_model(checkpoint, runtime.device, prepare_hf)
    elif model is None:
        model = load_model(cfg.model, device=str(runtime.device), prepare_hf=prepare_hf)
    elif not runtime.fsdp:  # a sharded model passed in is already placed
        model.hf_model.to(runtime.device)
    data = prepare_data(model, cfg)
    check_world_size(cfg, data, runtime.world)
    reference = load_or_compute_reference(out, cfg, data, model, checkpoint, runtime)
    params = select_trainable(model, cfg.trainable)
    if cfg.gradient_checkpointing:
        set_activation_checkpointing(model, True)
    # DDP-wrapped with several processes; an FSDP-sharded model synchronises by itself
    runner = model.bridge if runtime.fsdp else runtime.accelerator.prepare(model.bridge)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    running = losses.RunningMean(len(hook_names(model.n_layers, cfg.hook)), model.d_model).to(runtime.device)
    start, log = 0, []
    log_path = out / "train_log.jsonl"
    if checkpoint:
        state = load_trainer_state(checkpoint)
        load_optimizer_state(optimizer, state["optimizer"], runtime.fsdp)
        scheduler.load_state_dict(state["scheduler"])
        running.load_state_dict(state["running_mean"])
        set_rng_state(state["rng"])
        start = state["step"]
        log = read_log(log_path, start - 1)
    if runtime.is_main:
        log_path.write_text("".join(json.dumps(e) + "\n" for e in log))
    model.hf_model.train()
    step_args = (model, cfg, data, reference, running, optimizer, scheduler, params, runtime, runner)
    bar = tqdm(range(start, cfg.steps), desc="align", disable=not (progress and runtime.is_main), initial=start, total=cfg.steps)
    for step in bar:
        entry = optimizer_step(*step_args, step)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            if runtime.is_main or runtime.fsdp:  # a sharded model evaluates in every process, in lockstep
                entry.update(quick_eval(model, cfg, data))
            runtime.wait()
        log.append(entry)
        if runtime.is_main:
            with log_path.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")
        bar.set_postfix({k: f"{v:.3g}" for k, v in entry.items() if k in LOSS_NAMES or k == "loss"})
        done = step + 1
        if stop_after is not None and done - start >= stop_after:
            break
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            model_state, optimizer_state = full_state_dicts(model.hf_model, optimizer, runtime.fsdp)  # gathers if sharded
            if runtime.is_main:
                state = {"step": done, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                         "running_mean": running.state_dict(), "rng": rng_state(), "config": asdict(cfg)}
                save_checkpoint(model, out, state, model_state)
            runtime.wait()
    model.hf_model.eval()
    if cfg.gradient_checkpointing:
        set_activation_checkpointing(model, False)
    return TrainResult(model, out, log, data)


def load_or_compute_reference(out: Path, cfg: TrainConfig, data: TrainData, model: LoadedModel, checkpoint: Path | None, runtime: Runtime) -> dict:
    """The cached reference of this run (on resume), else computed from the original model, never from
    a partly trained one, and saved by the main process."""
    reference_path = out / "reference.pt"
    if reference_path.is_file() and checkpoint:
        return torch.load(reference_path, weights_only=False)
    original = load_model(cfg.model, device=str(runtime.device), prepare_hf=shard_hf_model if runtime.fsdp else None) if checkpoint else model
    reference = compute_reference(original, cfg, data, runtime)
    if runtime.is_main:
        torch.save(reference, reference_path)
    runtime.wait()
    return reference


def optimizer_step(model, cfg, data, reference, running, optimizer, scheduler, params, runtime, runner, step) -> dict:
    """One optimizer step over ``grad_accum`` micro-batches, each sharded over the processes.

    Each process backpropagates its shards' terms (scaled by the number of processes, because DDP
    averages gradients); gradients are synchronised once, on the step's last backward pass. The logged
    terms are micro-batch means summed over processes, as in a single process.
    """
    started = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, torch.Tensor] = {}
    for micro in range(cfg.grad_accum):
        part = shard_micro_batch(plan_micro_batch(cfg, data, step, micro), data, runtime.rank, runtime.world)
        graphs = [lambda: prompt_losses(model, cfg, data, part, reference, running, runtime, runner),
                  lambda: text_losses(model, cfg, data, part, reference, runtime, runner)]
        for i, compute in enumerate(graphs):
            last_backward = micro == cfg.grad_accum - 1 and (i == 1 or not text_losses_needed(cfg))
            with contextlib.nullcontext() if last_backward or runtime.fsdp else runtime.accelerator.no_sync(runner):
                terms = compute()
                if not terms:
                    continue
                loss = sum(cfg.loss_weights[name] * value for name, value in terms.items())
                runtime.accelerator.backward(loss * runtime.world / cfg.grad_accum)
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value.detach() / cfg.grad_accum
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    names = sorted(totals)
    summed = runtime.sum(torch.stack([totals[n].float() for n in names])).tolist() if names else []
    logged = dict(zip(names, summed))
    logged["loss"] = sum(cfg.loss_weights[n] * v for n, v in logged.items())
    return {"step": step, **logged, "grad_norm": float(grad_norm), "lr": lr, "step_time": time.perf_counter() - started}


def text_losses_needed(cfg: TrainConfig) -> bool:
    return any(cfg.loss_weights.get(name) for name in TEXT_TERMS)


def quick_eval(model: LoadedModel, cfg: TrainConfig, data: TrainData) -> dict:
    """Held-out gap (mean over the middle third of layers) and top-1 agreement, for the log."""
    from actalign.coherence import analyze

    model.hf_model.eval()
    result = analyze(model, data.eval_sets, hook=cfg.hook, pool="last" if cfg.pool == "suffix" else cfg.pool,
                     chat=cfg.chat, batch_size=cfg.eval_batch_size, seed=cfg.seed, n_boot=100, progress=False)
    model.hf_model.train()
    layers = result["layers"]
    middle = layers[len(layers) // 3 : 2 * len(layers) // 3 + 1]
    return {"eval_gap_middle": float(np.mean([l["gap"] for l in middle])), "eval_top1": result.get("output", {}).get("top1_agreement")}
