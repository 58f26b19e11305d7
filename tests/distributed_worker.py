"""Run by tests/test_distributed.py in every process of a torchrun launch: ``train()`` from a JSON
file of TrainConfig fields, optionally stopped early (as a kill would) or resumed."""

import argparse
import json
from pathlib import Path

from actalign.train import TrainConfig, train

parser = argparse.ArgumentParser()
parser.add_argument("config", help="JSON file of TrainConfig fields")
parser.add_argument("--stop-after", type=int, default=None, help="stop after this many steps without a final checkpoint")
parser.add_argument("--resume", action="store_true")
args = parser.parse_args()
train(TrainConfig(**json.loads(Path(args.config).read_text())), resume=args.resume, stop_after=args.stop_after, progress=False)
