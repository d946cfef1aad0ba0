"""The frozen base model of a site: the device it runs on, and the transformers model and tokenizer
loaded from `model.path` (path checks, dtype, pad token, dropout switch, a warning when model.labels does
not fit the checkpoint's head), with its seq-cls head found and, when fresh, drawn from a seed.
"""

from __future__ import annotations

import copy
import logging
import zlib
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedpeer.config import ModelConfig, hub_id_shaped, in_hub_cache, missing_model_dir
from fedpeer.errors import ModelError

log = logging.getLogger(__name__)

HEAD_NAMES = ("classifier", "score", "classification_head")


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


def load_base(
    cfg: ModelConfig, device: torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, bool]:
    """Base model, tokenizer, and whether the seq-cls head was freshly initialized (not in the checkpoint).

    The model is on the CPU, except a 4-bit one (model.quantize), which is loaded onto `device`."""
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
    if cfg.quantize == "4bit":
        kwargs.update(four_bit_options(cfg, device or torch.device("cpu")))
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


def four_bit_options(cfg: ModelConfig, device: torch.device) -> dict[str, Any]:
    """from_pretrained options for model.quantize = "4bit": NF4 weights with double quantization
    (QLoRA's recipe), computing in model.dtype (bfloat16 when that is float32), loaded onto `device`."""
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ModelError(
            'model.quantize = "4bit" needs a CUDA GPU (bitsandbytes kernels); on this machine set '
            'model.quantize = "none" (a smaller model or model.dtype = "bfloat16" also saves memory)'
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelError('model.quantize = "4bit" needs bitsandbytes: pip install bitsandbytes') from None
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if cfg.dtype == "float32" else getattr(torch, cfg.dtype)
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {"quantization_config": config, "device_map": {"": index}}


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


def find_head(base: PreTrainedModel) -> str:
    children = dict(base.named_children())
    for name in HEAD_NAMES:
        if name in children:
            return name
    raise ModelError(
        f"no classification head found (looked for {', '.join(HEAD_NAMES)} among "
        f"{', '.join(children)}); this architecture is not supported for seq-cls"
    )


class SplitHead(torch.nn.Module):
    """A head as the sum of a shared part and a private part, like W = W0 + B_g·A_g + B_l·A_l.

    `shared` is the model's head; `private` is a copy of it with every parameter at zero, so the model
    starts out as it was. Its parameters are named `<head>.shared.*` and `<head>.private.*`.
    `use_private = False` leaves the private part out (the shared model alone, `DualLora.shared_only`).
    """

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.private = copy.deepcopy(head)
        with torch.no_grad():
            for p in self.private.parameters():
                p.zero_()
        self.shared = head
        self.use_private = True

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.shared(hidden, *args, **kwargs)
        if not self.use_private:
            return out
        return out + self.private(hidden, *args, **kwargs)


def split_head(base: PreTrainedModel, head: str) -> None:
    """Replace the head module by a SplitHead around it."""
    setattr(base, head, SplitHead(base.get_submodule(head)))


def init_head(base: PreTrainedModel, head: str, seed_text: str) -> None:
    # A fresh head is the same on every site, like A_g.
    std = getattr(base.config, "initializer_range", 0.02)
    with torch.no_grad():
        for name, p in base.get_submodule(head).named_parameters():
            gen = seeded_generator(f"head/{seed_text}/{head}.{name}")
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            else:
                p.zero_()


def seeded_generator(seed_text: str) -> torch.Generator:
    # crc32, not hash(): Python's string hash changes from process to process.
    return torch.Generator().manual_seed(zlib.crc32(seed_text.encode()))
