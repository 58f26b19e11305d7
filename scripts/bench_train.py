"""Benchmark: one optimizer step of the alignment objective vs a plain LM fine-tuning step.

Both steps see the same tokens (the variant prompts of a micro-batch and its retention text chunks)
on the same model in this process: the plain step is next-token cross-entropy on both token batches;
the alignment step is actalign's default objective (pooling hooks on every layer, cosine + output
consistency + anchor KL against cached reference logits + LM). Steps alternate so that drift in
machine speed hits both; the median over --steps is reported. Peak memory (max RSS) of each kind of
step is measured in a fresh child process, since RSS only ever grows within one.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import torch

from actalign.capture import pad_batch
from actalign.losses import lm_loss
from actalign.retention import batch_chunks
from actalign.train import TrainConfig, compute_reference, micro_batch_losses, plan_micro_batch, prepare_data, select_trainable
from actalign import losses
from actalign.capture import hook_names
from actalign.models import load_model


def setup(model_name: str, steps: int):
    cfg = TrainConfig(model=model_name, out="/tmp/actalign-bench-train", steps=steps)
    model = load_model(model_name)
    data = prepare_data(model, cfg)
    reference = compute_reference(model, cfg, data)
    params = select_trainable(model, cfg.trainable)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    running = losses.RunningMean(len(hook_names(model.n_layers)), model.d_model)
    model.hf_model.train()
    return cfg, model, data, reference, params, optimizer, running


def alignment_step(cfg, model, data, reference, params, optimizer, running, step):
    optimizer.zero_grad(set_to_none=True)
    terms = micro_batch_losses(model, cfg, data, plan_micro_batch(cfg, data, step, 0), reference, running)
    sum(cfg.loss_weights[k] * v for k, v in terms.items()).backward()
    torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
    optimizer.step()


def lm_step(cfg, model, data, reference, params, optimizer, running, step):
    optimizer.zero_grad(set_to_none=True)
    plan = plan_micro_batch(cfg, data, step, 0)
    rows = [data.set_tokens[s][v] for s, vs in zip(plan.set_ids, plan.variant_ids) for v in vs]
    ids, mask = pad_batch(rows, model.tokenizer.pad_token_id, "left")
    text_ids, text_mask = batch_chunks(model, [data.chunks[c] for c in plan.chunk_ids])
    loss = lm_loss(model.bridge(ids, attention_mask=mask), ids, mask) + lm_loss(model.bridge(text_ids, attention_mask=text_mask), text_ids, text_mask)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
    optimizer.step()


def peak_rss_child(model_name: str, kind: str, steps: int, queue) -> None:
    state = setup(model_name, steps)
    step_fn = alignment_step if kind == "alignment" else lm_step
    for step in range(steps):
        step_fn(*state, step)
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def peak_rss(model_name: str, kind: str, steps: int) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=peak_rss_child, args=(model_name, kind, steps, queue))
    child.start()
    value = queue.get()
    child.join()
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each kind (after one warm-up each)")
    parser.add_argument("--no-memory", action="store_true", help="skip the child-process peak-memory runs")
    args = parser.parse_args()
    state = setup(args.model, args.steps + 1)
    cfg, model = state[0], state[1]
    times = {"alignment": [], "lm": []}
    for step in range(args.steps + 1):
        for kind, fn in (("alignment", alignment_step), ("lm", lm_step)):
            start = time.perf_counter()
            fn(*state, step)
            if step > 0:  # step 0 is warm-up
                times[kind].append(time.perf_counter() - start)
    align, plain = statistics.median(times["alignment"]), statistics.median(times["lm"])
    print(f"model {args.model}: {cfg.sets_per_step} sets x {cfg.variants_per_set} variants + {cfg.retention_batch} text chunks of <= {cfg.retention_seq_len} tokens per step")
    print(f"alignment step (default objective)  median {align:6.2f} s over {args.steps} steps")
    print(f"plain LM step (same tokens)         median {plain:6.2f} s over {args.steps} steps")
    print(f"ratio alignment / LM step  {align / plain:.3f}  (target <= 1.35)")
    if not args.no_memory:
        rss_align, rss_lm = peak_rss(args.model, "alignment", 3), peak_rss(args.model, "lm", 3)
        print(f"peak RSS: alignment {rss_align:.0f} MiB, plain LM {rss_lm:.0f} MiB, ratio {rss_align / rss_lm:.3f}")


if __name__ == "__main__":
    main()
