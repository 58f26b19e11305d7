"""Benchmark: the same alignment training run as 1 process and as 2 data-parallel processes.

Each variant runs ``actalign train --no-eval`` (same model, steps, seed and global batch) in fresh
processes, one after another in this script: 1 process with torch's default threads, 1 process with
one thread, 2 processes (``accelerate launch --multi_gpu``, gloo, one thread each) with DDP and with
FSDP parameter sharding, and optionally
1 process with gradient checkpointing or bfloat16 autocast. Reported per variant: wall time of the
whole command (load, reference logits, training, checkpoint), median optimizer-step time from
``train_log.jsonl``, and peak resident memory summed over the run's processes (sampled every 0.1 s
with psutil) and of its largest process. Ratios are against the first variant of the same run.
Also checks that the runs trained the same weights (max abs difference vs the first variant).

    .venv/bin/python scripts/bench_distributed.py --model smollm2-135m --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from safetensors.torch import load_file


def command(model: str, out: Path, steps: int, processes: int, extra: list[str]) -> list[str]:
    train = ["-m", "actalign", "train", "--model", model, "--out", str(out), "--steps", str(steps), "--device", "cpu",
             "--no-eval", "--checkpoint-every", "100000", *extra]
    if processes == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *train]


def tree_rss(root: psutil.Process) -> tuple[int, int]:
    """(sum, max) resident bytes over ``root`` and its descendants that run Python training code."""
    sizes = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            sizes.append(proc.memory_info().rss)
        except psutil.Error:
            pass
    return sum(sizes), max(sizes, default=0)


def run(name: str, cmd: list[str], threads: int | None, out: Path) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root, peak_sum, peak_max = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        total, largest = tree_rss(root)
        peak_sum, peak_max = max(peak_sum, total), max(peak_max, largest)
        time.sleep(0.1)
    wall = time.perf_counter() - started
    output = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{output[-4000:]}")
    steps = [json.loads(line)["step_time"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {"name": name, "wall_s": wall, "median_step_s": statistics.median(steps), "peak_rss_sum_mib": peak_sum / 2**20,
            "peak_rss_max_mib": peak_max / 2**20, "weights": out / "checkpoint" / "model.safetensors"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--extras", action="store_true", help="also gradient checkpointing and bfloat16 (1 process)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="actalign-bench-dist-"))
    variants = [("1 process, default threads", 1, None, []), ("1 process, 1 thread", 1, 1, []),
                ("2 processes, 1 thread each (DDP)", 2, 1, []), ("2 processes, 1 thread each (FSDP)", 2, 1, ["--fsdp"])]
    if args.extras:
        variants += [("1 process, gradient checkpointing", 1, None, ["--gradient-checkpointing"]),
                     ("1 process, bfloat16 autocast", 1, None, ["--dtype", "bfloat16"])]
    results = []
    try:
        for i, (name, processes, threads, extra) in enumerate(variants):
            out = root / f"run{i}"
            results.append(run(name, command(args.model, out, args.steps, processes, extra), threads, out))
            print(f"  done: {name}", flush=True)
        base = results[0]
        reference = load_file(base["weights"])
        print(f"\n{args.model}, {args.steps} steps, torch threads default = {os.cpu_count()} cores")
        print(f"{'variant':36s} {'wall s':>7s} {'x':>5s} {'step s':>7s} {'x':>5s} {'RSS sum MiB':>11s} {'x':>5s} {'max proc MiB':>12s} {'max |dw|':>9s}")
        for r in results:
            weights = load_file(r["weights"])
            diff = max(float((weights[k] - reference[k]).abs().max()) for k in reference)
            print(f"{r['name']:36s} {r['wall_s']:7.1f} {r['wall_s'] / base['wall_s']:5.2f} {r['median_step_s']:7.2f} "
                  f"{r['median_step_s'] / base['median_step_s']:5.2f} {r['peak_rss_sum_mib']:11.0f} "
                  f"{r['peak_rss_sum_mib'] / base['peak_rss_sum_mib']:5.2f} {r['peak_rss_max_mib']:12.0f} {diff:9.2e}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
