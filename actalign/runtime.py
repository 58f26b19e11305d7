"""Where training runs: device, precision and processes, on Hugging Face Accelerate.

One :class:`Runtime` per process. Launched plainly it is a single process; under ``accelerate launch
--multi_gpu`` or ``torchrun`` it joins the process group (gloo on CPU, NCCL on CUDA) and the model is
wrapped in torch DDP by ``Accelerator.prepare``, or, with ``fsdp``, sharded with torch's FSDP2 by
:func:`shard_hf_model` before TransformerBridge wraps it. Data parallelism in actalign shards whole
variant sets (a set's variants meet in one loss), see :func:`shard`.

Precision: ``bfloat16`` means autocast mixed precision (float32 master weights and optimizer state,
bfloat16 matmuls); loss terms are computed in float32 and similarity statistics in float64.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> str:
    """``auto`` -> cuda, else mps, else cpu; an explicit choice must be available here."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {DEVICES}")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no CUDA GPU here (CPU-only torch build or no driver); use --device cpu or auto")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps but the MPS backend is not available (Apple silicon only); use --device cpu or auto")
    return device


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def shard(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """Rank ``rank``'s share of ``items`` (round robin): every item on exactly one rank."""
    return list(items[rank::world])


@dataclass
class Runtime:
    """The process's place in the run (rank, world size, device) and its Accelerator."""

    accelerator: Any  # accelerate.Accelerator
    device_type: str  # cpu | cuda | mps
    dtype: str  # float32 | bfloat16
    fsdp: bool = False  # shard parameters, gradients and optimizer state (FSDP2) instead of DDP

    @classmethod
    def create(cls, device: str = "auto", dtype: str = "float32", fsdp: bool = False) -> "Runtime":
        from accelerate import Accelerator, DistributedType
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

        device_type = resolve_device(device)
        resolve_dtype(dtype)
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            # Accelerate keeps one state per process; a notebook may train on another device next time
            AcceleratorState._reset_state(reset_partial_state=True)
        # rank 0 evaluates the original model while the others wait: allow slow evaluations.
        # Mixed precision is applied by `autocast()` around actalign's own forwards rather than by
        # Accelerate, which would patch the model's forward for good.
        # gradient_as_bucket_view: DDP's all-reduce buckets hold the gradients instead of a second copy
        kwargs = [InitProcessGroupKwargs(timeout=timedelta(hours=3)), DistributedDataParallelKwargs(gradient_as_bucket_view=True)]
        accelerator = Accelerator(cpu=device_type == "cpu", mixed_precision="no", kwargs_handlers=kwargs)
        if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
            raise ValueError(
                f"actalign shards models itself: launch with `accelerate launch --multi_gpu` or torchrun and pass "
                f"--fsdp to actalign train instead of Accelerate's {accelerator.distributed_type.value} (see README, 'Scaling out')"
            )
        # one process has nothing to shard: FSDP is then plain training
        return cls(accelerator, device_type, dtype, fsdp=fsdp and accelerator.num_processes > 1)

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def autocast(self):
        """Autocast to bfloat16 when the run's dtype is bfloat16, else a no-op context."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bfloat16")

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over processes (itself in a single process)."""
        if self.world == 1:
            return tensor
        return self.accelerator.reduce(tensor.to(self.device), reduction="sum")

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order (``[obj]`` in a single process)."""
        if self.world == 1:
            return [obj]
        gathered: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(gathered, obj)
        return gathered


# ----------------------------------------------------------------------------- FSDP (parameter sharding)


def shard_hf_model(hf_model: torch.nn.Module) -> None:
    """Shard a plain HF model in place with torch's FSDP2 (``fully_shard``): each decoder layer (the
    model's ``_no_split_modules`` classes), then the rest (embeddings, final norm, tied head) at the
    root. Must run before the TransformerBridge wraps the model; needs an initialised process group."""
    from torch.distributed.fsdp import fully_shard

    layer_classes = set(getattr(hf_model, "_no_split_modules", None) or [])
    layers = [m for m in hf_model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise ValueError(f"{type(hf_model).__name__} names no decoder-layer classes (_no_split_modules); cannot shard it with --fsdp")
    for layer in layers:
        fully_shard(layer)
    # the root too reshards after every forward: left unsharded after a no-grad forward (reference
    # logits, evaluation), its parameters got no gradients in the next backward
    fully_shard(hf_model, reshard_after_forward=True)


def full_state_dicts(hf_model: torch.nn.Module, optimizer: torch.optim.Optimizer, sharded: bool) -> tuple[dict | None, dict]:
    """(model state dict or None, optimizer state dict) in the single-process format, gathered from
    every process when ``sharded`` (collective: every process calls it; only rank 0 gets the tensors).
    Unsharded: (None, ``optimizer.state_dict()``). Checkpoints therefore do not depend on how the run
    was parallelised."""
    if not sharded:
        return None, optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.tensor import DTensor

    model_state = get_model_state_dict(hf_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    main = torch.distributed.get_rank() == 0
    state = optimizer.state_dict()
    full = {}
    for index, per_param in sorted(state["state"].items()):
        full[index] = {}
        for key, value in per_param.items():
            gathered = value.full_tensor() if isinstance(value, DTensor) else value  # collective, one tensor at a time
            full[index][key] = gathered.cpu() if main else None  # only rank 0 keeps the full state
    return model_state, {"state": full, "param_groups": state["param_groups"]}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, sharded: bool) -> None:
    """Restore a single-process-format optimizer state, sharding each tensor like its parameter."""
    if sharded:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        per_param = {index: {key: shard_like(value, params[index]) for key, value in values.items()}
                     for index, values in sorted(state["state"].items())}  # same collective order everywhere
        state = {**state, "state": per_param}
    optimizer.load_state_dict(state)


def shard_like(value: Any, param: torch.Tensor) -> Any:
    """A full optimizer-state tensor of ``param``'s shape, sharded as ``param`` is (else unchanged)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor) and torch.is_tensor(value) and value.shape == param.shape:
        return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
    return value
