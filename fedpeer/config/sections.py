"""The node config's section tables: `[model]`, `[adapter]`, `[train]`, `[gossip]`, `[codec]`.

Each setting is defined once, here: its type, default and `help` metadata (why the default is what it
is); each class's `validate` checks its values and raises a ConfigError that names the field.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from fedpeer.codec.options import validate_codec_options
from fedpeer.errors import ConfigError

TASKS = ("causal-lm", "seq-cls")
HEAD_SCOPES = ("global", "local", "split")
CLASS_WEIGHTS = ("none", "balanced", "logit-adjusted")
SCHEDULES = ("joint", "alternate", "global-first", "local-first", "decoupled")
KEEP_BEST = ("off", "eval_loss", "macro_f1")
SHARED_FACTORS = ("b", "a", "ab")
WEIGHTINGS = ("metropolis-hastings", "data-size", "val-loss")
ROBUST_RULES = ("none", "clipped")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
QUANTIZE = ("none", "4bit")


def require(ok: bool, field_path: str, reason: str) -> None:
    """Raise ConfigError "`field_path` `reason`" unless `ok`."""
    if not ok:
        raise ConfigError(f"{field_path} {reason}")


@dataclass(frozen=True)
class ModelConfig:
    path: str = field(
        default="",
        metadata={
            "help": "Hugging Face model id org/name (available offline) or a local directory; relative "
            "paths are relative to this file."
        },
    )
    task: str = field(
        default="causal-lm",
        metadata={"help": "causal-lm (JSONL `text`) or seq-cls (JSONL `text` + `label`)."},
    )
    labels: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "seq-cls only: class names; the JSONL `label` field is one of these (or its index)."
        },
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "float32, bfloat16 or float16. The same base weights everywhere matter more than "
            "speed; float32 keeps CPU runs exact."
        },
    )
    quantize: str = field(
        default="none",
        metadata={
            "help": "none, or 4bit: the frozen base in 4-bit NF4 (bitsandbytes, CUDA only), for a site "
            "whose GPU is small; adapters stay fp32. Every site of a mesh must use the same."
        },
    )
    dropout: bool = field(
        default=True,
        metadata={
            "help": "The frozen base model's own dropout while training (LoRA's is adapter.dropout). "
            "false turns it off: nothing random is drawn, so nodes sharing a process train in parallel "
            "and reproducibly."
        },
    )

    def validate(self) -> None:
        require(self.path != "", "model.path", "must name a Hugging Face model id or a local directory")
        require(self.task in TASKS, "model.task", f"must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task == "seq-cls":
            require(len(self.labels) >= 2, "model.labels", "seq-cls needs at least two class names")
        require(
            self.dtype in ("float32", "bfloat16", "float16"),
            "model.dtype",
            f"must be float32, bfloat16 or float16, got {self.dtype!r}",
        )
        require(self.quantize in QUANTIZE, "model.quantize", f"must be none or 4bit, got {self.quantize!r}")


@dataclass(frozen=True)
class AdapterConfig:
    rank: int = field(default=8, metadata={"help": "LoRA rank of both adapters (global and local)."})
    alpha: float = field(
        default=16.0, metadata={"help": "LoRA scaling: an adapter's update is scaled by alpha / rank."}
    )
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout on the adapters' input, in [0, 1)."})
    target_modules: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Names of the modules to adapt. Empty: pick the attention projections of the "
            "architecture (q/v or query/value)."
        },
    )
    last_k_blocks: int = field(
        default=0,
        metadata={
            "help": "Adapt only the last k transformer blocks; 0 adapts every block. Med-DualLoRA: "
            "adapting the last blocks is enough."
        },
    )
    train_global_a: bool = field(
        default=False,
        metadata={
            "help": "false (FFA-LoRA): A_g is frozen from mesh_seed and only B_g trains and travels, which "
            "makes mixing of B_g exact and halves the bytes. true trains and exchanges A_g too."
        },
    )
    local_rank: int = field(
        default=0,
        metadata={
            "help": "LoRA rank of the private local adapter (scaled by alpha / rank like the global one); "
            "0: adapter.rank. Private, so sites may differ."
        },
    )
    share: str = field(
        default="b",
        metadata={
            "help": 'Which factor of the global adapter travels. "b" (FFA-LoRA): A_g frozen from mesh_seed, '
            'B_g trains and travels. "a" (FedSA-LoRA): A_g trains and travels, B_g trains but stays at the '
            'site. "ab": both train and travel (the same as train_global_a = true).'
        },
    )
    mesh_seed: int = field(
        default=0,
        metadata={"help": "Seeds the frozen A_g and a fresh seq-cls head: must be the same on every site."},
    )
    use_local: bool = field(
        default=True,
        metadata={
            "help": "A second, private adapter that never leaves the site. false gives a global-only model."
        },
    )
    fused: bool = field(
        default=True,
        metadata={
            "help": "Compute the global and local adapters of a layer as one LoRA of rank rank + "
            "local_rank (the same parameters and numbers; faster than peft's two passes). false: peft's "
            "own forward, one adapter after the other."
        },
    )
    head: str = field(
        default="split",
        metadata={
            "help": 'seq-cls head: "split" like the adapters, a shared head plus a private one (starting at '
            'zero) whose outputs add up; shared with the mesh ("global"); or kept at the site ("local"). '
            "split measured best on real medical text (docs/results/medical)."
        },
    )

    def validate(self) -> None:
        require(self.rank >= 1, "adapter.rank", f"must be >= 1, got {self.rank}")
        require(self.alpha > 0, "adapter.alpha", f"must be > 0, got {self.alpha}")
        require(0.0 <= self.dropout < 1.0, "adapter.dropout", f"must be in [0, 1), got {self.dropout}")
        require(self.last_k_blocks >= 0, "adapter.last_k_blocks", "must be >= 0 (0 = all blocks)")
        require(self.local_rank >= 0, "adapter.local_rank", "must be >= 0 (0 = adapter.rank)")
        require(self.head in HEAD_SCOPES, "adapter.head", f"must be one of {HEAD_SCOPES}, got {self.head!r}")
        require(
            self.share in SHARED_FACTORS,
            "adapter.share",
            f"must be one of {', '.join(SHARED_FACTORS)}, got {self.share!r}",
        )
        require(
            not (self.train_global_a and self.share == "a"),
            "adapter.share",
            '"a" keeps B_g private, but train_global_a = true shares both: set share = "ab" and drop '
            "train_global_a",
        )

    @property
    def shared_factors(self) -> str:
        """What of the global adapter trains and travels: "b", "a" or "ab" (train_global_a = true)."""
        return "ab" if self.train_global_a else self.share


@dataclass(frozen=True)
class TrainConfig:
    data: str = field(
        default="",
        metadata={
            "help": "This site's JSONL training file: `text` (causal-lm) or `text` + `label` (seq-cls); "
            "relative to this file."
        },
    )
    eval_data: str = field(
        default="",
        metadata={
            "help": "JSONL evaluation file. Empty: hold out eval_fraction of `data`, chosen by `seed`."
        },
    )
    eval_fraction: float = field(
        default=0.1,
        metadata={"help": "Share of `data` held out for evaluation when eval_data is empty, in (0, 1)."},
    )
    steps_per_round: int = field(
        default=10, metadata={"help": "Local optimizer steps between two exchanges (0: mix only)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Examples per optimizer step."})
    lr: float = field(default=5e-4, metadata={"help": "AdamW learning rate."})
    shared_lr: float = field(
        default=0.0,
        metadata={
            "help": "AdamW learning rate of the shared part (global adapter, shared head): what the mesh "
            "averages. Averaging neighbours' updates under label skew shortens the step, so the shared "
            "part may want a larger rate than the private one. Measured on real medical text "
            "(docs/results/medical): 4 x the rate lifted a global-only mesh's model, and gave dual no "
            "gain. 0: train.lr."
        },
    )
    lr_decay_rounds: int = field(
        default=0,
        metadata={
            "help": "Cosine decay of every learning rate (train.lr, train.shared_lr) from its value to 0 "
            "over this many rounds of training (x steps_per_round steps), then 0; usually "
            "gossip.rounds. The schedule follows the mesh's round number: a node that restarts or "
            "catches up trains each round at the rate the others train it at. A lossy codec's public "
            "copies then catch up with models that stop moving: on real medical text "
            "(docs/results/medical) the pipeline codec cost a global-only mesh nothing against "
            "lossless with the decay (20 seeds), 1.6 points without it, but the decay itself cost the "
            "lossless mesh about as much; decayed from twice the rate, the lossless mesh kept its "
            "score and the codec's difference from it was -0.6 points [-2.0, +0.8]. 0: constant rates."
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    proximal: float = field(
        default=0.0,
        metadata={
            "help": "Ditto-style pull of the site's personal model towards the shared one: extra AdamW "
            "(decoupled) weight decay on the private part only (local adapter, private head), whose zero "
            "is the shared model. 0: off. Measured on real medical text at 2 and 10: no gain "
            "(docs/results/medical)."
        },
    )
    keep_best: str = field(
        default="off",
        metadata={
            "help": "Keep the site's best model, not just its latest: after each round's evaluation (on "
            "eval_data, or the hold-out of `data`; never the data you report on), a round that scores "
            "better than every earlier one by this criterion (the mesh's adapter a node takes when it "
            "catches up counts as one) has its adapters written to STATE_DIR/best "
            "(atomically; `fedpeer export --best` exports them). eval_loss (lower is better) or macro_f1 "
            "(seq-cls, higher is better). Training and mixing go on from the latest state either way. "
            "off: no copy."
        },
    )
    max_length: int = field(
        default=128,
        metadata={
            "help": "Tokens per example (at least 8); longer examples are cut (a causal-lm prompt loses "
            "its start rather than its completion)."
        },
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Seeds the eval hold-out, the batch order and (with node_id) the local adapter's "
            "initialization."
        },
    )
    class_weights: str = field(
        default="none",
        metadata={
            "help": "seq-cls loss weights. none: plain cross-entropy. balanced: each class the site has "
            "weighs n / (classes present * n_class), so a skewed site does not settle on its majority "
            "class (what macro-F1 punishes). logit-adjusted: cross-entropy of logits + log p_site(class) "
            "(balanced softmax; FedLC, FedRoD): the model learns scores free of the site's label mix, "
            "and a class the site lacks is not pushed down; pair it with train.prior = 1 to predict "
            "with the site's mix. Measured on real medical text (docs/results/medical): with prior 1, "
            "level with balanced and the best prior for a global-only mesh and a pooled model; in dual "
            "it lost 3 to 5 points (keep balanced there). Computed from the site's own training labels "
            "only."
        },
    )
    prior: float = field(
        default=0.0,
        metadata={
            "help": "seq-cls: when the site predicts (evaluation, keep_best, `fedpeer export`), add "
            "prior * log p_site(class) to the logits, p_site being the class shares of the site's own "
            "training labels (+0.5 smoothing; the counts never leave the site). Training is unchanged. "
            "With balanced class weights a model predicts as if every class were equally likely; this "
            "puts the site's own mix back. Measured on real medical text (docs/results/medical): it "
            "lifts a model trained on other sites' data (a pooled one, a global-only mesh's) and lowers "
            "one whose private part learnt the site's own (local-only, dual: leave it at 0 there). "
            "A global-only mesh (adapter.use_local = false) for 32 rounds against the best local-only: "
            "at lr 1.2e-2 with prior 1, +5.9 points on MTSamples (20 seeds; +4.4 with the pipeline "
            "codec at 16.5x fewer bytes and gossip.gamma 0.5, 1.6 below lossless) and -1.1 on Medical "
            "Abstracts; "
            "at lr 3e-3 with "
            "prior 0.5, +1.7 on Medical Abstracts (20 seeds, interval reaching -0.5; +2.3 with the "
            "pipeline codec at 17x) and +3.4 on MTSamples (10 seeds, reaching -0.6). 0: off; 1: the "
            "site's full prior."
        },
    )
    prior_choices: tuple[float, ...] = field(
        default=(),
        metadata={
            "help": "seq-cls: let the site choose train.prior itself. Each evaluation (every round, on "
            "eval_data or the hold-out of `data`: never the data you report on) scores the model at each "
            "of these values and keeps the one with the best macro-F1 (ties: the earlier value); the "
            "site predicts with it until the next evaluation, and `fedpeer export` puts it into the "
            "head. The choice is checkpointed (and kept with train.keep_best's best round). Measured on "
            "real medical text (docs/results/medical), choices 0.5 and 1 on a 15 % split, a global-only "
            "mesh, 10 seeds: no gain over a fixed 0.5 (-1.0 and +0.0 points); splits of a few dozen "
            "examples cannot tell the choices apart. Empty: train.prior as set."
        },
    )
    schedule: str = field(
        default="joint",
        metadata={
            "help": "How a round's steps train the two parts. joint: every step updates both the shared "
            "part (what travels) and the private part (local adapter, private head). alternate: steps take "
            "turns, shared first. global-first: the first half of the steps updates the shared part, the "
            "second half the private part. local-first: the other way round (FedRep's order). "
            "decoupled: every step trains the shared part on the loss of the shared part alone (the "
            "model without its private part, as a global-only mesh trains it) and the private part on "
            "the whole model's loss, the shared part held as it is (two passes a step; FedRoD's split). "
            "The mesh's model is then not pulled towards the site; the private part learns the site's "
            "own on top of it."
        },
    )
    frozen_cache_mb: int = field(
        default=1024,
        metadata={
            "help": "With adapters on the last blocks only (adapter.last_k_blocks) and model.dropout off, "
            "the output of the frozen blocks below is computed once per example and kept, up to this many "
            "MiB: later steps and evaluations run only the adapted blocks (same results). 0: off."
        },
    )
    device: str = field(
        default="auto",
        metadata={
            "help": "auto (cuda when present, else cpu), cpu, cuda or cuda:N. The scenario runner spreads "
            "nodes over GPUs."
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "Autocast of the forward pass: fp32 (none), bf16 or fp16 (CUDA only, with loss "
            "scaling). Adapter weights and optimizer state stay fp32. auto: bf16 on a CUDA GPU that has "
            "it, fp32 elsewhere (CPU runs stay exact)."
        },
    )
    grad_accum: int = field(
        default=1,
        metadata={
            "help": "Micro-batches per optimizer step: batch_size examples are split into this many "
            "passes whose gradients add up to the whole batch's (less memory, same step)."
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "Recompute the base model's activations in the backward pass instead of keeping "
            "them: much less memory for long sequences, about a third more compute."
        },
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the model for training (the first steps compile; worth it for long "
            "runs on a GPU)."
        },
    )

    def validate(self) -> None:
        require(self.data != "", "train.data", "must name the site's JSONL training file")
        require(
            self.precision in PRECISIONS,
            "train.precision",
            f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
        )
        require(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        require(
            self.grad_accum <= self.batch_size,
            "train.grad_accum",
            f"must be <= train.batch_size ({self.batch_size}): each micro-batch needs an example",
        )
        require(0.0 < self.eval_fraction < 1.0, "train.eval_fraction", "must be in (0, 1)")
        require(self.steps_per_round >= 0, "train.steps_per_round", "must be >= 0")
        require(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        require(self.lr >= 0, "train.lr", "must be >= 0")
        require(self.shared_lr >= 0, "train.shared_lr", "must be >= 0 (0 = train.lr)")
        require(self.lr_decay_rounds >= 0, "train.lr_decay_rounds", "must be >= 0 (0 = constant rates)")
        require(self.proximal >= 0, "train.proximal", "must be >= 0 (0 = off)")
        require(self.prior >= 0, "train.prior", "must be >= 0 (0 = off)")
        require(
            all(tau >= 0 for tau in self.prior_choices),
            "train.prior_choices",
            f"must all be >= 0 (values of train.prior), got {list(self.prior_choices)}",
        )
        require(
            self.keep_best in KEEP_BEST,
            "train.keep_best",
            f"must be one of {', '.join(KEEP_BEST)}, got {self.keep_best!r}",
        )
        require(self.max_length >= 8, "train.max_length", "must be >= 8")
        require(
            self.schedule in SCHEDULES,
            "train.schedule",
            f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}",
        )
        require(self.frozen_cache_mb >= 0, "train.frozen_cache_mb", "must be >= 0 (0 = off)")
        require(
            self.class_weights in CLASS_WEIGHTS,
            "train.class_weights",
            f"must be one of {', '.join(CLASS_WEIGHTS)}, got {self.class_weights!r}",
        )
        # The form only (torch is not imported here); the node checks the device exists at start.
        require(
            re.fullmatch(r"[a-z]+(:\d+)?", self.device) is not None,
            "train.device",
            f"must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )


@dataclass(frozen=True)
class GossipConfig:
    rounds: int = field(
        default=10, metadata={"help": "Rounds to run: train steps_per_round, exchange with neighbours, mix."}
    )
    gamma: float = field(
        default=1.0,
        metadata={
            "help": "CHOCO consensus step size, in [0, 1]. 1.0 with a lossless codec is plain gossip "
            "x <- W x; the lossy pipeline codec needs < 1, and small enough for its bytes: on the medical "
            "benchmark (2,600 bytes a round) 0.8 held for 8 rounds and diverged over 32; 0.5 and 0.65 "
            "held. A node warns when its consensus distance, relative to its model's norm, has grown 8 "
            "rounds in a row."
        },
    )
    round_timeout_s: float = field(
        default=120.0,
        metadata={
            "help": "A round waits this long for neighbours' updates (a slow neighbour), then mixes with "
            "those it has."
        },
    )
    failure_timeout_s: float = field(
        default=3.0,
        metadata={
            "help": "While a round waits, a neighbour that does not answer health checks for this long "
            "is dead or hung: the round goes on without it (a slow neighbour that answers is waited for "
            "until round_timeout_s). The same holds for a send still running: a hung neighbour's stream is "
            "given up on once it fails its health checks for this long."
        },
    )
    rpc_timeout_s: float = field(
        default=30.0,
        metadata={"help": "Deadline of one RPC to a neighbour (handshake, one update stream, one snapshot)."},
    )
    join_timeout_s: float = field(
        default=60.0,
        metadata={
            "help": "How long a starting node keeps retrying its first handshakes before starting round 1 "
            "anyway."
        },
    )
    max_rounds_ahead: int = field(
        default=2,
        metadata={"help": "Frames for rounds further ahead than this are refused (bounds the inbox)."},
    )
    linger_s: float = field(
        default=5.0,
        metadata={
            "help": "Seconds to keep serving after the last round (slower neighbours may still need a "
            "snapshot)."
        },
    )
    weighting: str = field(
        default="metropolis-hastings",
        metadata={
            "help": "Mixing weights. metropolis-hastings: w_ij = 1/(1+max(d_i,d_j)), the mesh averages "
            "uniformly. data-size / val-loss: Metropolis-Hastings towards a target distribution pi "
            "(pi_i = the site's number of training examples, or exp(1 - val_loss) as in Fed-MedLoRA+), "
            "so the mesh converges to the pi-weighted average instead (see docs/protocol.md)."
        },
    )
    allow_solo: bool = field(
        default=False,
        metadata={
            "help": "A node that never hears from any neighbour during its whole run trained alone: it "
            "then exits with an error (a misconfigured mesh must not pass for a working one). true "
            "allows solo runs (exit 0)."
        },
    )
    robust: str = field(
        default="none",
        metadata={
            "help": "Mixing rule against Byzantine neighbours. none: plain CHOCO mixing. clipped: "
            "ClippedGossip (He, Karimireddy and Jaggi, ICLR 2023): each neighbour's contribution "
            "x_hat_j - x_hat_i is clipped to a radius around this node's public value, so that no "
            "neighbour moves it by more than its weight times the radius per round, whatever it sends."
        },
    )
    clip_radius: float = field(
        default=0.0,
        metadata={
            "help": "With robust clipped: a fixed radius (in the adapter's units), or 0 for the adaptive "
            "one: each round, the farthest neighbours holding byzantine_fraction of the neighbour weight "
            "are clipped to the distance of the farthest one left."
        },
    )
    byzantine_fraction: float = field(
        default=0.25,
        metadata={
            "help": "With robust clipped and the adaptive radius: share of a node's neighbour weight "
            "assumed Byzantine, in [0, 1); above 0, at least one neighbour is clipped each round (on a "
            "ring: the farther of the two, which also slows honest consensus there)."
        },
    )
    norm_bound: float = field(
        default=0.0,
        metadata={
            "help": "A neighbour whose contribution ||x_hat_j - x_hat_i|| exceeds this is an offender: left "
            "out of the round's mix (like a neighbour that is down), logged with its id and listed in the "
            "round's metrics. In the adapter's units; 0 turns it off. Works with robust none too."
        },
    )
    dp: bool = field(
        default=False,
        metadata={
            "help": "Differential privacy for the global adapter (the local one never leaves): each round's "
            "update is clipped to dp_clip_norm and Gaussian noise of dp_noise_multiplier * dp_clip_norm "
            "is added before it is encoded and sent. Site-level guarantee, accounted per round with "
            "dp-accounting (pip install 'fedpeer[dp]'): see docs/protocol.md."
        },
    )
    dp_clip_norm: float = field(
        default=1.0,
        metadata={
            "help": "dp: L2 bound C on one round's global update (all tensors together); also the noise "
            "scale's unit. Pick it near the typical update norm (`dp_update_norm` in metrics.jsonl)."
        },
    )
    dp_noise_multiplier: float = field(
        default=0.0,
        metadata={
            "help": "dp: noise standard deviation over dp_clip_norm. 0: calibrated from dp_epsilon over "
            "`rounds` rounds. With both set, dp_epsilon is a budget this multiplier must fit (checked "
            "at start)."
        },
    )
    dp_epsilon: float = field(
        default=0.0,
        metadata={
            "help": "dp: target epsilon for the whole run (`rounds` releases) at dp_delta; without "
            "dp_noise_multiplier the noise is calibrated to it. 0: no target, use dp_noise_multiplier."
        },
    )
    dp_delta: float = field(
        default=1e-5,
        metadata={"help": "dp: delta of the (epsilon, delta) guarantee, in (0, 1)."},
    )

    def validate(self) -> None:
        require(self.rounds >= 1, "gossip.rounds", "must be >= 1")
        require(0.0 <= self.gamma <= 1.0, "gossip.gamma", "must be in [0, 1]")
        for name in ("round_timeout_s", "failure_timeout_s", "rpc_timeout_s", "join_timeout_s"):
            require(getattr(self, name) > 0, f"gossip.{name}", "must be > 0 seconds")
        require(self.max_rounds_ahead >= 1, "gossip.max_rounds_ahead", "must be >= 1")
        require(
            self.weighting in WEIGHTINGS,
            "gossip.weighting",
            f"must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}",
        )
        require(
            self.robust in ROBUST_RULES,
            "gossip.robust",
            f"must be one of {', '.join(ROBUST_RULES)}, got {self.robust!r}",
        )
        require(self.clip_radius >= 0, "gossip.clip_radius", "must be >= 0 (0 = adaptive)")
        require(0.0 <= self.byzantine_fraction < 1.0, "gossip.byzantine_fraction", "must be in [0, 1)")
        require(self.norm_bound >= 0, "gossip.norm_bound", "must be >= 0 (0 = off)")
        require(self.dp_clip_norm > 0, "gossip.dp_clip_norm", "must be > 0")
        require(self.dp_noise_multiplier >= 0, "gossip.dp_noise_multiplier", "must be >= 0")
        require(self.dp_epsilon >= 0, "gossip.dp_epsilon", "must be >= 0")
        require(0.0 < self.dp_delta < 1.0, "gossip.dp_delta", "must be in (0, 1), e.g. 1e-5")
        if self.dp:
            require(
                self.dp_noise_multiplier > 0 or self.dp_epsilon > 0,
                "gossip.dp_noise_multiplier",
                "and gossip.dp_epsilon are both 0: with dp on, set the noise multiplier, or a target "
                "epsilon to calibrate it from",
            )


@dataclass(frozen=True)
class CodecConfig:
    name: str = field(
        default="fp16",
        metadata={
            "help": "lossless (fp32) | fp16 | pipeline, each byte-shuffled and zstd-compressed. The "
            "pipeline (low-rank where it pays, blockwise int4/int8) is lossy: set gossip.gamma < 1 with "
            "it (CHOCO). The settings below marked pipeline are the sender's choice: the frame header "
            "carries what a receiver needs."
        },
    )
    zstd_level: int = field(
        default=3,
        metadata={
            "help": "1..22. Levels 1-3: noise-like floats and int codes gain little from higher levels, "
            "which cost CPU."
        },
    )
    max_payload_mb: float = field(
        default=1024.0,
        metadata={
            "help": "Decoder bound on one update's decompressed size; frames declaring more are refused."
        },
    )
    bits: int = field(
        default=4,
        metadata={
            "help": "pipeline: bits per value, 4, 8 or 16. Measured on MiniLM B_g updates "
            "(benchmarks/codec.py): 4 bits alone is 6 % error per round and ~16x fewer bytes than fp32 "
            "LoRA exchange; 8 bits 0.4 % and 7.7x; 16 bits (fp16) 0.02 %."
        },
    )
    block: int = field(
        default=64,
        metadata={
            "help": "pipeline: values per fp16 block scale, 8..65536: 64 costs 0.25 bit/value and follows "
            "local magnitudes closely."
        },
    )
    rank_fraction: float = field(
        default=0.5,
        metadata={
            "help": "pipeline: low-rank rank as a fraction of each unfolding's rank (B_g [out, r]: svd "
            "rank ceil(f·r)). A group is factorized only where it pays (error and bytes measured each "
            "round): 0.5 with 4 bits is ~30x on real updates (40 % error, resent by error feedback), and "
            "falls back to dense on noise-like ones. 1.0 never factorizes (the ~16x point with the "
            "least error)."
        },
    )
    methods: tuple[str, ...] = field(
        default=("svd", "tucker"),
        metadata={
            "help": "pipeline: factorizations to try per tensor group: per-matrix SVD (svd), Tucker "
            "(tucker) / tensor train (tt) over the stack."
        },
    )
    stochastic: bool = field(
        default=False,
        metadata={
            "help": "pipeline: unbiased (stochastic) rounding instead of nearest: zero-mean error, "
            "slightly larger."
        },
    )
    budget_bytes: int = field(
        default=0,
        metadata={
            "help": "pipeline: bytes per round per link; > 0 lets the codec pick ranks and bits to fit "
            "(bits and rank_fraction are then ignored). One frame goes to every neighbour (CHOCO needs "
            "one x_hat per sender), so give the tightest link's budget. 0 = off."
        },
    )

    @property
    def lossy(self) -> bool:
        """The pipeline codec loses information by design (fp16 rounds only): CHOCO needs gamma < 1."""
        return self.name == "pipeline"

    def validate(self) -> None:
        # The codec package owns its options and their rules (one definition, torch-free).
        validate_codec_options(dataclasses.asdict(self))
