"""Multi-process training (2 CPU processes, gloo) equals one process with the same global batch;
resume works after a 2-process run; device/dtype/gradient-checkpointing options."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from actalign.models import build_tiny
from actalign.runtime import resolve_device, shard
from actalign.train import (
    TrainConfig, check_world_size, compute_reference, plan_micro_batch, prepare_data,
    prompt_losses, shard_micro_batch, text_losses, train,
)
from actalign import losses

WORKER = Path(__file__).with_name("distributed_worker.py")
# every distributed-capable term, two micro-batches per step (gradient sync only on the last)
COMMON = dict(model="tiny", steps=8, lr=1e-3, warmup_steps=2, sets_per_step=4, grad_accum=2, checkpoint_every=4,
              device="cpu", loss_weights={"cosine": 2.0, "l2_stopgrad": 1.0, "output_kl": 1.0, "anchor_kl": 1.0, "lm": 1.0})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"


def torchrun(tmp_path: Path, cfg: dict, *flags: str, processes: int = 2) -> None:
    config = tmp_path / f"config-{free_port()}.json"
    config.write_text(json.dumps(cfg))
    launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(free_port()),
            str(WORKER), str(config), *flags], tmp_path)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "checkpoint" / "model.safetensors")


def log_of(folder: Path) -> list[dict]:
    entries = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in e.items() if k != "step_time"} for e in entries]


def relative_difference(a: dict, b: dict, origin: dict) -> float:
    """||a - b|| / ||a - origin|| over all weights: the disagreement as a fraction of what training moved."""
    num = sum(float((a[k] - b[k]).double().pow(2).sum()) for k in a)
    den = sum(float((a[k] - origin[k]).double().pow(2).sum()) for k in a)
    return (num / den) ** 0.5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted run in this process, and the same run as 2 processes via `accelerate launch`."""
    root = tmp_path_factory.mktemp("dist")
    train(TrainConfig(out=str(root / "one"), **COMMON), progress=False)
    flags = ["--model", "tiny", "--out", "two", "--steps", "8", "--lr", "1e-3", "--sets-per-step", "4", "--grad-accum", "2",
             "--checkpoint-every", "4", "--device", "cpu", "--no-eval", "--loss", "cosine=2,l2_stopgrad=1,output_kl=1,anchor_kl=1,lm=1"]
    config = root / "warmup.json"
    config.write_text(json.dumps({"warmup_steps": 2}))
    launch([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            "-m", "actalign", "train", "--config", str(config), *flags], root)
    return root


def test_two_processes_train_the_same_weights_as_one(runs):
    one, two, origin = weights(runs / "one"), weights(runs / "two"), build_tiny()[0].state_dict()
    assert one.keys() == two.keys()
    moved = max(float((one[k] - origin[k]).abs().max()) for k in one)
    assert moved > 1e-3  # training did change the weights
    assert relative_difference(one, two, origin) < 1e-4
    log_one, log_two = log_of(runs / "one"), log_of(runs / "two")
    assert [e["step"] for e in log_two] == list(range(8))  # one entry per step: only rank 0 writes
    for a, b in zip(log_one, log_two):
        for key in ("cosine", "l2_stopgrad", "output_kl", "anchor_kl", "lm", "loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (a["step"], key)


def test_resume_after_a_two_process_run(runs, tmp_path):
    cfg = {**COMMON, "out": str(tmp_path / "killed"), "warmup_steps": 2}
    torchrun(tmp_path, cfg, "--stop-after", "6")  # killed after step 6; last checkpoint at step 4
    assert json.loads((tmp_path / "killed" / "checkpoint" / "COMPLETE").read_text())["step"] == 4
    torchrun(tmp_path, cfg, "--resume")
    uninterrupted, resumed = weights(runs / "two"), weights(tmp_path / "killed")
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    assert log_of(tmp_path / "killed") == log_of(runs / "two")


def test_a_two_process_checkpoint_resumes_in_one_process(runs, tmp_path):
    cfg = {**COMMON, "out": str(tmp_path / "killed"), "warmup_steps": 2}
    torchrun(tmp_path, cfg, "--stop-after", "5")
    train(TrainConfig(**cfg), resume=True, progress=False)
    origin = build_tiny()[0].state_dict()
    assert relative_difference(weights(runs / "two"), weights(tmp_path / "killed"), origin) < 1e-4


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """The runs' configuration as 2 processes with parameters, gradients and optimizer state sharded (FSDP2)."""
    root = tmp_path_factory.mktemp("fsdp")
    torchrun(root, {**COMMON, "out": str(root / "fsdp"), "warmup_steps": 2, "fsdp": True})
    return root / "fsdp"


def test_fsdp_two_processes_train_the_same_weights_as_one(runs, fsdp_run):
    one, sharded, origin = weights(runs / "one"), weights(fsdp_run), build_tiny()[0].state_dict()
    assert one.keys() == sharded.keys()
    assert relative_difference(one, sharded, origin) < 1e-4  # measured 4.9e-6
    for a, b in zip(log_of(runs / "one"), log_of(fsdp_run)):
        for key in ("cosine", "l2_stopgrad", "output_kl", "anchor_kl", "lm", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (a["step"], key)


def test_fsdp_resume_is_exact_and_its_checkpoint_resumes_in_one_process(runs, fsdp_run, tmp_path):
    cfg = {**COMMON, "out": str(tmp_path / "killed"), "warmup_steps": 2, "fsdp": True}
    torchrun(tmp_path, cfg, "--stop-after", "6")
    shutil.copytree(tmp_path / "killed", tmp_path / "killed-copy")
    torchrun(tmp_path, cfg, "--resume")
    uninterrupted, resumed = weights(fsdp_run), weights(tmp_path / "killed")
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    assert log_of(tmp_path / "killed") == log_of(fsdp_run)
    # the sharded run's checkpoint holds full tensors: one process (no FSDP) continues it
    train(TrainConfig(**{**cfg, "out": str(tmp_path / "killed-copy"), "fsdp": False}), resume=True, progress=False)
    origin = build_tiny()[0].state_dict()
    assert relative_difference(weights(runs / "one"), weights(tmp_path / "killed-copy"), origin) < 1e-4


def test_shards_add_up_to_the_whole_micro_batch(tiny, tmp_path):
    """Each shard's terms are its share of the micro-batch mean: summed over shards they give the
    single-process terms and gradients (terms without batch statistics, checked in one process)."""
    cfg = TrainConfig(model="tiny", out=str(tmp_path), steps=1, sets_per_step=5, retention_batch=3,
                      loss_weights={"output_kl": 1.0, "anchor_kl": 1.0, "lm": 1.0})
    data = prepare_data(tiny, cfg)
    reference = compute_reference(tiny, cfg, data)
    plan = plan_micro_batch(cfg, data, 0, 0)
    running = losses.RunningMean(tiny.n_layers + 1, tiny.d_model)
    params = [p for p in tiny.hf_model.parameters()]

    def terms_and_grads(parts):
        for p in params:
            p.grad = None
        summed = {}
        for part in parts:
            terms = prompt_losses(tiny, cfg, data, part, reference, running)
            for name, value in text_losses(tiny, cfg, data, part, reference).items():
                terms[name] = terms.get(name, 0.0) + value
            sum(terms.values()).backward()
            for name, value in terms.items():
                summed[name] = summed.get(name, 0.0) + float(value.detach())
        return summed, [p.grad.clone() for p in params]

    whole, whole_grads = terms_and_grads([shard_micro_batch(plan, data)])
    split, split_grads = terms_and_grads([shard_micro_batch(plan, data, rank, 2) for rank in range(2)])
    assert set(whole) == {"output_kl", "anchor_kl", "lm"}
    for name in whole:
        assert split[name] == pytest.approx(whole[name], rel=1e-5)
    for a, b in zip(whole_grads, split_grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    for p in params:
        p.grad = None


def test_shards_cover_every_set_once():
    items = list(range(7))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(x for part in parts for x in part) == items and [len(p) for p in parts] == [3, 2, 2]


def test_too_many_processes_or_cka_give_clear_errors(tiny, tmp_path):
    cfg = TrainConfig(model="tiny", out=str(tmp_path), sets_per_step=2)
    data = prepare_data(tiny, cfg)
    with pytest.raises(ValueError, match="sets-per-step to at least 3"):
        check_world_size(cfg, data, 3)
    cka = TrainConfig(model="tiny", out=str(tmp_path), loss_weights={"cka": 1.0})
    with pytest.raises(ValueError, match="single-process only"):
        check_world_size(cka, data, 2)
    check_world_size(cka, data, 1)


def test_devices_resolve_or_explain():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="dtype"):
        TrainConfig(dtype="float16")


def saved_bytes_and_grads(model, cfg, data, reference, checkpointing: bool):
    """Bytes autograd keeps for the backward pass of one micro-batch, and the gradients."""
    from actalign.train import micro_batch_losses, select_trainable, set_activation_checkpointing

    params = select_trainable(model, "all")
    set_activation_checkpointing(model, checkpointing)
    model.hf_model.train()
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        terms = micro_batch_losses(model, cfg, data, plan_micro_batch(cfg, data, 0, 0), reference, losses.RunningMean(model.n_layers + 1, model.d_model))
    sum(terms.values()).backward()
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    set_activation_checkpointing(model, False)
    model.hf_model.eval()
    return sum(saved), grads


def test_gradient_checkpointing_keeps_less_and_gives_the_same_gradients(tmp_path):
    from actalign.models import load_model

    model = load_model("tiny")
    cfg = TrainConfig(model="tiny", out=str(tmp_path), steps=1)
    data = prepare_data(model, cfg)
    reference = compute_reference(model, cfg, data)
    kept, grads = saved_bytes_and_grads(model, cfg, data, reference, checkpointing=False)
    kept_ckpt, grads_ckpt = saved_bytes_and_grads(model, cfg, data, reference, checkpointing=True)
    assert kept_ckpt < 0.5 * kept  # measured on tiny: 3.1 MB vs 19.5 MB
    for a, b in zip(grads, grads_ckpt):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_bfloat16_autocast_trains_float32_weights_close_to_float32(tmp_path):
    common = dict(model="tiny", steps=3, lr=1e-3, warmup_steps=1, checkpoint_every=100, device="cpu")
    full = train(TrainConfig(out=str(tmp_path / "f32"), **common), progress=False)
    mixed = train(TrainConfig(out=str(tmp_path / "bf16"), dtype="bfloat16", **common), progress=False)
    assert all(p.dtype == torch.float32 for p in mixed.model.hf_model.parameters())  # master weights
    for a, b in zip(full.log, mixed.log):
        for key in ("cosine", "output_kl", "lm"):
            assert b[key] == pytest.approx(a[key], rel=0.02, abs=1e-3), (a["step"], key)  # measured: within 0.6%
    # bfloat16 really was used: the losses are not bit-identical to float32
    assert any(a["lm"] != b["lm"] for a, b in zip(full.log, mixed.log))
