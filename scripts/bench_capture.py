"""Benchmark: pooled all-layer capture vs a bare HF forward vs TransformerLens run_with_cache.

All three run in this process on the same token batches of the bundled prompts (SmolLM2-135M by
default). Prints times (best of --repeats) and the ratios the foundation issue targets:
capture / bare HF forward (target <= 1.10) and capture / run_with_cache (target <= 0.5 time,
<= 1/50 memory). Batches are left-padded, which is capture's default: capture then projects only the
final position onto the vocabulary (the next-token distribution it needs), while the bare HF forward
computes logits at every position as a plain ``model(input_ids)`` call does. Memory is the bytes each method hands back for the whole prompt list: pooled
activations for capture, the full activation cache (every hook point) for run_with_cache.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM

from actalign.capture import hook_names, pad_batch, pool_weights, pooled_forward, tokenize
from actalign.models import ensure_smollm2_folder, load_model
from actalign.variants import flatten, load_bundled


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=256, help="number of bundled prompts")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)

    model = load_model(args.model)
    prompts = flatten(load_bundled())[0][: args.prompts]
    rows = tokenize(model, prompts)
    rows.sort(key=len)
    pad = model.tokenizer.pad_token_id
    batches = [pad_batch(rows[i : i + args.batch_size], pad, "left") for i in range(0, len(rows), args.batch_size)]
    names = hook_names(model.n_layers)
    folder = ensure_smollm2_folder() if args.model.startswith("smollm2") else args.model
    bare_eager = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    bare_sdpa = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()

    def run_capture():
        for ids, mask in batches:
            pooled_forward(model, ids, mask, pool_weights(mask, "last"), names, logits="last")

    def run_bare(hf):
        def go():
            for ids, mask in batches:
                hf(input_ids=ids, attention_mask=mask).logits
        return go

    cache_bytes = 0

    def run_cache():
        nonlocal cache_bytes
        cache_bytes = 0
        for ids, mask in batches:
            _, cache = model.bridge.run_with_cache(ids, attention_mask=mask)
            cache_bytes += sum(t.numel() * t.element_size() for t in cache.values() if torch.is_tensor(t))
            del cache

    with torch.no_grad():
        run_capture(), run_bare(bare_eager)(), run_bare(bare_sdpa)()  # warm-up
        t_capture = best_time(run_capture, args.repeats)
        t_eager = best_time(run_bare(bare_eager), args.repeats)
        t_sdpa = best_time(run_bare(bare_sdpa), args.repeats)
        t_cache = best_time(run_cache, max(1, args.repeats - 1))
    capture_bytes = len(rows) * len(names) * model.d_model * 4

    print(f"model {args.model}: {len(rows)} prompts, {len(batches)} batches of <= {args.batch_size}, {len(names)} layers")
    print(f"pooled capture (all layers)   {t_capture:7.2f} s   returns {capture_bytes / 2**20:9.1f} MiB")
    print(f"bare HF forward (eager attn)  {t_eager:7.2f} s")
    print(f"bare HF forward (sdpa attn)   {t_sdpa:7.2f} s")
    print(f"run_with_cache (everything)   {t_cache:7.2f} s   returns {cache_bytes / 2**20:9.1f} MiB")
    print(f"ratio capture / bare HF eager   {t_capture / t_eager:.3f}  (target <= 1.10)")
    print(f"ratio capture / bare HF sdpa    {t_capture / t_sdpa:.3f}")
    print(f"ratio capture / run_with_cache  {t_capture / t_cache:.3f}  time (target <= 0.5)")
    print(f"ratio capture / run_with_cache  {capture_bytes / cache_bytes:.5f}  memory (target <= 0.02)")


if __name__ == "__main__":
    main()
