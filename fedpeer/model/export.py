"""Export a site's model (global + local adapters, and the head) as one standard PEFT LoRA adapter.

Both adapters share rank r and scaling alpha/r, so their sum is one LoRA of rank 2r:
B_g·A_g + B_l·A_l = [B_g B_l]·[A_g; A_l]. With alpha' = alpha/r · 2r peft's scaling alpha'/r' is
unchanged, and `PeftModel.from_pretrained(base, out_dir)` reproduces the site's outputs.
`adapters="global"` exports the mesh's adapter alone (rank r), `"local"` the site's private one.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import cast

import torch
from peft import LoraConfig
from safetensors.torch import save_file

from fedpeer.errors import ModelError
from fedpeer.model.dual_lora import GLOBAL, LOCAL, DualLora

_ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CHOICES = ("both", "global", "local")
_PREFIX = "base_model.model."

_README = """# fedpeer adapter export

A standard PEFT LoRA adapter (rank {rank}) written by fedpeer's `export_peft`. {what}
It carries what this site learned from its own data: share it only as the site's policy allows.

Base model: `{base}`

```python
from peft import PeftModel
from transformers import {auto_class}

base = {auto_class}.from_pretrained("{base}"{label_args})
model = PeftModel.from_pretrained(base, "{out_dir}")
```
"""
_WHAT_DUAL = (
    "It is the sum of the site's two adapters, the global one (learned with the mesh) and the local one\n"
    "(this site only), stacked on the rank axis so that B·A = B_g·A_g + B_l·A_l."
)
_WHAT_GLOBAL = "It holds the site's global adapter (learned with the mesh)."
_WHAT_LOCAL = "It holds the site's local adapter alone (this site only, without the mesh's)."


def export_peft(
    dual: DualLora, out_dir: str | Path, adapters: str = "both", logit_bias: torch.Tensor | None = None
) -> Path:
    """Write `adapter_config.json`, `adapter_model.safetensors` and README.md into `out_dir`.

    adapters: "both" (global + local summed, or global alone when the site has no local adapter),
    "global" (the mesh's adapter alone) or "local" (the private one alone). The seq-cls head goes
    with both and local; with global only when it is shared with the mesh (adapter.head = "global").
    logit_bias (seq-cls, adapters "both": the site's own model): added to the head's bias, e.g. the
    site's label prior of train.prior, so that the exported model predicts as the site does.
    """
    names, head = _pick(dual, adapters)
    if logit_bias is not None and (adapters != "both" or head is None):
        raise ModelError("a logit bias (train.prior) goes only into the site's own classifier: adapters both")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create export directory {out}: {exc.strerror or exc}") from None
    state = dual.adapter_state()
    config = cast(LoraConfig, copy.deepcopy(dual.model.peft_config[GLOBAL]))
    n = len(names)
    # Every adapter has the global one's alpha/r scaling (adapter.local_rank keeps it): so does the stack.
    scale = config.lora_alpha / config.r
    config.r = sum(cast(LoraConfig, dual.model.peft_config[name]).r for name in names)
    config.lora_alpha = scale * config.r  # type: ignore[assignment]  # peft accepts a float alpha
    config.modules_to_save = [head] if head else None
    config.inference_mode = True
    config.base_model_name_or_path = dual.base_model.config.name_or_path
    config.save_pretrained(str(out))
    parts = ("shared",) if adapters == "global" else ("shared", "private")
    tensors = _combined_tensors(state, names, head, parts)
    if logit_bias is not None:
        key = f"{_PREFIX}{head}.bias"
        if key not in tensors:
            raise ModelError(f"the classification head {head!r} has no bias to carry the site's label prior")
        tensors[key] = tensors[key] + logit_bias.to(tensors[key])
    save_file(tensors, str(out / _ADAPTER_FILE), metadata={"format": "pt"})
    what = _WHAT_DUAL if n == 2 else _WHAT_LOCAL if names == [LOCAL] else _WHAT_GLOBAL
    (out / "README.md").write_text(_readme(dual, config.r, out, what, head))
    return out


def _pick(dual: DualLora, adapters: str) -> tuple[list[str], str | None]:
    """The adapters to stack, and the head module to include (None: none)."""
    has_local = LOCAL in dual.model.peft_config
    head_is_global = dual.head is not None and any(k.startswith(f"{dual.head}.") for k in dual.global_keys())
    if adapters == "both":
        return ([GLOBAL, LOCAL] if has_local else [GLOBAL]), dual.head
    if adapters == "global":
        if dual.head is not None and not head_is_global:
            raise ModelError(
                'the classification head is private to the site (adapter.head = "local"), so the global '
                "adapter alone has no head to go with: export both adapters, or the local one"
            )
        return [GLOBAL], dual.head
    if adapters == "local":
        if not has_local:
            raise ModelError("this site has no local adapter (adapter.use_local = false): export global")
        return [LOCAL], dual.head
    raise ModelError(f"adapters must be one of {', '.join(ADAPTER_CHOICES)}, got {adapters!r}")


def _combined_tensors(
    state: dict[str, torch.Tensor], adapters: list[str], head: str | None, parts: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    suffix = f".lora_A.{adapters[0]}.weight"
    modules = sorted(k[: -len(suffix)] for k in state if k.endswith(suffix))
    out = {}
    for m in modules:
        # A stacks on the rank rows, B on the rank columns: B·A is then the sum of the adapters' products.
        out[f"{_PREFIX}{m}.lora_A.weight"] = torch.cat([state[f"{m}.lora_A.{a}.weight"] for a in adapters], 0)
        out[f"{_PREFIX}{m}.lora_B.weight"] = torch.cat([state[f"{m}.lora_B.{a}.weight"] for a in adapters], 1)
    if head:
        head_state = {k: v for k, v in state.items() if k.startswith(f"{head}.")}
        out.update({f"{_PREFIX}{k}": v for k, v in _merged_head(head_state, head, parts).items()})
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def _merged_head(
    state: dict[str, torch.Tensor], head: str, parts: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """The head as one module: a split head (adapter.head = "split") becomes the sum of its `parts`,
    which is exact for a linear head (weight and bias), the head of every supported architecture."""
    if not any(k.startswith(f"{head}.shared.") for k in state):
        return state
    merged: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        part, _, name = key[len(head) + 1 :].partition(".")
        if name not in ("weight", "bias"):
            raise ModelError(
                f"cannot export the split head {head!r}: {key} is not a linear layer's weight or bias"
            )
        if part in parts:
            merged[f"{head}.{name}"] = merged.get(f"{head}.{name}", 0) + value
    return merged


def _readme(dual: DualLora, rank: int, out: Path, what: str, head: str | None) -> str:
    base = dual.base_model
    labels = list((base.config.id2label or {}).values()) if head else []
    return _README.format(
        rank=rank,
        what=what + (f" The classification head `{head}` is included (modules_to_save)." if head else ""),
        base=base.config.name_or_path,
        auto_class="AutoModelForSequenceClassification" if dual.task == "seq-cls" else "AutoModelForCausalLM",
        label_args=f", num_labels={len(labels)}" if labels else "",
        out_dir=out,
    )
