"""Export a site's model (global + local adapters, and the head) as one standard PEFT LoRA adapter.

Both adapters share rank r and scaling alpha/r, so their sum is one LoRA of rank 2r:
B_g·A_g + B_l·A_l = [B_g B_l]·[A_g; A_l]. With alpha' = alpha/r · 2r peft's scaling alpha'/r' is
unchanged, and `PeftModel.from_pretrained(base, out_dir)` reproduces the site's outputs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import cast

import torch
from peft import LoraConfig
from safetensors.torch import save_file

from fedpeer.model.dual_lora import GLOBAL, LOCAL, DualLora

_ADAPTER_FILE = "adapter_model.safetensors"
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


def export_peft(dual: DualLora, out_dir: str | Path) -> Path:
    """Write `adapter_config.json`, `adapter_model.safetensors` and README.md into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = dual.adapter_state()
    adapters = [GLOBAL, LOCAL] if LOCAL in dual.model.peft_config else [GLOBAL]
    config = cast(LoraConfig, copy.deepcopy(dual.model.peft_config[GLOBAL]))
    n = len(adapters)
    config.r, config.lora_alpha = config.r * n, config.lora_alpha * n  # same alpha/r scaling
    config.modules_to_save = [dual.head] if dual.head else None
    config.inference_mode = True
    config.base_model_name_or_path = dual.base_model.config.name_or_path
    config.save_pretrained(str(out))
    save_file(
        _combined_tensors(state, adapters, dual.head), str(out / _ADAPTER_FILE), metadata={"format": "pt"}
    )
    (out / "README.md").write_text(_readme(dual, config.r, out, dual_adapters=n == 2))
    return out


def _combined_tensors(
    state: dict[str, torch.Tensor], adapters: list[str], head: str | None
) -> dict[str, torch.Tensor]:
    suffix = f".lora_A.{GLOBAL}.weight"
    modules = sorted(k[: -len(suffix)] for k in state if k.endswith(suffix))
    out = {}
    for m in modules:
        # A stacks on the rank rows, B on the rank columns: B·A is then the sum of the adapters' products.
        out[f"{_PREFIX}{m}.lora_A.weight"] = torch.cat([state[f"{m}.lora_A.{a}.weight"] for a in adapters], 0)
        out[f"{_PREFIX}{m}.lora_B.weight"] = torch.cat([state[f"{m}.lora_B.{a}.weight"] for a in adapters], 1)
    if head:
        out.update({f"{_PREFIX}{k}": v for k, v in state.items() if k.startswith(f"{head}.")})
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def _readme(dual: DualLora, rank: int, out: Path, dual_adapters: bool) -> str:
    base = dual.base_model
    labels = list((base.config.id2label or {}).values()) if dual.head else []
    return _README.format(
        rank=rank,
        what=(_WHAT_DUAL if dual_adapters else _WHAT_GLOBAL)
        + (f" The classification head `{dual.head}` is included (modules_to_save)." if dual.head else ""),
        base=base.config.name_or_path,
        auto_class="AutoModelForSequenceClassification" if dual.task == "seq-cls" else "AutoModelForCausalLM",
        label_args=f", num_labels={len(labels)}" if labels else "",
        out_dir=out,
    )
