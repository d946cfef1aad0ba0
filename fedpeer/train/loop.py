"""Local training between two gossip rounds, evaluation, and the trainer's checkpointable state.

A trainer owns its randomness: batch order comes from (seed, epoch), and dropout draws from a private
RNG state swapped in around each round, so a node trains the same whether it runs alone, in its own
process next to others, or resumed from a checkpoint. torch has one global CPU generator per process,
so trainers that share a process (the in-process scenario runner runs nodes as threads) and draw
dropout masks take turns: such a round holds a process-wide lock, otherwise the draws would interleave
and a seeded run would not reproduce. With `model.dropout = false` (and no adapter dropout) training
draws nothing random, and threads train side by side, each reproducibly.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F

from fedpeer.config import ModelConfig, TrainConfig
from fedpeer.errors import CheckpointError, ConfigError
from fedpeer.model.dual_lora import DualLora
from fedpeer.model.prefix import FrozenPrefix
from fedpeer.train.data import (
    IGNORE_INDEX,
    Example,
    TokenCache,
    load_site_data,
    make_batch,
    pad_id,
    pad_rows,
    split_prompt,
)
from fedpeer.train.metrics import macro_f1, rouge_l
from fedpeer.train.prefix_cache import PrefixCache, shared_store

__all__ = ["EVAL_GENERATE", "BatchOrder", "LocalTrainer", "balanced_class_weights", "log_prior", "macro_f1"]

log = logging.getLogger(__name__)

_OPTIM_PREFIX = "optim."
_RNG_CPU, _RNG_CUDA = "rng.cpu", "rng.cuda"
# torch's generators are process-global: trainers that draw dropout masks train one round at a time.
_RNG_LOCK = threading.Lock()
# Prompt/completion eval examples generated and scored by ROUGE-L per evaluation: enough for a usable
# mean, few enough that greedy decoding costs little next to a round of training.
EVAL_GENERATE = 32
# Generation stops at eos, or this many tokens past the longest reference completion (no run-on junk
# scored against short references), and never past _MAX_NEW_TOKENS.
_GENERATE_SLACK = 8
_MAX_NEW_TOKENS = 128
# Rows per generate() call. Without gradients a batch costs far less memory than a training batch, and
# per-call overhead dominates for small models: few large calls are much faster than many small ones.
_GENERATE_BATCH = 32


class BatchOrder:
    """Endless batches of example indices: a fresh seeded permutation each epoch, last batch may be short."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int = 0, pos: int = 0) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.pos = epoch, pos
        self._perm = self._permutation(epoch)

    def _permutation(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(zlib.crc32(f"batches/{self.seed}/{epoch}".encode()))
        return torch.randperm(self.n, generator=gen).tolist()

    def next(self) -> list[int]:
        if self.pos >= self.n:
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        batch = self._perm[self.pos : self.pos + self.batch_size]
        self.pos += len(batch)
        return batch


class LocalTrainer:
    """Trains both adapters of `dual` on the site's data, `steps_per_round` AdamW steps per round."""

    def __init__(
        self,
        dual: DualLora,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        *,
        eval_generate: int = EVAL_GENERATE,
    ) -> None:
        self.dual = dual
        self.cfg = train_cfg
        self.task = model_cfg.task
        self.eval_generate = eval_generate
        self.train_examples, self.eval_examples = load_site_data(model_cfg, train_cfg)
        self._order = BatchOrder(len(self.train_examples), train_cfg.batch_size, train_cfg.seed)
        self._params = dual.trainable_parameters()
        self._shared, self._private = dual.shared_parameters(), dual.private_parameters()
        # The fused CUDA kernel: one launch for all tensors. CPU keeps the reference implementation.
        self._fused_adamw = dual.device.type == "cuda"
        self._optim = torch.optim.AdamW(
            self._param_groups(),
            lr=train_cfg.lr,
            weight_decay=train_cfg.weight_decay,
            fused=self._fused_adamw or None,
        )
        self._base_lrs = [float(g["lr"]) for g in self._optim.param_groups]  # lr_decay_rounds scales them
        self._amp = autocast_dtype(train_cfg.precision, dual.device)
        self._scaler = torch.amp.GradScaler("cuda") if self._amp == torch.float16 else None
        self._input_names = _model_inputs(dual)
        self._tokens = TokenCache(dual.tokenizer, self.task, train_cfg.max_length)
        if train_cfg.gradient_checkpointing:
            _checkpoint_activations(dual.base_model)
        self._rng = _initial_rng(train_cfg.seed, dual.device)
        # The base's own dropout (which may be functional, not a module) or an active dropout module.
        self._draws_random = model_cfg.dropout or any(
            isinstance(m, torch.nn.Dropout) and m.p > 0 for m in dual.model.modules()
        )
        self.prefix_cache = _prefix_cache(dual, model_cfg, train_cfg)
        self._train_model = _compiled(dual, train_cfg, self.prefix_cache)
        self._head, self._head_slot = _plain_head(dual.model, self.task, self._train_model)
        self._class_weight: torch.Tensor | None = None
        self._loss_prior: torch.Tensor | None = None  # class_weights logit-adjusted: added in the loss
        self._site_prior: torch.Tensor | None = None  # log p_site(class), seq-cls
        # train.prior's weight τ when predicting; with train.prior_choices, the one evaluate chose last
        self.prior = train_cfg.prior
        if self.task == "seq-cls":
            labels = [e.label for e in self.train_examples]
            self._site_prior = log_prior(labels, len(model_cfg.labels)).to(dual.device)
            if train_cfg.class_weights == "balanced":
                self._class_weight = balanced_class_weights(labels, len(model_cfg.labels)).to(dual.device)
            elif train_cfg.class_weights == "logit-adjusted":
                self._loss_prior = self._site_prior
        self.rounds = 0  # the mesh rounds trained, or skipped by catching up: the decay's clock
        self.steps = 0  # optimizer steps taken

    def _param_groups(self) -> list[dict[str, Any]]:
        """One group, or the shared part and the private part in groups of their own: the shared one at
        train.shared_lr, the private one with train.proximal's extra weight decay. Either way the
        parameters keep `trainable_parameters` order (shared, then private), so optimizer state is
        indexed alike and checkpoints load across the layouts."""
        shared_lr = self.cfg.shared_lr or self.cfg.lr
        if not self._private:
            return [{"params": self._params, "lr": shared_lr}]
        if self.cfg.proximal == 0 and shared_lr == self.cfg.lr:
            return [{"params": self._params}]
        return [
            {"params": self._shared, "lr": shared_lr},
            {"params": self._private, "weight_decay": self.cfg.weight_decay + self.cfg.proximal},
        ]

    @property
    def train_size(self) -> int:
        return len(self.train_examples)

    @property
    def eval_size(self) -> int:
        return len(self.eval_examples)

    def train_round(self) -> float:
        """Run `steps_per_round` optimizer steps; mean training loss (nan when there are no steps)."""
        if self.cfg.steps_per_round == 0:
            return float("nan")
        model = self.dual.model
        model.train()
        losses = []
        turn = _RNG_LOCK if self._draws_random else contextlib.nullcontext()
        with turn, _private_rng(self._rng, self.dual.device):
            for i in range(self.cfg.steps_per_round):
                losses.append(self._step(self._train_model, i))
        self.rounds += 1
        return sum(losses) / len(losses)

    def skip_to_round(self, completed: int) -> None:
        """The node is at the mesh's round `completed` (it caught up after missing more rounds than it
        could replay, or resumed from a checkpoint): its next round is round `completed + 1`, at the
        rate every other node trains it at (train.lr_decay_rounds). Never moves the clock back; steps
        taken and the optimizer are unchanged."""
        self.rounds = max(self.rounds, completed)

    def _resting(self, step_in_round: int) -> list[torch.nn.Parameter]:
        """The part that `train.schedule` leaves alone at this step of the round (joint: none)."""
        schedule = self.cfg.schedule
        if schedule in ("joint", "decoupled") or not self._private or not self._shared:
            return []
        half = max(1, self.cfg.steps_per_round // 2)  # a half has at least one step
        if schedule == "alternate":
            shared_turn = step_in_round % 2 == 0
        elif schedule == "global-first":
            shared_turn = step_in_round < half
        else:  # local-first (FedRep's order): the private part, then the shared one
            shared_turn = step_in_round >= half
        return self._private if shared_turn else self._shared

    def _step(self, model: torch.nn.Module, step_in_round: int) -> float:
        """One optimizer step over the next batch, in `grad_accum` micro-batches whose losses are weighted
        by their share of the batch's loss terms: the gradient is the whole batch's."""
        examples = [self.train_examples[i] for i in self._order.next()]
        parts = [examples[k :: self.cfg.grad_accum] for k in range(min(self.cfg.grad_accum, len(examples)))]
        batches = [self._batch(part) for part in parts]
        weights = [self._loss_terms(b) for b in batches]
        total_terms = sum(weights)
        self._optim.zero_grad(set_to_none=True)
        total = 0.0
        decoupled = self.cfg.schedule == "decoupled" and bool(self._private) and bool(self._shared)
        for part, batch, terms in zip(parts, batches, weights, strict=True):
            share = terms / total_terms if len(parts) > 1 else 1.0
            # decoupled: the whole model's loss trains the private part only; the shared part learns
            # from the loss of the shared part alone, as it would without a private part.
            loss = self._loss(model, part, dict(batch) if decoupled else batch) * share
            self._backward(loss, self._private if decoupled else None)
            total += float(loss.detach())
            if decoupled:
                with self.dual.shared_only():
                    self._backward(self._loss(model, part, batch) * share, self._shared)
        for p in self._resting(step_in_round):
            p.grad = None  # AdamW leaves a parameter without a gradient untouched (no decay, no moments)
        self._decay_lr(step_in_round)
        if self._scaler:
            self._scaler.step(self._optim)
            self._scaler.update()
        else:
            self._optim.step()
        self.steps += 1
        return total

    def _backward(self, loss: torch.Tensor, inputs: list[torch.nn.Parameter] | None) -> None:
        """Accumulate `loss`'s gradient (scaled under fp16) into `inputs`, or every parameter (None)."""
        (self._scaler.scale(loss) if self._scaler else loss).backward(inputs=inputs)

    def _decay_lr(self, step_in_round: int) -> None:
        """train.lr_decay_rounds: every group's rate at this step of the mesh's round `rounds + 1`.
        The round counter is the schedule's clock: a checkpoint keeps it, so a restored trainer
        resumes where it stopped, and `skip_to_round` moves it for a node that catches up."""
        per_round = self.cfg.steps_per_round
        horizon = self.cfg.lr_decay_rounds * per_round
        if horizon == 0:
            return
        factor = cosine_decay(self.rounds * per_round + step_in_round, horizon)
        for group, base in zip(self._optim.param_groups, self._base_lrs, strict=True):
            group["lr"] = base * factor

    def _loss(
        self, model: torch.nn.Module, examples: Sequence[Example], batch: dict[str, torch.Tensor]
    ) -> Any:
        """The mean training loss of one (micro-)batch, class-weighted when train.class_weights says so.

        A causal LM computes its vocabulary logits only where a token is learned (`_learned_logits`):
        with completion-only loss most positions are prompt, and the head is the costliest layer of a
        small LM (SmolLM2-135M: a 49k x 576 matrix against 4 M weights per block)."""
        if self.task != "seq-cls" and self._head is not None:
            return self._learned_loss(model, examples, batch)
        if self._class_weight is None and self._loss_prior is None:
            return self._forward(model, examples, batch).loss
        labels = batch.pop("labels")
        logits = self._forward(model, examples, batch).logits.float()
        if self._loss_prior is not None:
            logits = logits + self._loss_prior
        return F.cross_entropy(logits, labels, weight=self._class_weight)

    def _learned_loss(
        self, model: torch.nn.Module, examples: Sequence[Example], batch: dict[str, torch.Tensor]
    ) -> Any:
        """The model's own causal-LM loss (mean over learned tokens; token t predicts t + 1), with the
        head applied to the learned positions only."""
        logits, targets = self._learned_logits(model, examples, batch)
        return F.cross_entropy(logits, targets)

    def _learned_logits(
        self, model: torch.nn.Module, examples: Sequence[Example], batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 logits of the learned positions (labels popped from `batch`) and their targets. The
        forward runs with the head swapped for an identity, so its "logits" are the final hidden states;
        the head then runs on the rows that are learned."""
        head = self._head
        assert head is not None
        labels = batch.pop("labels")
        targets = labels[:, 1:]
        learned = targets != IGNORE_INDEX
        owner, name = self._head_slot
        setattr(owner, name, torch.nn.Identity())
        try:
            hidden = self._forward(model, examples, batch).logits
        finally:
            setattr(owner, name, head)
        with _autocast(self._amp, self.dual.device):
            logits = head(hidden[:, :-1][learned])
        return logits.float(), targets[learned]

    def _loss_terms(self, batch: dict[str, torch.Tensor]) -> float:
        """What the batch's mean loss divides by: predicted tokens (causal-lm), examples or their class
        weights (seq-cls)."""
        labels = batch["labels"]
        if self.task != "seq-cls":
            return float((labels[:, 1:] != IGNORE_INDEX).sum())
        if self._class_weight is not None:
            return float(self._class_weight[labels].sum())
        return float(labels.numel())

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """eval_loss, plus accuracy and macro_f1 (seq-cls) or perplexity (causal-lm).

        seq-cls adds the site's label prior times `self.prior` to the logits (train.prior). With
        train.prior_choices, it first sets `self.prior` to the choice that scores the best macro-F1 on
        the eval examples (ties: the earlier choice), reports all metrics at that choice, and adds
        "prior": the choice. Causal-lm adds rouge_l when eval examples have a prompt: the mean ROUGE-L
        F1 of greedy continuations of the first `eval_generate` such prompts against their completions.
        The loss and perplexity of prompt/completion examples are those of the completion tokens given
        the prompt.
        """
        model = self.dual.model
        model.eval()
        try:
            if self.task == "seq-cls":
                return self.classifier_metrics(*self._eval_logits(model))
            loss_sum, count = 0.0, 0
            for examples in _chunks(self.eval_examples, self.cfg.batch_size):
                batch = self._batch(examples)
                if self._head is not None:
                    logits, targets = self._learned_logits(model, examples, batch)
                    batch_loss = float(F.cross_entropy(logits, targets, reduction="sum"))
                    loss_sum, count = loss_sum + batch_loss, count + targets.numel()
                    continue
                labels = batch.pop("labels")
                logits = self._forward(model, examples, batch).logits.float()
                batch_loss, batch_count = _loss_sum(logits, labels, self.task)
                loss_sum, count = loss_sum + batch_loss, count + batch_count
            metrics = _metrics(loss_sum / max(count, 1), [], [], self.task)
            metrics.update(self._generation_metrics(model))
        finally:
            model.train()
        return metrics

    @torch.no_grad()
    def eval_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """seq-cls: the model's float logits on every eval example, no prior added, and their labels
        (what `evaluate` scores; for analyses that combine several models' predictions)."""
        if self.task != "seq-cls":
            raise ValueError("eval_logits: only a seq-cls model has class logits")
        model = self.dual.model
        model.eval()
        try:
            return self._eval_logits(model)
        finally:
            model.train()

    @property
    def site_log_prior(self) -> torch.Tensor:
        """seq-cls: log of each class's share of the site's training labels (train.prior adds it to
        the logits, times τ)."""
        if self._site_prior is None:
            raise ValueError("site_log_prior: only a seq-cls model has a label prior")
        return self._site_prior

    def _eval_logits(self, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """seq-cls: the model's float logits on every eval example (no prior added), and the labels."""
        logits, labels = [], []
        for examples in _chunks(self.eval_examples, self.cfg.batch_size):
            batch = self._batch(examples)
            labels.append(batch.pop("labels"))
            logits.append(self._forward(model, examples, batch).logits.float())
        if not logits:
            assert self._site_prior is not None
            return self._site_prior.new_zeros(0, self._site_prior.numel()), torch.zeros(0, dtype=torch.long)
        return torch.cat(logits), torch.cat(labels)

    def classifier_metrics(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """seq-cls: what `evaluate` reports for `eval_logits`' output, at `self.prior` (after choosing
        it among train.prior_choices when those are given): scores saved logits, e.g. at another τ."""
        assert self._site_prior is not None
        truth = labels.tolist()
        if self.cfg.prior_choices and truth:
            choices, site = self.cfg.prior_choices, self._site_prior
            scores = [macro_f1(truth, (logits + tau * site).argmax(-1).tolist()) for tau in choices]
            self.prior = choices[scores.index(max(scores))]
        adjusted = logits + self.prior * self._site_prior if self.prior > 0 else logits
        loss, count = _loss_sum(adjusted, labels, self.task) if truth else (0.0, 0)
        metrics = _metrics(loss / max(count, 1), truth, adjusted.argmax(-1).tolist(), self.task)
        if self.cfg.prior_choices:
            metrics["prior"] = self.prior
        return metrics

    def _generation_metrics(self, model: torch.nn.Module) -> dict[str, float]:
        examples, splits = self._generation_examples()
        if not examples:
            return {}
        # Leave room for the continuation inside max_length; keep the prompt's end, next to the answer.
        contexts = [ids[:start][-self.cfg.max_length :] for ids, start in splits]
        longest = max(len(ids) - start for ids, start in splits)
        max_new = min(longest + _GENERATE_SLACK, _MAX_NEW_TOKENS)
        scores = []
        for lo in range(0, len(examples), _GENERATE_BATCH):
            texts = self._generate(model, contexts[lo : lo + _GENERATE_BATCH], max_new)
            scores += [rouge_l(e.completion, t) for e, t in zip(examples[lo:], texts, strict=False)]
        return {"rouge_l": sum(scores) / len(scores)}

    def _generation_examples(self) -> tuple[list[Example], list[tuple[list[int], int]]]:
        """The first `eval_generate` eval examples with a prompt, and their `split_prompt`."""
        examples: list[Example] = []
        splits: list[tuple[list[int], int]] = []
        for e in self.eval_examples:
            if len(examples) >= self.eval_generate:
                break
            split = split_prompt(self.dual.tokenizer, e) if e.prompt else ([], 0)
            if split[1] > 0:  # a whitespace-only prompt leaves nothing to generate from
                examples.append(e)
                splits.append(split)
        return examples, splits

    def _generate(self, model: torch.nn.Module, contexts: list[list[int]], max_new: int) -> list[str]:
        """Greedy continuations of left-padded `contexts` (so every row's next token is at the end)."""
        tokenizer, device = self.dual.tokenizer, self.dual.device
        pad = pad_id(tokenizer)
        input_ids = pad_rows(contexts, pad, left=True).to(device)
        mask = pad_rows([[1] * len(c) for c in contexts], 0, left=True).to(device)
        out = model.generate(  # type: ignore[operator]
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        return tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)

    def _forward(
        self, model: torch.nn.Module, examples: Sequence[Example], batch: dict[str, torch.Tensor]
    ) -> Any:
        """model(**batch) under the configured autocast; with the frozen prefix replayed from the cache
        when there is one."""
        with _autocast(self._amp, self.dual.device):
            if self.prefix_cache is None:
                return model(**batch)
            return self.prefix_cache.forward(model, examples, batch)

    def _batch(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        batch = make_batch(
            examples, self.dual.tokenizer, self.task, self.cfg.max_length, self._input_names, self._tokens
        )
        if self.dual.device.type != "cuda":
            return {k: v.to(self.dual.device) for k, v in batch.items()}
        # Pinned host memory: the copies run asynchronously, overlapping the queued kernels.
        return {k: v.pin_memory().to(self.dual.device, non_blocking=True) for k, v in batch.items()}

    # --- checkpoint ---------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Optimizer moments as `optim.<param_index>.<name>`, and the private dropout RNG state."""
        out = {
            f"{_OPTIM_PREFIX}{i}.{name}": t.detach().clone()
            for i, state in self._optim.state_dict()["state"].items()
            for name, t in state.items()
            if isinstance(t, torch.Tensor)
        }
        out.update({k: v.clone() for k, v in self._rng.items()})
        return out

    def state_meta(self) -> dict[str, Any]:
        """JSON-able: optimizer hyperparameters, counters and the position of the batch iterator."""
        groups = [
            {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
            for g in self._optim.state_dict()["param_groups"]
        ]
        return {
            "param_groups": groups,
            **({"grad_scaler": self._scaler.state_dict()} if self._scaler else {}),
            "rounds": self.rounds,
            "steps": self.steps,
            "epoch": self._order.epoch,
            "pos": self._order.pos,
            "seed": self._order.seed,
            "num_params": len(self._params),
            "prior": self.prior,
        }

    def load_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Restore what `state_tensors` / `state_meta` saved; training then continues identically."""
        if meta.get("num_params") != len(self._params):
            raise CheckpointError(
                f"trainer state is for {meta.get('num_params')} trainable tensors, this model has "
                f"{len(self._params)}: the checkpoint belongs to another adapter config"
            )
        # The current config's groups win (lr, weight decay, proximal): a restart is the moment to
        # change them. So does this machine's AdamW kernel (a run may resume on other hardware). The
        # moments are indexed by position in `trainable_parameters` order, whatever the grouping.
        groups = self._optim.state_dict()["param_groups"]
        self._optim.load_state_dict({"state": _unflatten_optim(tensors), "param_groups": groups})
        if self._scaler and "grad_scaler" in meta:
            self._scaler.load_state_dict(meta["grad_scaler"])
        if _RNG_CPU in tensors:
            self._rng[_RNG_CPU] = tensors[_RNG_CPU].clone()
        # A CUDA RNG state only means something on a CUDA device (a run may resume on other hardware).
        if _RNG_CUDA in tensors and self.dual.device.type == "cuda":
            self._rng[_RNG_CUDA] = tensors[_RNG_CUDA].clone()
        self._order = BatchOrder(
            len(self.train_examples),
            self.cfg.batch_size,
            int(meta["seed"]),
            int(meta["epoch"]),
            int(meta["pos"]),
        )
        self.rounds, self.steps = int(meta["rounds"]), int(meta["steps"])
        # The τ chosen before the restart stands until the next evaluation chooses again; without
        # train.prior_choices the config's train.prior wins, as the config's learning rate does.
        if self.cfg.prior_choices and "prior" in meta:
            self.prior = float(meta["prior"])


def _prefix_cache(dual: DualLora, model_cfg: ModelConfig, train_cfg: TrainConfig) -> PrefixCache | None:
    # Dropout in the base would make the frozen blocks' output differ from one pass to the next.
    if train_cfg.frozen_cache_mb == 0 or model_cfg.dropout:
        return None
    prefix = FrozenPrefix.find(dual.model, (dual.head,) if dual.head else ())
    if prefix is None:
        return None
    # Rows are shared with every trainer of this process whose prefix computes the same thing.
    fields = dual.fingerprint_fields()
    key = (
        fields["base_weights"],
        fields["base_config"],
        fields["tokenizer"],
        model_cfg.task,
        f"cut={prefix.n_frozen}",
        f"max_length={train_cfg.max_length}",
        str(dual.device),
    )
    return PrefixCache(prefix, shared_store(key, train_cfg.frozen_cache_mb * 2**20))


def _checkpoint_activations(base: Any) -> None:
    """Recompute block activations in backward (non-reentrant: the frozen embeddings need no grad)."""
    options = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The forward pass's autocast dtype for train.precision on `device` (None: no autocast)."""
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError('train.precision = "fp16" needs a CUDA device; use "bf16" or "fp32" on a CPU')
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _plain_head(
    model: torch.nn.Module, task: str, train_model: torch.nn.Module
) -> tuple[torch.nn.Linear | None, tuple[torch.nn.Module, str]]:
    """The causal LM's output head and where it sits (module, attribute), when the loss may apply it
    to the learned positions only: a frozen plain Linear whose output is the logits (no final soft-
    capping or scaling after it, as Gemma 2, Cohere and Granite have) in an uncompiled model. Else
    None: the model's own loss."""
    none: tuple[None, tuple[torch.nn.Module, str]] = (None, (model, ""))
    if task == "seq-cls" or train_model is not model:
        return none
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    config = getattr(model, "config", None)
    if (
        type(head) is not torch.nn.Linear
        or any(p.requires_grad for p in head.parameters())
        or any(getattr(config, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    ):
        return none
    for module in model.modules():
        for name, child in module.named_children():
            if child is head:
                return head, (module, name)
    return none


def _autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _compiled(dual: DualLora, train_cfg: TrainConfig, prefix_cache: PrefixCache | None) -> torch.nn.Module:
    """The model training steps call: torch.compile'd when train.compile says so."""
    if not train_cfg.compile:
        return dual.model
    if prefix_cache is not None:
        log.warning(
            "train.compile is left off: the frozen-prefix cache runs the model block by block "
            "(set train.frozen_cache_mb = 0 to compile the whole model instead)"
        )
        return dual.model
    return cast(torch.nn.Module, torch.compile(dual.model))


def cosine_decay(step: int, horizon: int) -> float:
    """The learning-rate factor of optimizer step `step` (0-based) of a cosine decay from 1 to 0 over
    `horizon` steps: 1 at the first step, 0 from step `horizon` on."""
    if step >= horizon:
        return 0.0
    return 0.5 * (1.0 + math.cos(math.pi * step / horizon))


def _unflatten_optim(tensors: Mapping[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if key.startswith(_OPTIM_PREFIX):
            index, name = key[len(_OPTIM_PREFIX) :].split(".", 1)
            state.setdefault(int(index), {})[name] = t.clone()
    return state


def _model_inputs(dual: DualLora) -> tuple[str, ...]:
    # Tokenizers may emit token_type_ids that decoder-only models do not accept.
    accepted = inspect.signature(dual.model.get_base_model().forward).parameters
    return tuple(n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted)


def _initial_rng(seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        torch.manual_seed(seed)
        return _current_rng(device)


def _current_rng(device: torch.device) -> dict[str, torch.Tensor]:
    state = {_RNG_CPU: torch.get_rng_state()}
    if device.type == "cuda":
        state[_RNG_CUDA] = torch.cuda.get_rng_state(device)
    return state


@contextlib.contextmanager
def _private_rng(state: dict[str, torch.Tensor], device: torch.device) -> Iterator[None]:
    """Swap the trainer's RNG state in for a round and keep where it ended; the caller's RNG is untouched."""
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        torch.set_rng_state(state[_RNG_CPU])
        if _RNG_CUDA in state:
            torch.cuda.set_rng_state(state[_RNG_CUDA], device)
        try:
            yield
        finally:
            state.update(_current_rng(device))


def _cuda_devices(device: torch.device) -> list[int]:
    return (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )


def balanced_class_weights(labels: Sequence[int | None], num_labels: int) -> torch.Tensor:
    """n / (classes present * n_c) for each class c the labels contain; 0 for absent classes.

    Each present class then carries the same total weight in the loss, whatever its frequency.
    """
    counts = _label_counts(labels, num_labels)
    present = counts > 0
    weights = torch.zeros(num_labels, dtype=torch.float64)
    weights[present] = counts.sum() / (int(present.sum()) * counts[present])
    return weights.float()


def log_prior(labels: Sequence[int | None], num_labels: int) -> torch.Tensor:
    """log of each class's share of the labels, with 0.5 added to every count (train.prior).

    A class the site has never seen keeps a finite, low log prior: the site can still predict it when
    the model is sure enough.
    """
    counts = _label_counts(labels, num_labels) + 0.5
    return (counts / counts.sum()).log().float()


def _label_counts(labels: Sequence[int | None], num_labels: int) -> torch.Tensor:
    """float64 count of each class in the labels (None: an example without one)."""
    return torch.bincount(
        torch.tensor([int(y) for y in labels if y is not None], dtype=torch.long), minlength=num_labels
    ).double()


def _loss_sum(logits: torch.Tensor, labels: torch.Tensor, task: str) -> tuple[float, int]:
    """Summed loss and the number of terms: per example (seq-cls) or per predicted token (causal-lm)."""
    if task == "seq-cls":
        return float(F.cross_entropy(logits, labels, reduction="sum")), labels.numel()
    # Token t predicts token t+1, as in the model's own training loss.
    shift_logits, shift_labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return float(total), int((shift_labels != IGNORE_INDEX).sum())


def _metrics(loss: float, truth: list[int], preds: list[int], task: str) -> dict[str, float]:
    if task != "seq-cls":
        return {"eval_loss": loss, "perplexity": math.exp(min(loss, 700.0))}
    correct = sum(t == p for t, p in zip(truth, preds, strict=True))
    return {"eval_loss": loss, "accuracy": correct / max(len(truth), 1), "macro_f1": macro_f1(truth, preds)}


def _chunks(examples: Sequence[Example], size: int) -> Iterator[Sequence[Example]]:
    for start in range(0, len(examples), size):
        yield examples[start : start + size]
