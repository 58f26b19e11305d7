"""`make demo`: analyze the bundled paraphrase sets on SmolLM2-135M-Instruct and print where outputs are."""

from __future__ import annotations

import sys
from pathlib import Path

from actalign.cli import main

OUT = Path("runs/demo")


def run(argv: list[str]) -> None:
    print("$ actalign " + " ".join(argv), flush=True)
    code = main(argv)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    run(["analyze", "--model", "smollm2-135m", "--out", str(OUT / "analyze")])
    print(f"\ndemo outputs: {OUT.resolve()}/analyze/coherence.json and coherence.png")
