"""Dual LoRA model: adapter roles, frozen A_g, state in/out, fingerprint, layout options."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import fedpeer
from fedpeer.config import AdapterConfig, ModelConfig
from fedpeer.datasets.synth import DEMO_LABELS, demo_corpus
from fedpeer.errors import ConfigError, ModelError
from fedpeer.model import DualLora, build_tiny_model, load_dual_lora, resolve_device

CPU = torch.device("cpu")


def load(path: Path, task: str = "causal-lm", local_seed: int = 1, **adapter: object) -> DualLora:
    labels = DEMO_LABELS if task == "seq-cls" else ()
    adapter.setdefault("rank", 4)
    return load_dual_lora(
        ModelConfig(path=str(path), task=task, labels=labels), AdapterConfig(**adapter), CPU, local_seed
    )  # type: ignore[arg-type]


@pytest.fixture(params=["llama-causal-lm", "bert-seq-cls"])
def model_case(request: pytest.FixtureRequest, tiny_llama_dir: Path, tiny_bert_cls_dir: Path) -> tuple:
    if request.param == "llama-causal-lm":
        return tiny_llama_dir, "causal-lm"
    return tiny_bert_cls_dir, "seq-cls"


def batch(dual: DualLora) -> dict[str, torch.Tensor]:
    return dict(
        dual.tokenizer(
            ["small left pleural effusion .", "lungs are clear"],
            padding=True,
            return_tensors="pt",
            return_token_type_ids=False,
        )
    )


def params(dual: DualLora, part: str) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in dual.model.named_parameters() if part in n}


def test_both_adapters_active_and_receive_gradients(model_case: tuple) -> None:
    dual = load(*model_case)
    assert dual.model.base_model.active_adapters == ["global", "local"]
    dual.model(**batch(dual)).logits.square().sum().backward()
    # B starts at zero, so only B gets a gradient on the first step (A's gradient is B^T · ...).
    for part in ("lora_B.global", "lora_B.local"):
        grads = [p.grad for p in params(dual, part).values()]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), part
    assert all(p.grad is None for p in params(dual, "lora_A.global").values())  # frozen (FFA-LoRA)
    assert all(not p.requires_grad for n, p in dual.model.named_parameters() if "base_layer" in n)


def test_untrained_adapters_leave_base_outputs_unchanged(model_case: tuple) -> None:
    path, task = model_case
    dual = load(path, task)
    auto = AutoModelForSequenceClassification if task == "seq-cls" else AutoModelForCausalLM
    base = auto.from_pretrained(path).eval()
    dual.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(dual.model(**batch(dual)).logits, base(**batch(dual)).logits)


def test_frozen_global_a_is_mesh_wide_and_local_a_is_per_site(tiny_llama_dir: Path) -> None:
    one, two, again = (
        load(tiny_llama_dir, local_seed=1),
        load(tiny_llama_dir, local_seed=2),
        load(tiny_llama_dir, local_seed=1),
    )
    a_g = [params(d, "lora_A.global") for d in (one, two, again)]
    assert a_g[0] and all(torch.equal(a_g[0][n], a_g[i][n]) for i in (1, 2) for n in a_g[0])
    assert all(not p.requires_grad for p in a_g[0].values())
    assert not any(p is q for p in one.trainable_parameters() for q in a_g[0].values())
    local_one, local_two = one.local_state(), two.local_state()
    assert any(not torch.equal(local_one[k], local_two[k]) for k in local_one if "lora_A" in k)
    assert all(torch.equal(v, again.local_state()[k]) for k, v in local_one.items())
    other_mesh = load(tiny_llama_dir, mesh_seed=5)
    assert any(not torch.equal(p, params(other_mesh, "lora_A.global")[n]) for n, p in a_g[0].items())


def test_global_keys_are_the_shared_part_only(model_case: tuple) -> None:
    dual = load(*model_case)
    keys = dual.global_keys()
    assert keys == sorted(keys)
    assert not any("local" in k for k in keys)
    b_g = {n.removeprefix("base_model.model.") for n in params(dual, "lora_B.global")}
    assert b_g <= set(keys)
    assert not any("lora_A" in k for k in keys)
    state = dual.global_state()
    assert list(state) == keys
    assert [(s.name, s.shape, s.dtype) for s in dual.global_specs()] == [
        (k, tuple(v.shape), "float32") for k, v in state.items()
    ]
    assert dual.num_global_parameters() == sum(v.numel() for v in state.values())
    assert not set(keys) & set(dual.local_state())


def test_train_global_a_puts_a_g_in_global_keys(tiny_llama_dir: Path) -> None:
    dual = load(tiny_llama_dir, train_global_a=True)
    a_g = {n.removeprefix("base_model.model.") for n in params(dual, "lora_A.global")}
    assert a_g and a_g <= set(dual.global_keys())
    assert all(p.requires_grad for p in params(dual, "lora_A.global").values())


@pytest.mark.parametrize(
    ("share", "travels", "private", "frozen"),
    [
        ("b", {"lora_B.global"}, {"lora_A.local", "lora_B.local"}, {"lora_A.global"}),
        ("a", {"lora_A.global"}, {"lora_A.local", "lora_B.local", "lora_B.global"}, set()),
        ("ab", {"lora_A.global", "lora_B.global"}, {"lora_A.local", "lora_B.local"}, set()),
    ],
)
def test_share_decides_which_factor_travels(
    tiny_llama_dir: Path, share: str, travels: set, private: set, frozen: set
) -> None:
    dual = load(tiny_llama_dir, share=share)

    def kinds(keys: object) -> set[str]:
        return {".".join(k.split(".")[-3:-1]) for k in keys}  # "...lora_B.global.weight" -> lora_B.global

    assert kinds(dual.global_keys()) == travels
    assert kinds(dual.local_state()) == private
    trained = {
        n.removeprefix("base_model.model.") for n, p in dual.model.named_parameters() if p.requires_grad
    }
    assert kinds(trained) == travels | private
    assert kinds(set(dual.adapter_state()) - trained) == frozen


def test_share_a_keeps_b_g_off_the_allowlist(tiny_llama_dir: Path) -> None:
    # The send path's allowlist refuses a private factor even if a role bug put it there.
    dual = load(tiny_llama_dir, share="a")
    roles = dual._roles
    b_g = next(k for k in roles.local_keys if ".lora_B.global." in k)
    bad = dataclasses.replace(roles, global_keys=(*roles.global_keys, b_g), local_keys=roles.local_keys)
    with pytest.raises(ModelError, match="local tensors"):
        DualLora(dual.model, dual.tokenizer, CPU, dual.task, bad, dual.fingerprint_fields())


def test_split_head_shares_one_half_and_starts_as_the_whole(tiny_bert_cls_dir: Path) -> None:
    whole = load(tiny_bert_cls_dir, "seq-cls", head="global")
    split = load(tiny_bert_cls_dir, "seq-cls", head="split")
    assert {k for k in split.global_keys() if k.startswith("classifier.")} == {
        "classifier.shared.weight",
        "classifier.shared.bias",
    }
    assert {k for k in split.local_state() if k.startswith("classifier.")} == {
        "classifier.private.weight",
        "classifier.private.bias",
    }
    with torch.no_grad():
        torch.testing.assert_close(split.model(**batch(split)).logits, whole.model(**batch(whole)).logits)
        split.set_local_state({k: torch.ones_like(v) for k, v in split.local_state().items()})
        assert not torch.allclose(split.model(**batch(split)).logits, whole.model(**batch(whole)).logits)


def test_share_a_contradicts_train_global_a() -> None:
    with pytest.raises(ConfigError, match="adapter.share"):
        AdapterConfig(share="a", train_global_a=True).validate()
    with pytest.raises(ConfigError, match="adapter.share"):
        AdapterConfig(share="x").validate()


def test_global_only_model(tiny_llama_dir: Path) -> None:
    dual = load(tiny_llama_dir, use_local=False)
    assert not params(dual, ".local.") and dual.local_state() == {}
    assert dual.global_keys()


@pytest.mark.parametrize("k", [1, 2])
def test_last_k_blocks_adapts_only_the_last_blocks(model_case: tuple, k: int) -> None:
    dual = load(*model_case, last_k_blocks=k)
    blocks = {
        int(part)
        for key in dual.adapter_state()
        if "lora_" in key
        for part in key.split(".")
        if part.isdigit()
    }
    assert blocks == set(range(2 - k, 2))


def test_head_scope(tiny_bert_cls_dir: Path) -> None:
    shared = load(tiny_bert_cls_dir, "seq-cls", head="global")
    private = load(tiny_bert_cls_dir, "seq-cls", head="local")
    head = {"classifier.weight", "classifier.bias"}
    assert head <= set(shared.global_keys()) and not head & set(shared.local_state())
    assert head <= set(private.local_state()) and not head & set(private.global_keys())
    for dual in (shared, private):
        trainable = {id(p) for p in dual.trainable_parameters()}
        assert all(id(p) in trainable and p.requires_grad for p in params(dual, "classifier").values())


@pytest.mark.parametrize("scope", ["global", "local"])
def test_fresh_head_is_seeded(tiny_llama_dir: Path, scope: str) -> None:
    # A causal-LM checkpoint has no `score` head: it is created from the mesh seed, private or not, so
    # every site's head starts the same (their global adapters first learn for the same head).
    one, two = (load(tiny_llama_dir, "seq-cls", local_seed=s, head=scope) for s in (1, 2))
    other_mesh = load(tiny_llama_dir, "seq-cls", head=scope, mesh_seed=7)
    head = one.adapter_state()["score.weight"]
    assert torch.equal(head, two.adapter_state()["score.weight"])
    assert not torch.equal(head, other_mesh.adapter_state()["score.weight"])
    assert head.abs().sum() > 0
    assert one.fingerprint() == two.fingerprint()


def test_set_global_state_round_trip(model_case: tuple) -> None:
    dual = load(*model_case)
    local_before = dual.local_state()
    new = {k: torch.randn_like(v) for k, v in dual.global_state().items()}
    dual.set_global_state(new)
    assert all(torch.equal(new[k], v) for k, v in dual.global_state().items())
    assert all(torch.equal(local_before[k], v) for k, v in dual.local_state().items())
    new[next(iter(new))] += 1  # the model keeps its own copy, not the caller's tensors
    assert not torch.equal(new[next(iter(new))], dual.global_state()[next(iter(new))])


@pytest.mark.parametrize("damage", ["missing", "extra", "shape"])
def test_set_global_state_rejects_mismatch(tiny_llama_dir: Path, damage: str) -> None:
    dual = load(tiny_llama_dir)
    state = dual.global_state()
    first = next(iter(state))
    if damage == "missing":
        del state[first]
    elif damage == "extra":
        state["model.layers.0.self_attn.q_proj.lora_B.local.weight"] = state[first]
    else:
        state[first] = torch.zeros(3, 3)
    with pytest.raises(ModelError):
        dual.set_global_state(state)


def test_adapter_state_restores_the_whole_model(tiny_bert_cls_dir: Path) -> None:
    trained = load(tiny_bert_cls_dir, "seq-cls", local_seed=1)
    trained.set_global_state({k: torch.randn_like(v) for k, v in trained.global_state().items()})
    trained.set_local_state({k: torch.randn_like(v) for k, v in trained.local_state().items()})
    fresh = load(tiny_bert_cls_dir, "seq-cls", local_seed=2)
    fresh.load_adapter_state(trained.adapter_state())
    for d in (trained, fresh):
        d.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            fresh.model(**batch(fresh)).logits, trained.model(**batch(trained)).logits, rtol=0, atol=0
        )
    with pytest.raises(ModelError):
        fresh.load_adapter_state(trained.global_state())


@pytest.fixture(scope="module")
def other_weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-llama-seed1"),
        arch="llama",
        task="causal-lm",
        corpus=demo_corpus(),
        seed=1,
    )


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ("nothing", True),
        ("local_seed", True),
        ("copied_dir", True),
        ("rank", False),
        ("target_modules", False),
        ("last_k_blocks", False),
        ("mesh_seed", False),
        ("train_global_a", False),
        ("share", False),
        ("base_weights", False),
        ("protocol", False),
    ],
)
def test_fingerprint(
    tiny_llama_dir: Path,
    other_weights_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: str,
    same: bool,
) -> None:
    reference = load(tiny_llama_dir)
    path, seed, adapter = tiny_llama_dir, 1, {}
    if change == "local_seed":
        seed = 9
    elif change == "copied_dir":
        path = Path(shutil.copytree(tiny_llama_dir, tmp_path / "elsewhere"))
    elif change == "base_weights":
        path = other_weights_dir
    elif change == "protocol":
        monkeypatch.setattr(fedpeer, "PROTOCOL_VERSION", fedpeer.PROTOCOL_VERSION + 1)
    elif change != "nothing":
        adapter = {
            "rank": 8,
            "target_modules": ("q_proj", "k_proj", "v_proj"),
            "last_k_blocks": 1,
            "mesh_seed": 3,
            "train_global_a": True,
            "share": "a",
        }
        adapter = {change: adapter[change]}
    other = load(path, local_seed=seed, **adapter)
    assert (other.fingerprint() == reference.fingerprint()) is same
    assert len(reference.fingerprint()) == 16
    if not same:
        assert other.fingerprint_fields() != reference.fingerprint_fields()


def test_fingerprint_fields_are_readable(tiny_llama_dir: Path) -> None:
    fields = load(tiny_llama_dir).fingerprint_fields()
    assert fields["base_name"] == tiny_llama_dir.name
    assert "rank=4" in fields["lora"] and "targets=q_proj,v_proj" in fields["lora"]
    assert fields["protocol"] == str(fedpeer.PROTOCOL_VERSION) and fields["mesh_seed"] == "0"


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        ({"target_modules": ("nope",)}, "target_modules"),
        ({"last_k_blocks": 3}, "only 2 blocks"),
    ],
)
def test_bad_adapter_config(tiny_llama_dir: Path, adapter: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        load(tiny_llama_dir, **adapter)


def test_missing_model_path(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such directory"):
        load(tmp_path / "no-such-model")


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    with pytest.raises(ModelError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ModelError, match="unknown device"):
        resolve_device("tpu-please")


def test_tiny_build_is_idempotent(tiny_llama_dir: Path) -> None:
    before = (tiny_llama_dir / "model.safetensors").stat().st_mtime_ns
    build_tiny_model(tiny_llama_dir, arch="llama", task="causal-lm", corpus=demo_corpus())
    assert (tiny_llama_dir / "model.safetensors").stat().st_mtime_ns == before
