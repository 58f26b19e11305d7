"""Command line: ``actalign analyze | train | compare | generate`` (see README and CONTRACTS)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from actalign.capture import HOOK_POINTS
from actalign.models import DEFAULT_MODEL
from actalign.runtime import DEVICES, DTYPES


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="smollm2-135m (default), tiny, a local HF folder, or a hub name")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="auto (cuda, else mps, else cpu; the default), cpu, cuda or mps")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="weights' dtype (statistics stay float64)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="seed for null pairs, bootstrap and splits")
    _add_threads_arg(parser)


def _add_threads_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice; 1 is much faster on a CPU shared with other jobs)")


def _add_capture_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hook", default="resid_post", choices=sorted(HOOK_POINTS), help="hook point per layer")
    parser.add_argument("--pool", default="last", choices=["last", "mean"], help="pooling over prompt tokens")
    parser.add_argument("--chat", action="store_true", help="wrap prompts in the model's chat template")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actalign", description="Paraphrase coherence of residual streams: measure and train.")
    sub = parser.add_subparsers(dest="command", required=True)

    analyze = sub.add_parser("analyze", help="per-layer coherence of a model over variant sets")
    _add_model_args(analyze)
    _add_capture_args(analyze)
    analyze.add_argument("--variants", default=None, help="variant-set JSONL (default: the bundled corpus)")
    analyze.add_argument("--out", required=True, help="output folder for coherence.json / coherence.png")
    analyze.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the gap CI")
    analyze.set_defaults(func=run_analyze)

    train = sub.add_parser("train", help="alignment fine-tuning with before/after evaluation on held-out families")
    train.add_argument("--config", default=None, help="JSON/YAML file of TrainConfig fields (flags override it)")
    train.add_argument("--model", default=None, help="model to fine-tune (default smollm2-135m)")
    train.add_argument("--variants", default=None, help="training variant sets (default: the bundled corpus)")
    train.add_argument("--eval-variants", default=None, help="held-out sets (default: a seeded family split of --variants)")
    train.add_argument("--out", required=True, help="output folder (checkpoint/, train_log.jsonl, before/, after/)")
    train.add_argument("--steps", type=int, default=None)
    train.add_argument("--lr", type=float, default=None)
    train.add_argument("--trainable", default=None, help="'all' or 'last:K'")
    train.add_argument("--pool", default=None, choices=["last", "mean", "suffix"])
    train.add_argument("--hook", default=None, choices=sorted(HOOK_POINTS))
    train.add_argument("--chat", action="store_true", default=None)
    train.add_argument("--sets-per-step", type=int, default=None)
    train.add_argument("--variants-per-set", type=int, default=None)
    train.add_argument("--grad-accum", type=int, default=None)
    train.add_argument("--checkpoint-every", type=int, default=None)
    train.add_argument("--eval-every", type=int, default=None)
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--loss", default=None, help="loss weights, e.g. 'cosine=1,output_kl=0.5,anchor_kl=1,lm=1'")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    train.add_argument("--device", default=None, choices=DEVICES, help="auto (default: cuda, else mps, else cpu), cpu, cuda or mps")
    train.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="float32 (default) or bfloat16 (autocast mixed precision)")
    train.add_argument("--gradient-checkpointing", action="store_true", default=None, help="recompute block activations in backward (less memory, more time)")
    train.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation (training only)")
    _add_threads_arg(train)
    train.add_argument("--fsdp", action="store_true", default=None, help="with several processes: shard parameters, gradients and optimizer state (FSDP2) instead of DDP")
    train.set_defaults(func=run_train)

    compare = sub.add_parser("compare", help="before vs after per layer from two coherence.json files")
    compare.add_argument("before")
    compare.add_argument("after")
    compare.add_argument("--out", required=True)
    compare.set_defaults(func=run_compare)

    report = sub.add_parser("report", help="one-page report (headline numbers + every figure) of an analyze or train folder")
    report.add_argument("folder", help="an `actalign analyze` or `actalign train` output folder")
    report.add_argument("--format", default="md", choices=["md", "html"], help="report.md (links the PNGs) or a self-contained report.html")
    report.add_argument("--out", default=None, help="where to write it (default: FOLDER/report.md or .html)")
    report.set_defaults(func=run_report)

    from actalign.generate import add_generate_parser

    add_generate_parser(sub)
    return parser


def _variants_path(arg: str | None) -> Path:
    from actalign.variants import bundled_path

    return Path(arg) if arg else bundled_path()


def run_analyze(args: argparse.Namespace) -> int:
    from actalign.coherence import analyze, headline, save_coherence
    from actalign.models import load_model
    from actalign.variants import load_variant_sets

    path = _variants_path(args.variants)
    sets = load_variant_sets(path)
    from actalign.runtime import resolve_device, resolve_dtype

    model = load_model(args.model, device=resolve_device(args.device), dtype=resolve_dtype(args.dtype))
    result = analyze(
        model, sets, hook=args.hook, pool=args.pool, chat=args.chat, batch_size=args.batch_size, seed=args.seed, n_boot=args.n_boot
    )
    config = {**vars(args), "variants": str(path)}
    config.pop("func", None)
    written = save_coherence(result, args.out, config=config)
    print(f"{model.name}: {headline(result)}")
    print(f"wrote {written} and {written.with_suffix('.png')}")
    return 0


def parse_loss_weights(text: str) -> dict[str, float]:
    weights = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--loss expects name=weight pairs separated by commas, got {item!r}")
        weights[name.strip()] = float(value)
    return weights


def train_config(args: argparse.Namespace):
    from actalign.train import TrainConfig

    flags = ("model", "variants", "eval_variants", "out", "steps", "lr", "trainable", "pool", "hook", "chat",
             "sets_per_step", "variants_per_set", "grad_accum", "checkpoint_every", "eval_every", "seed",
             "device", "dtype", "gradient_checkpointing", "fsdp")
    overrides = {f: getattr(args, f) for f in flags if getattr(args, f) is not None}
    if args.loss:
        overrides["loss_weights"] = parse_loss_weights(args.loss)
    return TrainConfig.from_file(args.config, **overrides) if args.config else TrainConfig(**overrides)


def run_train(args: argparse.Namespace) -> int:
    """Train (every process under a launcher); the main process evaluates before and after (with
    --fsdp every process takes part, since each forward of a sharded model needs all of them)."""
    from actalign.evaluate import evaluate, save_compare, summary_lines
    from actalign.models import load_model
    from actalign.runtime import Runtime, shard_hf_model
    from actalign.train import check_out_folder, split_sets, train

    cfg = train_config(args)
    out = Path(cfg.out)
    check_out_folder(out, args.resume)  # before the costly evaluation of the original model
    runtime = Runtime.create(cfg.device, cfg.dtype, cfg.fsdp)
    eval_args = dict(hook=cfg.hook, pool="last" if cfg.pool == "suffix" else cfg.pool, chat=cfg.chat,
                     batch_size=cfg.eval_batch_size, seed=cfg.seed, n_boot=cfg.n_boot, save=runtime.is_main)
    evaluating = not args.no_eval and (runtime.is_main or runtime.fsdp)
    model = None
    before = out / "before" / "coherence.json"
    if evaluating and not (args.resume and before.is_file()):
        model = load_model(cfg.model, device=str(runtime.device), prepare_hf=shard_hf_model if runtime.fsdp else None)
        eval_sets = split_sets(cfg)[1]
        if runtime.is_main:
            print(f"evaluating the original model on {len(eval_sets)} held-out sets", flush=True)
        evaluate(model, eval_sets, before.parent, label=f"{cfg.model} before alignment", **eval_args)
    runtime.wait()
    result = train(cfg, resume=args.resume, model=model, runtime=runtime)
    if runtime.world > 1:
        print(f"process {runtime.rank}/{runtime.world} done", flush=True)
    if evaluating:
        if runtime.is_main:
            print("evaluating the trained model", flush=True)
        evaluate(result.model, result.data.eval_sets, out / "after", label=f"{cfg.model} after {cfg.steps} alignment steps", **eval_args)
    if not runtime.is_main:
        return 0
    if not evaluating:
        print(f"wrote {out}/checkpoint and train_log.jsonl")
        return 0
    comparison = save_compare(before, out / "after" / "coherence.json", out)
    for line in summary_lines(comparison):
        print(line)
    print(f"wrote {out}/checkpoint, train_log.jsonl, before/, after/, compare.json, compare.png")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from actalign.report import write_report

    folder = Path(args.folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass the --out folder of actalign analyze or train")
    print(f"wrote {write_report(folder, fmt=args.format, out=args.out)}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from actalign.evaluate import save_compare, summary_lines

    comparison = save_compare(args.before, args.after, args.out)
    for line in summary_lines(comparison):
        print(line)
    print(f"wrote {Path(args.out) / 'compare.json'} and compare.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"actalign {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
