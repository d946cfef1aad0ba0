"""A frozen base model with two LoRA adapters active together: W = W0 + B_g·A_g + B_l·A_l.

`global` is learned by the mesh and its state travels; `local` never leaves the site. With FFA-LoRA
(the default) A_g is drawn from the mesh-wide seed and frozen, so only B_g trains and travels and
mixing B_g is exact. The `DualLora` object is the only place that knows which tensor plays which role:
the send path reads `global_state()` and nothing else.

peft 0.21 notes: `base_model.set_adapter(["global", "local"])` activates both and sets requires_grad on
both (also on A_g, which we freeze again afterwards). The seq-cls head is NOT put in peft's
`modules_to_save`: its ModulesToSaveWrapper refuses more than one active adapter. We flip
requires_grad on the head ourselves and route it to the global or local state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from peft import LoraConfig, LoraModel, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.pytorch_utils import Conv1D

import fedpeer
from fedpeer.config import AdapterConfig, ModelConfig, hub_id_shaped, in_hub_cache, missing_model_dir
from fedpeer.errors import ModelError
from fedpeer.tensors import TensorSpec

log = logging.getLogger(__name__)

GLOBAL, LOCAL = "global", "local"
_PEFT_PREFIX = "base_model.model."
HEAD_NAMES = ("classifier", "score", "classification_head")
# Tried in order when the architecture is unknown to peft: attention projections of common families.
_TARGET_CANDIDATES = (
    ("q_proj", "v_proj"),
    ("query", "value"),
    ("c_attn",),
    ("qkv_proj",),
    ("Wqkv",),
    ("query_key_value",),
)
# Leading elements of each base parameter hashed: cheap, yet another checkpoint or a re-init differs.
_HASH_ELEMENTS = 256


def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; anything else is parsed by torch and checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(
            f'device {name!r} asked for but CUDA is not available: set train.device = "cpu" or "auto"'
        )
    return device


@dataclass(frozen=True)
class _Roles:
    """Adapter tensor names (peft prefix stripped) by role."""

    global_keys: tuple[str, ...]  # travels: B_g (+A_g when trained) (+head when head == "global")
    frozen_keys: tuple[str, ...]  # A_g under FFA-LoRA: same on every site, never sent
    local_keys: tuple[str, ...]  # never leaves the site: A_l, B_l (+head when head == "local")
    head: str | None  # module name of the seq-cls head ("classifier", "score", ...)


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
        self._params = {_strip(n): p for n, p in model.named_parameters()}
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
        base, tokenizer, fresh_head = _load_base(model)
        head = _find_head(base) if model.task == "seq-cls" else None
        if head is not None and fresh_head:
            # From the mesh seed even when private: sites' global adapters then start out learning for
            # the same head (seed 0-2 of benchmarks/hetero.py, dual/ring: 0.537 -> 0.554 macro-F1).
            _init_head(base, head, f"{adapter.head}/{adapter.mesh_seed}")
        for p in base.parameters():
            p.requires_grad_(False)
        targets = _resolve_targets(base, adapter.target_modules)
        layers, pattern = _last_blocks(base, adapter.last_k_blocks)
        fields = _fingerprint_fields(base, tokenizer, model, adapter, targets, layers, head)
        peft_model = _attach_adapters(base, adapter, targets, layers, pattern)
        roles = _assign_roles(peft_model, adapter, head)
        _init_lora_a(peft_model, f"{GLOBAL}/{adapter.mesh_seed}", f"{LOCAL}/{local_seed}")
    _set_trainable(peft_model, roles)
    peft_model.to(device)
    return DualLora(peft_model, tokenizer, device, model.task, roles, fields)


# --- loading ----------------------------------------------------------------------------------------
def _load_base(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, bool]:
    """Base model, tokenizer, and whether the seq-cls head was freshly initialized (not in the checkpoint)."""
    kwargs: dict[str, Any] = {"dtype": getattr(torch, cfg.dtype), "output_loading_info": True}
    if cfg.task == "seq-cls":
        cls: Any = AutoModelForSequenceClassification
        labels = dict(enumerate(cfg.labels))
        # ignore_mismatched_sizes: a checkpoint's head for other classes is replaced by a fresh one.
        kwargs.update(
            num_labels=len(labels),
            id2label=labels,
            ignore_mismatched_sizes=True,
            label2id={name: i for i, name in labels.items()},
        )
    else:
        cls = AutoModelForCausalLM
    hint = "Give a local model directory or a model id available offline (HF_HUB_OFFLINE=1 uses the cache)."
    _check_model_path(cfg.path)
    try:
        base, info = cls.from_pretrained(cfg.path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(cfg.path)
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0].rstrip(".")
        raise ModelError(f"cannot load model {cfg.path!r}: {reason}. {hint}") from None
    _ensure_pad_token(base, tokenizer)
    if not cfg.dropout:
        _disable_dropout(base)
    # mismatched_keys holds (name, checkpoint shape, model shape) tuples.
    mismatched_head = [m for m in info["mismatched_keys"] if m[0].split(".")[0] in HEAD_NAMES]
    if mismatched_head:
        _warn_head_resized(cfg, mismatched_head)
    reinit = [*info["missing_keys"], *(m[0] for m in info["mismatched_keys"])]
    fresh_head = any(k.split(".")[0] in HEAD_NAMES for k in reinit)
    return base, tokenizer, fresh_head


def _check_model_path(path: str) -> None:
    """Refuse at once a model path that exists nowhere, before transformers tries it on the hub
    (a minute of retries when offline, then "couldn't connect"). A hub id `org/name` not in the
    local cache is fetched only when the hub may be used (HF_HUB_OFFLINE unset)."""
    missing = missing_model_dir(path, Path.cwd())
    if missing is not None:
        raise ModelError(
            f"model.path {path!r}: no such directory: {missing} (a Hugging Face model id is org/name)"
        )
    if Path(path).expanduser().exists() or not hub_id_shaped(path) or in_hub_cache(path):
        return
    from huggingface_hub import constants

    offline_fn = getattr(constants, "is_offline_mode", None)
    offline = offline_fn() if offline_fn is not None else bool(constants.HF_HUB_OFFLINE)
    local = (Path.cwd() / path).resolve()
    if offline:
        raise ModelError(
            f"model.path {path!r}: no such directory ({local}), and no model {path!r} in the Hugging Face "
            "cache (HF_HUB_OFFLINE is set, so it is not downloaded): give the model's directory"
        )
    log.info("model.path %r is not a directory (%s): fetching it from the Hugging Face hub", path, local)


def _warn_head_resized(cfg: ModelConfig, mismatched: list[Any]) -> None:
    """Say in fedpeer's words that model.labels does not fit the checkpoint's classification head."""
    checkpoint_shape = tuple(mismatched[0][1])
    outputs = checkpoint_shape[0] if checkpoint_shape else "?"
    log.warning(
        "model.labels has %d names but the checkpoint's head has %s outputs: the head is re-initialised "
        "for %d labels (what it learned is not used)",
        len(cfg.labels),
        outputs,
        len(cfg.labels),
    )


def _ensure_pad_token(base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    # Batches are padded; a decoder-only tokenizer often has no pad token, and Llama's seq-cls head
    # needs pad_token_id to find each row's last real token.
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelError("the tokenizer has no pad, eos or unk token to pad batches with")
        tokenizer.pad_token = fallback
    if base.config.pad_token_id is None:
        base.config.pad_token_id = tokenizer.pad_token_id
    # Training pads on the right so positions of real tokens do not depend on the batch's longest row.
    tokenizer.padding_side = "right"


def _disable_dropout(base: PreTrainedModel) -> None:
    """p = 0 in every dropout layer, and in float `*dropout*` attributes that modules pass to functional
    dropout (e.g. attention_dropout in Llama-style attention)."""
    for module in base.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name, value in vars(module).items():
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)


def _find_head(base: PreTrainedModel) -> str:
    children = dict(base.named_children())
    for name in HEAD_NAMES:
        if name in children:
            return name
    raise ModelError(
        f"no classification head found (looked for {', '.join(HEAD_NAMES)} among "
        f"{', '.join(children)}); this architecture is not supported for seq-cls"
    )


def _init_head(base: PreTrainedModel, head: str, seed_text: str) -> None:
    # A fresh head is the same on every site, like A_g.
    std = getattr(base.config, "initializer_range", 0.02)
    with torch.no_grad():
        for name, p in base.get_submodule(head).named_parameters():
            gen = _generator(f"head/{seed_text}/{head}.{name}")
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            else:
                p.zero_()


# --- LoRA layout ------------------------------------------------------------------------------------
def _resolve_targets(base: PreTrainedModel, requested: tuple[str, ...]) -> tuple[str, ...]:
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


def _last_blocks(base: PreTrainedModel, k: int) -> tuple[list[int] | None, str | None]:
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
    adapter: AdapterConfig, targets: tuple[str, ...], layers: list[int] | None, pattern: str | None
) -> LoraConfig:
    return LoraConfig(
        r=adapter.rank,
        lora_alpha=adapter.alpha,  # type: ignore[arg-type]  # peft divides alpha by r: floats work
        lora_dropout=adapter.dropout,
        target_modules=list(targets),
        layers_to_transform=layers,
        layers_pattern=pattern,
        bias="none",
    )


def _attach_adapters(
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
        model.add_adapter(LOCAL, _lora_config(adapter, targets, layers, pattern))
        cast(LoraModel, model.base_model).set_adapter([GLOBAL, LOCAL])
    return model


def _assign_roles(model: PeftModel, adapter: AdapterConfig, head: str | None) -> _Roles:
    names = [_strip(n) for n, _ in model.named_parameters()]
    a_g = [n for n in names if f".lora_A.{GLOBAL}." in n]
    b_g = [n for n in names if f".lora_B.{GLOBAL}." in n]
    local = [n for n in names if f".lora_A.{LOCAL}." in n or f".lora_B.{LOCAL}." in n]
    head_keys = [n for n in names if head is not None and n.startswith(f"{head}.")]
    if not b_g:
        raise ModelError("no layer was adapted: check adapter.target_modules and adapter.last_k_blocks")
    global_keys = b_g + (a_g if adapter.train_global_a else [])
    if adapter.head == GLOBAL:
        global_keys += head_keys
    else:
        local += head_keys
    frozen = [] if adapter.train_global_a else a_g
    return _Roles(tuple(sorted(global_keys)), tuple(sorted(frozen)), tuple(sorted(local)), head)


def _init_lora_a(model: PeftModel, global_seed: str, local_seed: str) -> None:
    """A_g from the mesh seed, A_l from the site seed: kaiming-uniform bound 1/sqrt(fan_in), like peft."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            key = _strip(name)
            for adapter_name, seed in ((GLOBAL, global_seed), (LOCAL, local_seed)):
                if f".lora_A.{adapter_name}." in key:
                    bound = 1.0 / math.sqrt(p.shape[1])
                    draw = torch.rand(p.shape, generator=_generator(f"A/{seed}/{key}"), dtype=torch.float32)
                    p.copy_((draw * 2 - 1) * bound)
                elif f".lora_B.{adapter_name}." in key:
                    p.zero_()


def _set_trainable(model: PeftModel, roles: _Roles) -> None:
    # After set_adapter every active LoRA tensor requires grad (A_g too); state it explicitly once.
    # peft already keeps LoRA tensors in fp32 on a half-precision base; the head stays in the base dtype
    # because the hidden states feeding it are in that dtype.
    trainable = {*roles.global_keys, *roles.local_keys}
    for name, p in model.named_parameters():
        p.requires_grad_(_strip(name) in trainable)


def _check_roles(roles: _Roles, params: Mapping[str, torch.Tensor]) -> None:
    # The allowlist of the send path: a local tensor in it would leak the site's private adapter.
    leaked = set(roles.global_keys) & set(roles.local_keys)
    leaked |= {k for k in roles.global_keys if f".lora_A.{LOCAL}." in k or f".lora_B.{LOCAL}." in k}
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


def _generator(seed_text: str) -> torch.Generator:
    # crc32, not hash(): Python's string hash changes from process to process.
    return torch.Generator().manual_seed(zlib.crc32(seed_text.encode()))


def _strip(name: str) -> str:
    return name.removeprefix(_PEFT_PREFIX)
