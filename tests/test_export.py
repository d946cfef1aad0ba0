"""PEFT export: a plain PeftModel loaded from the export reproduces the site's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from fedpeer.config import AdapterConfig, ModelConfig
from fedpeer.datasets.synth import DEMO_LABELS
from fedpeer.model import export_peft, load_dual_lora

TEXTS = ["small left pleural effusion .", "no acute cardiopulmonary process", "hx fever"]


@pytest.mark.parametrize(
    ("arch", "task", "adapter"),
    [
        ("llama", "causal-lm", {}),
        ("llama", "causal-lm", {"use_local": False, "last_k_blocks": 1}),
        ("bert", "seq-cls", {}),
        ("bert", "seq-cls", {"head": "local", "train_global_a": True}),
        ("bert", "seq-cls", {"head": "local", "share": "a", "local_rank": 2}),
        ("llama", "causal-lm", {"local_rank": 1}),
        ("bert", "seq-cls", {"head": "split"}),
    ],
)
def test_export_reproduces_logits(
    tiny_llama_dir: Path, tiny_bert_cls_dir: Path, tmp_path: Path, arch: str, task: str, adapter: dict
) -> None:
    path, labels = (tiny_llama_dir, ()) if arch == "llama" else (tiny_bert_cls_dir, DEMO_LABELS)
    dual = load_dual_lora(
        ModelConfig(path=str(path), task=task, labels=labels),
        AdapterConfig(rank=4, alpha=8.0, **adapter),
        torch.device("cpu"),
        local_seed=3,
    )
    # Non-zero B everywhere (and a changed head) so both adapters visibly shape the output.
    torch.manual_seed(0)
    dual.set_global_state({k: torch.randn_like(v) * 0.1 for k, v in dual.global_state().items()})
    dual.set_local_state({k: torch.randn_like(v) * 0.1 for k, v in dual.local_state().items()})

    out = export_peft(dual, tmp_path / "export")

    auto = AutoModelForSequenceClassification if task == "seq-cls" else AutoModelForCausalLM
    loaded = PeftModel.from_pretrained(auto.from_pretrained(path), str(out)).eval()
    dual.model.eval()
    batch = dict(dual.tokenizer(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=False))
    with torch.no_grad():
        expected, got = dual.model(**batch).logits, loaded(**batch).logits
        plain = auto.from_pretrained(path)(**batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapters do change the output
    config = json.loads((out / "adapter_config.json").read_text())
    local_rank = adapter.get("local_rank", 4) if adapter.get("use_local", True) else 0
    assert config["r"] == 4 + local_rank
    assert config["lora_alpha"] == pytest.approx(2.0 * config["r"])
    assert "PeftModel.from_pretrained" in (out / "README.md").read_text()
