"""Command line: ``actalign analyze | train | compare | generate`` (see README and CONTRACTS)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from actalign.capture import HOOK_POINTS
from actalign.models import DEFAULT_MODEL


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="smollm2-135m (default), tiny, a local HF folder, or a hub name")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="seed for null pairs, bootstrap and splits")


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
    model = load_model(args.model, device=args.device)
    result = analyze(
        model, sets, hook=args.hook, pool=args.pool, chat=args.chat, batch_size=args.batch_size, seed=args.seed, n_boot=args.n_boot
    )
    config = {**vars(args), "variants": str(path)}
    config.pop("func", None)
    written = save_coherence(result, args.out, config=config)
    print(f"{model.name}: {headline(result)}")
    print(f"wrote {written} and {written.with_suffix('.png')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"actalign {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
