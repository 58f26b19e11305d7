"""Training on the tiny model: the gap rises, anchors prevent collapse, resume is exact, bad
checkpoints fail clearly."""

import json
import shutil

import pytest
import torch

from actalign.capture import capture
from actalign.cli import main
from actalign.coherence import analyze
from actalign.models import load_model
from actalign.train import CheckpointError, TrainConfig, named_hf_parameters, train
from actalign.variants import flatten

FAST = dict(model="tiny", lr=1e-3, warmup_steps=2, checkpoint_every=1000, n_boot=50)


def mean_gap(model, sets):
    layers = analyze(model, sets, n_boot=50, progress=False)["layers"][1:]
    return sum(layer["gap"] for layer in layers) / len(layers)


def diversity(model, sets):
    """(spread of pooled vectors around their mean at the last layer, as a fraction of their energy;
    mean KL of each prompt's next-token distribution from the average one). Both 0 under collapse."""
    prompts, index = flatten(sets)
    cap = capture(model, prompts, index, progress=False)
    x = cap.acts[:, -1].double()
    spread = float((x - x.mean(0)).pow(2).sum(-1).mean() / x.pow(2).sum(-1).mean())
    logp = cap.next_logprobs.double()
    mean_p = logp.exp().mean(0)
    return spread, float((logp.exp() * (logp - mean_p.log())).sum(-1).mean())


def test_fifty_steps_raise_the_training_set_gap(tmp_path):
    result = train(TrainConfig(out=str(tmp_path / "run"), steps=50, **FAST), progress=False)
    train_sets = result.data.train_sets
    assert mean_gap(result.model, train_sets) > mean_gap(load_model("tiny"), train_sets) + 0.05
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(50))
    assert {"loss", "cosine", "output_kl", "anchor_kl", "lm", "lr", "grad_norm", "step_time"} <= log[0].keys()
    assert log[-1]["cosine"] < log[0]["cosine"]
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """The tiny model after plain LM training on the retention text, so that its outputs depend on the
    input (a random model's are nearly constant already, leaving nothing to collapse)."""
    out = tmp_path_factory.mktemp("tiny_lm")
    cfg = TrainConfig(out=str(out), steps=200, loss_weights={"lm": 1.0}, retention_batch=8, **{**FAST, "lr": 3e-3, "warmup_steps": 10})
    train(cfg, progress=False)
    return str(out / "checkpoint")


def test_consistency_alone_collapses_and_the_anchor_and_lm_terms_prevent_it(tmp_path, tiny_lm):
    base = load_model(tiny_lm)
    consistency = {"cosine": 1.0, "output_kl": 1.0}
    defaults = TrainConfig().loss_weights
    assert {"anchor_kl", "lm"} <= {k for k, v in defaults.items() if v > 0}  # the defaults include both
    runs = {}
    for name, weights in (("consistency", consistency), ("defaults", defaults)):
        cfg = TrainConfig(out=str(tmp_path / name), steps=50, loss_weights=weights, **{**FAST, "model": tiny_lm})
        runs[name] = train(cfg, progress=False)
    eval_sets = runs["defaults"].data.eval_sets
    spread0, kl0 = diversity(base, eval_sets)
    spread_c, kl_c = diversity(runs["consistency"].model, eval_sets)
    spread_d, kl_d = diversity(runs["defaults"].model, eval_sets)
    assert spread_c < 0.1 * spread0 and kl_c < 0.05 * kl0  # collapsed to a near-constant representation and answer
    assert spread_d > 0.5 * spread0 and kl_d > 0.5 * kl0  # anchored: held-out diversity kept


def weights_of(model):
    return {name: p.detach().clone() for name, p in named_hf_parameters(model)}


def without_times(path):
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in e.items() if k != "step_time"} for e in entries]


def test_resume_after_a_kill_is_bit_identical(tmp_path):
    common = dict(steps=12, **{**FAST, "checkpoint_every": 4})
    full = train(TrainConfig(out=str(tmp_path / "full"), **common), progress=False)
    killed_cfg = TrainConfig(out=str(tmp_path / "killed"), **common)
    train(killed_cfg, progress=False, stop_after=6)  # killed after step 6; last checkpoint at step 4
    assert json.loads((tmp_path / "killed" / "checkpoint" / "COMPLETE").read_text())["step"] == 4
    assert len(without_times(tmp_path / "killed" / "train_log.jsonl")) == 6
    resumed = train(killed_cfg, resume=True, progress=False)
    a, b = weights_of(full.model), weights_of(resumed.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert without_times(tmp_path / "full" / "train_log.jsonl") == without_times(tmp_path / "killed" / "train_log.jsonl")


def test_half_written_or_corrupt_checkpoints_give_clear_errors(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "run"), steps=2, **FAST)
    train(cfg, progress=False)
    checkpoint = tmp_path / "run" / "checkpoint"
    backup = tmp_path / "backup"
    shutil.copytree(checkpoint, backup)

    (checkpoint / "COMPLETE").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        train(cfg, resume=True, progress=False)

    shutil.rmtree(checkpoint)
    shutil.copytree(backup, checkpoint)
    (checkpoint / "trainer_state.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="trainer_state.pt is corrupt"):
        train(cfg, resume=True, progress=False)

    shutil.rmtree(checkpoint)
    shutil.copytree(backup, checkpoint)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt model"):
        train(cfg, resume=True, progress=False)

    with pytest.raises(ValueError, match="pass --resume"):
        train(cfg, progress=False)


def test_cli_train_and_compare_on_tiny(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", "tiny", "--out", str(out), "--steps", "6", "--lr", "1e-3", "--checkpoint-every", "3"])
    assert code == 0
    for name in ("checkpoint/config.json", "checkpoint/model.safetensors", "train_log.jsonl", "before/coherence.json",
                 "after/coherence.json", "compare.json", "compare.png", "config.json"):
        assert (out / name).is_file(), name
    after = json.loads((out / "after" / "coherence.json").read_text())
    assert after["retention"]["perplexity"] > 1 and len(after["layers"]) == 4
    comparison = json.loads((out / "compare.json").read_text())
    assert len(comparison["layers"]) == 4 and "gap_delta" in comparison["layers"][1]
    assert "perplexity_change" in comparison["retention"]
    assert "held-out perplexity" in capsys.readouterr().out
    assert main(["compare", str(out / "before/coherence.json"), str(out / "after/coherence.json"), "--out", str(tmp_path / "cmp")]) == 0
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["layers"] == comparison["layers"]
    # the checkpoint is a model folder the other commands accept
    assert main(["analyze", "--model", str(out / "checkpoint"), "--out", str(tmp_path / "an"), "--n-boot", "20"]) == 0
    # resuming a finished run is a no-op that re-evaluates
    assert main(["train", "--model", "tiny", "--out", str(out), "--steps", "6", "--lr", "1e-3", "--resume"]) == 0


def test_config_from_yaml_and_bad_fields(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model: tiny\nsteps: 3\nloss_weights: {cosine: 2.0, lm: 1.0}\n")
    cfg = TrainConfig.from_file(path, out="x")
    assert cfg.steps == 3 and cfg.loss_weights == {"cosine": 2.0, "lm": 1.0} and cfg.out == "x"
    path.write_text("stepz: 3\n")
    with pytest.raises(ValueError, match="unknown config field"):
        TrainConfig.from_file(path)
    with pytest.raises(ValueError, match="unknown loss term"):
        TrainConfig(loss_weights={"cosin": 1.0})
    with pytest.raises(ValueError, match="trainable"):
        TrainConfig(trainable="some")
