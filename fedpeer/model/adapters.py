"""The two LoRA adapters on a base model: which layers they adapt (target modules, the last k blocks),
attaching `global` and `local` with peft, and their A matrices drawn from seeds.
"""

from __future__ import annotations

import math
import warnings
from typing import cast

import torch
from peft import LoraConfig, LoraModel, PeftModel, get_peft_model
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from fedpeer.config import AdapterConfig
from fedpeer.errors import ModelError
from fedpeer.model.base import seeded_generator

GLOBAL, LOCAL = "global", "local"
PEFT_PREFIX = "base_model.model."
# Tried in order when the architecture is unknown to peft: attention projections of common families.
_TARGET_CANDIDATES = (
    ("q_proj", "v_proj"),
    ("query", "value"),
    ("c_attn",),
    ("qkv_proj",),
    ("Wqkv",),
    ("query_key_value",),
)


def resolve_targets(base: PreTrainedModel, requested: tuple[str, ...]) -> tuple[str, ...]:
    leaves = {
        n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, torch.nn.Linear | Conv1D)
    }
    if requested:
        unknown = [t for t in requested if t not in leaves]
        if unknown:
            raise ModelError(
                f"adapter.target_modules {unknown} not found in the model; linear layers are: "
                f"{', '.join(sorted(leaves))}"
            )
        return tuple(sorted(requested))
    try:
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as known
    except ImportError:  # moved in some peft versions; scanning below still works
        known = {}
    candidates = [tuple(known.get(base.config.model_type, ())), *_TARGET_CANDIDATES]
    for names in candidates:
        if names and all(n in leaves for n in names):
            return tuple(sorted(names))
    raise ModelError(
        f"cannot pick LoRA target modules for model type {base.config.model_type!r}: set "
        f"adapter.target_modules to some of {', '.join(sorted(leaves))}"
    )


def last_blocks(base: PreTrainedModel, k: int) -> tuple[list[int] | None, str | None]:
    """peft `layers_to_transform` and `layers_pattern` for the last k blocks (None, None: all blocks)."""
    if k == 0:
        return None, None
    n = getattr(base.config.get_text_config(), "num_hidden_layers", None)
    if not n:
        raise ModelError("adapter.last_k_blocks needs the model config's num_hidden_layers; set it to 0")
    if k > n:
        raise ModelError(f"adapter.last_k_blocks = {k} but the model has only {n} blocks")
    # The block list is the ModuleList with one entry per layer: "layers" (llama), "layer" (bert), "h" (gpt2).
    lists = [name for name, m in base.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    if not lists:
        raise ModelError("cannot find the list of transformer blocks; set adapter.last_k_blocks = 0")
    return list(range(n - k, n)), lists[0].rsplit(".", 1)[-1]


def _lora_config(
    adapter: AdapterConfig,
    targets: tuple[str, ...],
    layers: list[int] | None,
    pattern: str | None,
    rank: int | None = None,
) -> LoraConfig:
    r = rank or adapter.rank
    return LoraConfig(
        r=r,
        # The same alpha / r scale at any rank. peft divides alpha by r: floats work.
        lora_alpha=adapter.alpha * r / adapter.rank,  # type: ignore[arg-type]
        lora_dropout=adapter.dropout,
        target_modules=list(targets),
        layers_to_transform=layers,
        layers_pattern=pattern,
        bias="none",
    )


def attach_adapters(
    base: PreTrainedModel,
    adapter: AdapterConfig,
    targets: tuple[str, ...],
    layers: list[int] | None,
    pattern: str | None,
) -> PeftModel:
    # No task_type: peft would then add the head to modules_to_save, which breaks with two active adapters.
    with warnings.catch_warnings():
        # peft 0.21 reads a property transformers 5 deprecated; nothing a user can act on.
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        model = get_peft_model(base, _lora_config(adapter, targets, layers, pattern), adapter_name=GLOBAL)
    if adapter.use_local:
        model.add_adapter(LOCAL, _lora_config(adapter, targets, layers, pattern, adapter.local_rank))
        cast(LoraModel, model.base_model).set_adapter([GLOBAL, LOCAL])
    return model


def init_lora_a(model: PeftModel, global_seed: str, local_seed: str) -> None:
    """A_g from the mesh seed, A_l from the site seed: kaiming-uniform bound 1/sqrt(fan_in), like peft."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            key = strip_peft_prefix(name)
            for adapter_name, seed in ((GLOBAL, global_seed), (LOCAL, local_seed)):
                if f".lora_A.{adapter_name}." in key:
                    bound = 1.0 / math.sqrt(p.shape[1])
                    draw = torch.rand(
                        p.shape, generator=seeded_generator(f"A/{seed}/{key}"), dtype=torch.float32
                    )
                    p.copy_((draw * 2 - 1) * bound)
                elif f".lora_B.{adapter_name}." in key:
                    p.zero_()


def strip_peft_prefix(name: str) -> str:
    """A parameter name as DualLora keys it: without peft's "base_model.model." prefix."""
    return name.removeprefix(PEFT_PREFIX)
