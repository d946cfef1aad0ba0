"""Local training: loss goes down, lr=0 is a no-op, metrics, exact resume, data errors."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fedpeer.config import AdapterConfig, ModelConfig, TrainConfig
from fedpeer.datasets.synth import DEMO_LABELS
from fedpeer.errors import ConfigError, DataError
from fedpeer.model import DualLora, load_dual_lora
from fedpeer.train import LocalTrainer, macro_f1, make_batch, read_jsonl, split_examples
from fedpeer.train.data import IGNORE_INDEX, Example, split_prompt
from fedpeer.train.loop import balanced_class_weights
from tests.trainutil import TASKS, TrainSetup, demo_site_per_task, make_trainer, task_setup

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return demo_site_per_task(tmp_path_factory.mktemp("sites"), n_train=48, n_eval=16)


@pytest.fixture(params=TASKS)
def setup(
    request: pytest.FixtureRequest, tiny_llama_dir: Path, tiny_bert_cls_dir: Path, sites: dict[str, Path]
) -> TrainSetup:
    task = request.param
    return task_setup(
        task,
        tiny_llama_dir if task == "causal-lm" else tiny_bert_cls_dir,
        sites[task],
        AdapterConfig(rank=4, alpha=8.0, dropout=0.1),
        steps_per_round=3,
        batch_size=8,
        lr=5e-3,
        max_length=64,
    )


trainer = make_trainer


def all_weights(dual: DualLora) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in dual.model.named_parameters()}


def test_loss_decreases(setup: tuple) -> None:
    # A random tiny base with frozen embeddings and head learns slowly: ask for a clear drop, no more.
    t = trainer(setup, lr=2e-2)
    before = t.evaluate()["eval_loss"]
    losses = [t.train_round() for _ in range(4)]
    after = t.evaluate()["eval_loss"]
    assert all(math.isfinite(x) for x in losses)
    assert after < before - 0.1, (before, after, losses)


def test_lr_zero_changes_nothing(setup: tuple) -> None:
    t = trainer(setup, lr=0.0, weight_decay=0.1)
    before = all_weights(t.dual)
    t.train_round()
    after = all_weights(t.dual)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_no_steps_returns_nan_and_changes_nothing(setup: tuple) -> None:
    t = trainer(setup, steps_per_round=0)
    before = all_weights(t.dual)
    assert math.isnan(t.train_round())
    assert all(torch.equal(v, all_weights(t.dual)[n]) for n, v in before.items())


def test_eval_metrics(setup: tuple) -> None:
    t = trainer(setup)
    metrics = t.evaluate()
    assert t.dual.model.training
    assert metrics["eval_loss"] > 0
    if setup[0].task == "seq-cls":
        assert set(metrics) == {"eval_loss", "accuracy", "macro_f1"}
        assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["macro_f1"] <= 1
    else:
        assert set(metrics) == {"eval_loss", "perplexity"}
        assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))


def test_resume_continues_identically(setup: tuple) -> None:
    check_resume(setup, CPU)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resume_continues_identically_on_cuda(setup: tuple) -> None:
    check_resume(setup, torch.device("cuda"))


def check_resume(setup: tuple, device: torch.device) -> None:
    straight = trainer(setup, device)
    straight_losses = [straight.train_round() for _ in range(3)]
    assert all(v.device.type == device.type for v in straight.dual.global_state().values())

    first = trainer(setup, device)
    first_losses = [first.train_round() for _ in range(2)]
    # Round-trip the meta through JSON, as a checkpoint would.
    tensors, meta = first.state_tensors(), json.loads(json.dumps(first.state_meta()))
    adapters = first.dual.adapter_state()
    torch.manual_seed(1234)  # whatever the process did in between must not matter
    resumed = trainer(setup, device)
    resumed.dual.load_adapter_state(adapters)
    resumed.load_state(tensors, meta)
    losses = first_losses + [resumed.train_round()]

    assert losses == pytest.approx(straight_losses, abs=1e-6)
    for k, v in straight.dual.adapter_state().items():
        torch.testing.assert_close(resumed.dual.adapter_state()[k], v, rtol=0, atol=1e-6)


def test_training_leaves_the_callers_rng_alone(setup: tuple) -> None:
    t = trainer(setup)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    t.train_round()
    assert torch.equal(torch.rand(3), expected)


def test_trainers_sharing_a_process_reproduce(setup: tuple) -> None:
    # Dropout on (base and adapter): threads take turns with torch's global RNG, so each trainer's
    # losses are those it has alone, whatever the interleaving.
    def rounds(t: LocalTrainer, out: dict[str, list[float]], key: str) -> None:
        out[key] = [t.train_round() for _ in range(3)]

    alone: dict[str, list[float]] = {}
    rounds(trainer(setup), alone, "a")
    together: dict[str, list[float]] = {}
    pair = {"a": trainer(setup), "b": trainer(setup, seed=5)}
    threads = [threading.Thread(target=rounds, args=(t, together, k)) for k, t in pair.items()]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert together["a"] == alone["a"]
    assert together["b"] != together["a"]  # another seed: other batches and masks


def with_attention_dropout(src: Path, dst: Path, p: float) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, "attention_dropout": p}))
    return dst


@pytest.mark.parametrize("dropout", [True, False])
def test_model_dropout_switch(setup: tuple, tmp_path: Path, dropout: bool) -> None:
    # BERT has dropout layers; Llama's attention dropout is a float handed to the attention function.
    model_cfg, adapter_cfg, _ = setup
    path = model_cfg.path
    if model_cfg.task == "causal-lm":
        path = str(with_attention_dropout(Path(path), tmp_path / "llama", 0.5))
    model_cfg = dataclasses.replace(model_cfg, path=path, dropout=dropout)
    dual = load_dual_lora(model_cfg, dataclasses.replace(adapter_cfg, dropout=0.0), CPU, local_seed=1)
    dual.model.train()
    ids = torch.randint(4, 40, (2, 12))
    with torch.no_grad():
        first, second = dual.model(input_ids=ids).logits, dual.model(input_ids=ids).logits
    assert torch.equal(first, second) is not dropout
    t = LocalTrainer(dual, model_cfg, setup[2])
    assert t._draws_random is dropout


def test_split_is_seeded_and_disjoint() -> None:
    examples = [Example(f"text {i}") for i in range(20)]
    train, held = split_examples(examples, 0.25, seed=3)
    assert len(held) == 5 and len(train) == 15
    assert {e.text for e in train}.isdisjoint(e.text for e in held)
    assert split_examples(examples, 0.25, seed=3) == (train, held)
    assert split_examples(examples, 0.25, seed=4) != (train, held)


def test_eval_split_from_train_file_when_no_eval_file(setup: tuple) -> None:
    t = trainer(setup, eval_data="", eval_fraction=0.25)
    assert (t.train_size, t.eval_size) == (36, 12)


def test_causal_lm_batch_masks_padding(tiny_llama_dir: Path) -> None:
    dual = load_dual_lora(ModelConfig(path=str(tiny_llama_dir)), AdapterConfig(rank=2), CPU, 0)
    batch = make_batch(
        [Example("no acute process"), Example("small left pleural effusion with atelectasis")],
        dual.tokenizer,
        "causal-lm",
        32,
    )
    mask = batch["attention_mask"] == 0
    assert mask.any()
    assert (batch["labels"][mask] == IGNORE_INDEX).all()
    assert torch.equal(batch["labels"][~mask], batch["input_ids"][~mask])
    assert "token_type_ids" not in batch


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "no examples"),
        (['{"text": "ok", "label": "normal"}', "{not json"], r"data.jsonl:2: not valid JSON"),
        (['["a list"]'], r"data.jsonl:1: expected a JSON object"),
        ([{"label": "normal"}], r"data.jsonl:1: \"text\" must be"),
        ([{"text": "ok"}], r"data.jsonl:1: seq-cls lines need a \"label\""),
        (
            [{"text": "ok", "label": "normal"}, "", {"text": "ok", "label": "fracture"}],
            r"data.jsonl:3: unknown label 'fracture'",
        ),
        ([{"text": "ok", "label": 4}], r"data.jsonl:1: unknown label 4"),
        ([{"text": "ok", "label": True}], r"data.jsonl:1: unknown label True"),
    ],
)
def test_data_errors_name_file_and_line(jsonl, rows: list, message: str) -> None:
    path = jsonl("data.jsonl", rows)
    with pytest.raises(DataError, match=message):
        read_jsonl(path, "seq-cls", DEMO_LABELS)


def test_labels_by_name_or_index(jsonl) -> None:
    path = jsonl("data.jsonl", [{"text": "a", "label": "effusion"}, {"text": "b", "label": 3}])
    assert [e.label for e in read_jsonl(path, "seq-cls", DEMO_LABELS)] == [1, 3]


def test_missing_data_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such data file"):
        read_jsonl(tmp_path / "absent.jsonl", "causal-lm")


@pytest.mark.parametrize(
    ("truth", "preds", "expected"),
    [
        ([0, 1, 2], [0, 1, 2], 1.0),
        ([0, 0, 1, 1], [0, 1, 1, 1], (2 / 3 + 4 / 5) / 2),
        ([0, 0], [1, 1], 0.0),  # class 1 only predicted still counts
        ([], [], 0.0),
    ],
)
def test_macro_f1(truth: list[int], preds: list[int], expected: float) -> None:
    assert macro_f1(truth, preds) == pytest.approx(expected)


# --- prompt/completion rows (causal-lm) -------------------------------------------------------------
PROMPT = "findings : small left pleural effusion . impression :"
COMPLETION = " small left pleural effusion ."


def test_prompt_completion_rows(jsonl) -> None:
    path = jsonl(
        "data.jsonl",
        [
            {"prompt": PROMPT, "completion": COMPLETION},
            {"prompt": PROMPT, "completion": COMPLETION, "text": PROMPT + COMPLETION},
            {"text": "no acute process"},
        ],
    )
    examples = read_jsonl(path, "causal-lm")
    assert [e.text for e in examples] == [PROMPT + COMPLETION] * 2 + ["no acute process"]
    assert [e.completion for e in examples] == [COMPLETION, COMPLETION, "no acute process"]
    assert examples[2].prompt == ""


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "a"}, r'data.jsonl:1: "prompt" must be a string and "completion" a non-empty string'),
        ({"prompt": "a", "completion": " "}, r'"completion" a non-empty string'),
        ({"prompt": 3, "completion": "b"}, r'"prompt" must be a string'),
        ({"prompt": "a", "completion": "b", "text": "a b"}, r'data.jsonl:1: "text" differs from'),
    ],
)
def test_prompt_completion_errors(jsonl, row: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_jsonl(jsonl("data.jsonl", [row]), "causal-lm")


@pytest.fixture(scope="module")
def llama_tokenizer(tiny_llama_dir: Path):
    return load_dual_lora(ModelConfig(path=str(tiny_llama_dir)), AdapterConfig(rank=2), CPU, 0).tokenizer


def test_loss_covers_only_the_completion(llama_tokenizer) -> None:
    examples = [Example(PROMPT + COMPLETION, prompt=PROMPT), Example("no acute process")]
    batch = make_batch(examples, llama_tokenizer, "causal-lm", 64)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    completion = llama_tokenizer(COMPLETION, add_special_tokens=False)["input_ids"]
    n_prompt = len(llama_tokenizer(PROMPT)["input_ids"]) - 1  # [BOS] prompt, without its [EOS]
    # Row 0: prompt ignored; completion and the closing [EOS] learned.
    assert (labels[0, :n_prompt] == IGNORE_INDEX).all()
    assert labels[0, n_prompt:][mask[0, n_prompt:] == 1].tolist() == [
        *completion,
        llama_tokenizer.eos_token_id,
    ]
    # Row 1 (no prompt): every real token learned, padding ignored.
    assert torch.equal(labels[1][mask[1] == 1], ids[1][mask[1] == 1])
    assert (labels[mask == 0] == IGNORE_INDEX).all() and (mask == 0).any()


def test_completion_ends_with_eos_where_the_tokenizer_adds_none(llama_tokenizer) -> None:
    eos = llama_tokenizer.eos_token_id

    class NoEos:  # a tokenizer like GPT-2's or SmolLM2's: no closing eos of its own
        def __getattr__(self, name):
            return getattr(llama_tokenizer, name)

        def __call__(self, *args, **kwargs):
            enc = dict(llama_tokenizer(*args, **kwargs))
            if enc["input_ids"][-1] == eos:
                enc = {k: v[:-1] for k, v in enc.items()}
            return enc

    example = Example(PROMPT + COMPLETION, prompt=PROMPT)
    assert NoEos()(example.text)["input_ids"][-1] != eos
    plain = make_batch([example], NoEos(), "causal-lm", 64)  # type: ignore[arg-type]
    closed = make_batch([example], llama_tokenizer, "causal-lm", 64)
    # The same rows either way: the completion's targets end with eos, learned.
    assert torch.equal(plain["input_ids"], closed["input_ids"])
    assert torch.equal(plain["labels"], closed["labels"])
    assert plain["labels"][0, -1].item() == eos


def test_long_prompt_is_cut_from_the_start(llama_tokenizer) -> None:
    example = Example(PROMPT + COMPLETION, prompt=PROMPT)
    full = make_batch([example], llama_tokenizer, "causal-lm", 64)
    cut = make_batch([example], llama_tokenizer, "causal-lm", 10)
    assert cut["input_ids"].shape == (1, 10)
    assert torch.equal(cut["input_ids"][0], full["input_ids"][0, -10:])
    learned = full["labels"][0] != IGNORE_INDEX
    assert torch.equal(cut["labels"][0][cut["labels"][0] != IGNORE_INDEX], full["labels"][0][learned])


def test_prompt_split_without_offsets_agrees(llama_tokenizer) -> None:
    class Slow:  # a tokenizer without offset mappings, like transformers' Python ("slow") tokenizers
        is_fast = False

        def __call__(self, *args, **kwargs):
            return llama_tokenizer(*args, **kwargs)

    for prompt, completion in [(PROMPT, COMPLETION), ("impression :", " no acute process")]:
        example = Example(prompt + completion, prompt=prompt)
        assert split_prompt(Slow(), example) == split_prompt(llama_tokenizer, example)  # type: ignore[arg-type]


def test_prompt_completion_training_and_eval(setup: tuple, jsonl) -> None:
    if setup[0].task != "causal-lm":
        pytest.skip("causal-lm only")
    data = jsonl("pc.jsonl", [{"prompt": PROMPT, "completion": COMPLETION}] * 8)
    t = trainer(setup, data=str(data), eval_data=str(data))
    assert math.isfinite(t.train_round())
    metrics = t.evaluate()
    assert set(metrics) == {"eval_loss", "perplexity", "rouge_l"} and 0 <= metrics["rouge_l"] <= 1


def test_balanced_class_weights() -> None:
    w = balanced_class_weights([0, 0, 0, 1, None], 3)
    assert w.tolist() == pytest.approx([4 / 6, 2.0, 0.0])  # n / (present classes * n_c); absent class 0
    assert float(w[torch.tensor([0, 0, 0, 1])].sum()) == pytest.approx(4.0)  # classes weigh the same in total


def test_class_weights_loss_is_its_cross_entropy(setup: tuple) -> None:
    model_cfg, _, train_cfg = setup
    if model_cfg.task != "seq-cls":
        pytest.skip("class weights apply to seq-cls")
    n = len(read_jsonl(train_cfg.data, "seq-cls", model_cfg.labels))
    losses = {}
    for mode in ("none", "balanced", "logit-adjusted"):
        t = trainer(setup, lr=0.0, steps_per_round=1, batch_size=n, class_weights=mode)
        for m in t.dual.model.modules():  # no dropout: the step's loss is then a plain function of the data
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        with torch.no_grad():  # a confident head, so classes contribute unequal losses
            for p in t.dual.model.get_submodule(f"base_model.model.{t.dual.head}").parameters():
                p.mul_(50.0)  # any head layout (a split head's private part is zero)
        losses[mode] = t.train_round()
        batch = t._batch(t.train_examples)
        labels = batch.pop("labels")
        with torch.no_grad():
            logits = t.dual.model(**batch).logits.float()
        counts = torch.bincount(labels, minlength=len(model_cfg.labels)).float() + 0.5
        if mode == "logit-adjusted":  # balanced softmax: the site's log prior added inside the loss
            logits = logits + (counts / counts.sum()).log()
        weight = balanced_class_weights([e.label for e in t.train_examples], len(model_cfg.labels))
        expected = F.cross_entropy(logits, labels, weight=weight if mode == "balanced" else None)
        assert losses[mode] == pytest.approx(float(expected), rel=1e-5)
    assert abs(losses["none"] - losses["balanced"]) > 0.01, losses
    assert abs(losses["none"] - losses["logit-adjusted"]) > 0.01, losses


def test_unknown_class_weights_is_refused() -> None:
    with pytest.raises(ConfigError, match="train.class_weights"):
        TrainConfig(data="x.jsonl", class_weights="inverse").validate()
