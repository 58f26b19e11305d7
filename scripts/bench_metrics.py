"""Benchmark: per-layer linear CKA between two captures, actalign.measures vs a straightforward loop.

Both run in this process on the same synthetic float32 activations ``[layer, n, d]`` (default
N=4096 prompts, d=576 = SmolLM2's width, 31 layers), where y is a noisy rotation of x:

- baseline: for each layer, the textbook estimator on n x n Gram matrices,
  ``K = X X^T``, ``L = Y Y^T``, ``HSIC(K, L) = sum(HKH * HLH)`` (centering by row/column means, i.e.
  ``metrics.center_gram``, not by multiplying with H), CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L));
- actalign: ``measures.linear_cka`` on the whole ``[layer, n, d]`` stack, which picks feature space
  (d x d covariances, O(n d^2) instead of O(n^2 d)) when n > 1.5 d.

The two are timed layer by layer, alternately, so that load from other jobs on a shared machine hits
both alike; the whole-stack call is timed too. Prints the timings, the speed ratio and the largest
difference between the two (target: >= 5x, <= 1e-6). ``--unbiased``: the unbiased-HSIC estimator.
"""

from __future__ import annotations

import argparse
import time

import torch

from actalign.measures import linear_cka, linear_cka_space, linear_cka_unbiased
from actalign.metrics import _ucenter_gram, center_gram

F64 = torch.float64


def synthetic(n_layers: int, n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x ``[layer, n, d]`` float32 and y = x rotated plus layer-dependent noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_layers, n, d, generator=g)
    rotation = torch.linalg.qr(torch.randn(d, d, generator=g)).Q
    noise = torch.linspace(0.1, 2.0, n_layers)[:, None, None]
    return x, x @ rotation + noise * torch.randn(n_layers, n, d, generator=g)


def baseline_layer(x: torch.Tensor, y: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """One layer, the textbook way: n x n Grams, centered, HSIC as an elementwise sum."""
    centering = _ucenter_gram if unbiased else center_gram
    x, y = x.to(F64), y.to(F64)
    k, l = centering(x @ x.T), centering(y @ y.T)
    return (k * l).sum() / torch.sqrt((k * k).sum() * (l * l).sum())


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def interleaved(x: torch.Tensor, y: torch.Tensor, unbiased: bool, repeats: int) -> tuple[float, float, torch.Tensor]:
    """Per layer, alternately: actalign on that layer, then the baseline (best of ``repeats`` each),
    so that load changes on a shared machine hit both; returns (actalign s, baseline s, baseline values)."""
    fast_fn = linear_cka_unbiased if unbiased else linear_cka
    fast_total, base_total, values = 0.0, 0.0, []
    for layer in range(x.shape[0]):
        fast_runs, base_runs = [], []
        for _ in range(repeats):
            fast_runs.append(timed(fast_fn, x[layer], y[layer])[0])
            seconds, value = timed(baseline_layer, x[layer], y[layer], unbiased)
            base_runs.append(seconds)
        fast_total, base_total = fast_total + min(fast_runs), base_total + min(base_runs)
        values.append(value)
    return fast_total, base_total, torch.stack(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096, help="prompts (rows)")
    parser.add_argument("--d", type=int, default=576, help="width (SmolLM2-135M: 576)")
    parser.add_argument("--layers", type=int, default=31, help="layers (SmolLM2-135M: 31 with the embedding)")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs per layer")
    parser.add_argument("--unbiased", action="store_true", help="benchmark the unbiased-HSIC estimator instead")
    args = parser.parse_args()
    x, y = synthetic(args.layers, args.n, args.d)
    fast_fn = linear_cka_unbiased if args.unbiased else linear_cka
    print(f"per-layer {'unbiased' if args.unbiased else 'biased'} linear CKA: N={args.n}, d={args.d}, {args.layers} layers, "
          f"{torch.get_num_threads()} threads; actalign space: {linear_cka_space(args.n, args.d, args.d)}", flush=True)
    batched_time, fast = timed(fast_fn, x, y)
    print(f"actalign.measures on the [layer, n, d] stack: {batched_time:.2f} s", flush=True)
    fast_time, base_time, base = interleaved(x, y, args.unbiased, args.repeats)
    print(f"interleaved per layer: actalign {fast_time:.2f} s, per-layer HSIC loop {base_time:.2f} s")
    diff = float((fast - base).abs().max())
    print(f"max |difference| = {diff:.2e} (target <= 1e-6: {'ok' if diff <= 1e-6 else 'FAIL'})")
    ratio = base_time / fast_time
    print(f"speed-up: {ratio:.1f}x (interleaved; stack call vs loop: {base_time / batched_time:.1f}x) (target >= 5x: {'ok' if ratio >= 5 else 'FAIL'})")


if __name__ == "__main__":
    main()
