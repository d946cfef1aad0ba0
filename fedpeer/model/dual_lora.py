"""A frozen base model with two LoRA adapters active together: W = W0 + B_g·A_g + B_l·A_l.

`global` is learned by the mesh and its state travels; `local` never leaves the site. With FFA-LoRA
(the default) A_g is drawn from the mesh-wide seed and frozen, so only B_g trains and travels and
mixing B_g is exact. The `DualLora` object is the only place that knows which tensor plays which role:
the send path reads `global_state()` and nothing else. The two adapters of a layer are computed in one
LoRA pass of rank r_g + r_l (fused.py, `adapter.fused`); the parameters stay peft's own.

peft 0.21 notes: `base_model.set_adapter(["global", "local"])` activates both and sets requires_grad on
both (also on A_g, which we freeze again afterwards). The seq-cls head is NOT put in peft's
`modules_to_save`: its ModulesToSaveWrapper refuses more than one active adapter. We flip
requires_grad on the head ourselves and route it to the global or local state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from peft import PeftModel
from peft.tuners.lora.layer import LoraLayer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import fedpeer
from fedpeer.config import AdapterConfig, ModelConfig
from fedpeer.errors import ModelError
from fedpeer.model.adapters import (
    GLOBAL,
    LOCAL,
    attach_adapters,
    init_lora_a,
    last_blocks,
    resolve_targets,
    strip_peft_prefix,
)
from fedpeer.model.base import (
    HEAD_NAMES,
    SplitHead,
    find_head,
    init_head,
    load_base,
    resolve_device,
    split_head,
)
from fedpeer.model.fused import fuse_dual_lora
from fedpeer.tensors import TensorSpec

# Loading the base model is in base.py, attaching the adapters in adapters.py (re-exported here).
__all__ = ["GLOBAL", "HEAD_NAMES", "LOCAL", "DualLora", "load_dual_lora", "resolve_device"]

# Leading elements of each base parameter hashed: cheap, yet another checkpoint or a re-init differs.
_HASH_ELEMENTS = 256


@dataclass(frozen=True)
class _Roles:
    """Adapter tensor names (peft prefix stripped) by role."""

    global_keys: tuple[str, ...]  # travels: B_g and/or A_g (adapter.share) (+head when head == "global")
    frozen_keys: tuple[str, ...]  # A_g under FFA-LoRA: same on every site, never sent
    local_keys: tuple[str, ...]  # never leaves the site: A_l, B_l (+B_g under share "a") (+head when local)
    head: str | None  # module name of the seq-cls head ("classifier", "score", ...)
    shared: str = "b"  # adapter.shared_factors: which global LoRA factors travel ("b", "a", "ab")


class DualLora:
    """The site's model: frozen base + global and local LoRA adapters, with state in/out by role.

    Attributes: `model` (the PeftModel, call it like the transformers model), `tokenizer`, `device`,
    `task` ("causal-lm" | "seq-cls") and `head` (the seq-cls head's module name, else None).
    Tensor names are the model's parameter names without peft's "base_model.model." prefix.
    """

    def __init__(
        self,
        model: PeftModel,
        tokenizer: PreTrainedTokenizerBase,
        device: torch.device,
        task: str,
        roles: _Roles,
        fields: dict[str, str],
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.task = task
        self.head = roles.head
        self._roles = roles
        self._fields = dict(fields)
        self._params = {strip_peft_prefix(n): p for n, p in model.named_parameters()}
        _check_roles(roles, self._params)

    @property
    def base_model(self) -> PreTrainedModel:
        """The transformers model inside the PeftModel (LoRA layers injected)."""
        return cast(PreTrainedModel, self.model.get_base_model())

    # --- what travels -------------------------------------------------------------------------------
    def global_keys(self) -> list[str]:
        """Sorted names of the tensors shared with the mesh (the send path's allowlist)."""
        return list(self._roles.global_keys)

    def global_specs(self) -> list[TensorSpec]:
        return [TensorSpec(k, tuple(self._params[k].shape), "float32") for k in self._roles.global_keys]

    def global_state(self) -> dict[str, torch.Tensor]:
        """fp32 detached clones of the global tensors, in `global_keys()` order, on the model device."""
        return self._get(self._roles.global_keys)

    def set_global_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self._set(self._roles.global_keys, state, "global")

    def num_global_parameters(self) -> int:
        return sum(self._params[k].numel() for k in self._roles.global_keys)

    # --- what stays ---------------------------------------------------------------------------------
    def local_state(self) -> dict[str, torch.Tensor]:
        """The private part (local LoRA A and B, local head): for the site's own checkpoint only."""
        return self._get(self._roles.local_keys)

    def set_local_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self._set(self._roles.local_keys, state, "local")

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Every adapter-related tensor (global incl. frozen A_g, local, head), for checkpoints."""
        return self._get(self._all_keys())

    def load_adapter_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self._set(self._all_keys(), state, "adapter")

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the optimizer updates, in a stable order (global trained keys, then local)."""
        return [self._params[k] for k in (*self._roles.global_keys, *self._roles.local_keys)]

    def shared_parameters(self) -> list[torch.nn.Parameter]:
        """The trainable parameters that travel (`global_keys()`), in `trainable_parameters` order."""
        return [self._params[k] for k in self._roles.global_keys]

    def private_parameters(self) -> list[torch.nn.Parameter]:
        """The trainable parameters that stay at the site (`local_state()`), in a stable order."""
        return [self._params[k] for k in self._roles.local_keys]

    @contextlib.contextmanager
    def shared_only(self) -> Iterator[None]:
        """Within the block, the model is its shared part alone, what the mesh learns: the local
        adapter's scale is 0 and a split head's private half is left out, so what the model computes
        does not depend on the private part (train.schedule decoupled, and scoring the shared part
        alone). A private head (adapter.head = "local") cannot be left out."""
        head = self.head
        if head is not None and not any(k.startswith(f"{head}.") for k in self._roles.global_keys):
            raise ModelError(
                'the shared part alone has no head with adapter.head = "local": use "split" or "global"'
            )
        scaled = [m for m in self.model.modules() if isinstance(m, LoraLayer) and LOCAL in m.scaling]
        saved = [m.scaling[LOCAL] for m in scaled]
        heads = [m for m in self.model.modules() if isinstance(m, SplitHead)]
        try:
            for m in scaled:
                m.scaling[LOCAL] = 0.0
            for h in heads:
                h.use_private = False
            yield
        finally:
            for m, value in zip(scaled, saved, strict=True):
                m.scaling[LOCAL] = value
            for h in heads:
                h.use_private = True

    # --- identity -----------------------------------------------------------------------------------
    def fingerprint_fields(self) -> dict[str, str]:
        """Readable parts of the fingerprint, for mismatch messages."""
        return dict(self._fields)

    def fingerprint(self) -> str:
        """16 hex chars; equal on two sites iff base weights, tokenizer, LoRA layout, seed and protocol match.

        The base model's name is left out: the same weights under another directory name are compatible.
        """
        hashed = {k: v for k, v in self._fields.items() if k != "base_name"}
        return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:16]

    # --- helpers ------------------------------------------------------------------------------------
    def _all_keys(self) -> tuple[str, ...]:
        return tuple(sorted({*self._roles.global_keys, *self._roles.frozen_keys, *self._roles.local_keys}))

    def _get(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        return {k: self._params[k].detach().float().clone() for k in keys}

    def _set(self, keys: tuple[str, ...], state: Mapping[str, torch.Tensor], what: str) -> None:
        missing = [k for k in keys if k not in state]
        extra = sorted(set(state) - set(keys))
        if missing or extra:
            raise ModelError(
                f"{what} state does not fit this model: missing {missing[:3]}, unexpected "
                f"{extra[:3]} (was it saved with another adapter config?)"
            )
        for k in keys:
            if tuple(state[k].shape) != tuple(self._params[k].shape):
                raise ModelError(
                    f"{what} state: {k} has shape {tuple(state[k].shape)}, the model expects "
                    f"{tuple(self._params[k].shape)}"
                )
        with torch.no_grad():
            for k in keys:
                self._params[k].copy_(state[k])


def load_dual_lora(
    model: ModelConfig, adapter: AdapterConfig, device: torch.device, local_seed: int
) -> DualLora:
    """Load the base model and tokenizer from `model.path` and attach the global and local adapters.

    A_g and a fresh seq-cls head come from `adapter.mesh_seed` (identical on every site); A_l from
    `local_seed`. B_g and B_l start at zero, so the adapted model equals the base model at first.
    """
    # Loading draws random numbers (fresh heads, peft's default A init); keep the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        base, tokenizer, fresh_head = load_base(model, device)
        head = find_head(base) if model.task == "seq-cls" else None
        if head is not None and fresh_head:
            # From the mesh seed even when private: sites' global adapters then start out learning for
            # the same head (seed 0-2 of benchmarks/hetero.py, dual/ring: 0.537 -> 0.554 macro-F1).
            init_head(base, head, f"{adapter.head}/{adapter.mesh_seed}")
        if head is not None and adapter.head == "split":
            split_head(base, head)
        for p in base.parameters():
            p.requires_grad_(False)
        targets = resolve_targets(base, adapter.target_modules)
        layers, pattern = last_blocks(base, adapter.last_k_blocks)
        fields = _fingerprint_fields(base, tokenizer, model, adapter, targets, layers, head)
        peft_model = attach_adapters(base, adapter, targets, layers, pattern)
        roles = _assign_roles(peft_model, adapter, head)
        init_lora_a(peft_model, f"{GLOBAL}/{adapter.mesh_seed}", f"{LOCAL}/{local_seed}")
    if adapter.use_local and adapter.fused:
        fuse_dual_lora(peft_model, (GLOBAL, LOCAL))
    _set_trainable(peft_model, roles)
    if model.quantize == "none":  # a 4-bit base was loaded onto the device
        peft_model.to(device)
    return DualLora(peft_model, tokenizer, device, model.task, roles, fields)


def _assign_roles(model: PeftModel, adapter: AdapterConfig, head: str | None) -> _Roles:
    names = [strip_peft_prefix(n) for n, _ in model.named_parameters()]
    a_g = [n for n in names if f".lora_A.{GLOBAL}." in n]
    b_g = [n for n in names if f".lora_B.{GLOBAL}." in n]
    local = [n for n in names if f".lora_A.{LOCAL}." in n or f".lora_B.{LOCAL}." in n]
    head_keys = [n for n in names if head is not None and n.startswith(f"{head}.")]
    if not b_g:
        raise ModelError("no layer was adapted: check adapter.target_modules and adapter.last_k_blocks")
    shared = adapter.shared_factors
    # "b" (FFA-LoRA): A_g frozen, B_g travels; "a" (FedSA-LoRA): A_g travels, B_g trains privately.
    global_keys = (b_g if "b" in shared else []) + (a_g if "a" in shared else [])
    if shared == "a":
        local += b_g
    if adapter.head == GLOBAL:
        global_keys += head_keys
    elif adapter.head == "split" and head is not None:
        global_keys += [k for k in head_keys if k.startswith(f"{head}.shared.")]
        local += [k for k in head_keys if k.startswith(f"{head}.private.")]
    else:
        local += head_keys
    frozen = a_g if shared == "b" else []
    return _Roles(tuple(sorted(global_keys)), tuple(sorted(frozen)), tuple(sorted(local)), head, shared)


def _set_trainable(model: PeftModel, roles: _Roles) -> None:
    # After set_adapter every active LoRA tensor requires grad (A_g too); state it explicitly once.
    # peft already keeps LoRA tensors in fp32 on a half-precision base; the head stays in the base dtype
    # because the hidden states feeding it are in that dtype.
    trainable = {*roles.global_keys, *roles.local_keys}
    for name, p in model.named_parameters():
        p.requires_grad_(strip_peft_prefix(name) in trainable)


def _check_roles(roles: _Roles, params: Mapping[str, torch.Tensor]) -> None:
    # The allowlist of the send path: a local tensor in it would leak the site's private adapter.
    leaked = set(roles.global_keys) & set(roles.local_keys)
    leaked |= {k for k in roles.global_keys if f".lora_A.{LOCAL}." in k or f".lora_B.{LOCAL}." in k}
    if roles.head is not None:  # the private half of a split head
        leaked |= {k for k in roles.global_keys if k.startswith(f"{roles.head}.private.")}
    # A factor of the global adapter that the config keeps private (B_g under FedSA-LoRA, A_g under FFA).
    for factor in "AB":
        if factor.lower() not in roles.shared:
            leaked |= {k for k in roles.global_keys if f".lora_{factor}.{GLOBAL}." in k}
    if leaked:
        raise ModelError(f"internal error: local tensors in the global key list: {sorted(leaked)[:3]}")
    unknown = [k for k in (*roles.global_keys, *roles.frozen_keys, *roles.local_keys) if k not in params]
    if unknown:
        raise ModelError(f"internal error: adapter tensors not in the model: {unknown[:3]}")


# --- fingerprint ------------------------------------------------------------------------------------
def _fingerprint_fields(
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model: ModelConfig,
    adapter: AdapterConfig,
    targets: tuple[str, ...],
    layers: list[int] | None,
    head: str | None,
) -> dict[str, str]:
    layer_text = "all" if layers is None else ",".join(map(str, layers))
    head_scope = adapter.head if head is not None else "none"
    return {
        "base_name": Path(str(base.config.name_or_path or model.path)).name,
        "base_config": _config_hash(base),
        "base_weights": f"{model.dtype}:{_weights_hash(base, head)}",
        "tokenizer": _tokenizer_hash(tokenizer),
        "lora": (
            f"rank={adapter.rank} alpha={adapter.alpha:g} targets={','.join(targets)} layers={layer_text} "
            f"train_global_a={adapter.train_global_a} head={head_scope}"
            + ("" if adapter.share == "b" else f" share={adapter.share}")
        ),
        "mesh_seed": str(adapter.mesh_seed),
        "protocol": str(fedpeer.PROTOCOL_VERSION),
    }


def _config_hash(base: PreTrainedModel) -> str:
    # Where the model sits and which library wrote it do not change what it computes.
    config = {
        k: v
        for k, v in base.config.to_dict().items()
        if k not in ("_name_or_path", "transformers_version", "_commit_hash")
    }
    return _short_hash(json.dumps(config, sort_keys=True, default=str).encode())


def _weights_hash(base: PreTrainedModel, head: str | None) -> str:
    # The head is left out: a local head becomes site-specific as it trains; its shape is in the config hash.
    h = hashlib.sha256()
    for name, p in sorted(base.named_parameters()):
        if head is not None and name.startswith(f"{head}."):
            continue
        first = p.detach().reshape(-1)[:_HASH_ELEMENTS].cpu().contiguous()
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(first.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return _short_hash(json.dumps([vocab, tokenizer.pad_token]).encode())


def _short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
