"""`make demo`: analyze the bundled paraphrase sets on SmolLM2-135M-Instruct, run a short alignment
training on the training families, compare before/after on held-out families, print where it all is."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from actalign.cli import main

OUT = Path("runs/demo")
STEPS = 60


def run(argv: list[str]) -> None:
    print("\n$ actalign " + " ".join(argv), flush=True)
    code = main(argv)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    run(["analyze", "--model", "smollm2-135m", "--out", str(OUT / "analyze")])
    if (OUT / "train").exists():
        print(f"removing the previous demo run {OUT / 'train'}")
        shutil.rmtree(OUT / "train")
    run(["train", "--model", "smollm2-135m", "--out", str(OUT / "train"), "--steps", str(STEPS)])
    comparison = json.loads((OUT / "train" / "compare.json").read_text())
    print("\ndemo outputs:")
    print(f"  {(OUT / 'analyze').resolve()}/coherence.png   per-layer coherence of SmolLM2 on all bundled sets")
    print(f"  {(OUT / 'train').resolve()}/compare.png      held-out families before vs after {STEPS} alignment steps")
    print(f"  {(OUT / 'train').resolve()}/checkpoint/      the trained model (use with --model)")
    print(f"  layers whose held-out gap CI moved up and separated: {comparison['n_layers_gap_up_separated']} of {len(comparison['layers'])}")
