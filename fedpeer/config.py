"""Node configuration: frozen dataclasses, loaded from TOML with errors that name the field.

A node config file has one table per dataclass below (`[model]`, `[adapter]`, `[train]`,
`[gossip]`, `[codec]`) plus top-level `node_id`, `state_dir`, `listen`, `advertise` and the
`[[neighbours]]` and `[[links]]` arrays. Each setting is defined once, here: its type, default and
`help` metadata (why the default is what it is). `fedpeer init` writes them as a commented file
(`fedpeer.settings.render_template`); validation stays in each class's `validate`.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fedpeer.codec.options import validate_codec_options
from fedpeer.errors import ConfigError

TASKS = ("causal-lm", "seq-cls")
HEAD_SCOPES = ("global", "local")
CLASS_WEIGHTS = ("none", "balanced")
WEIGHTINGS = ("metropolis-hastings", "data-size", "val-loss")


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
    dropout: bool = field(
        default=True,
        metadata={
            "help": "The frozen base model's own dropout while training (LoRA's is adapter.dropout). "
            "false turns it off: nothing random is drawn, so nodes sharing a process train in parallel "
            "and reproducibly."
        },
    )

    def validate(self) -> None:
        _require(self.path != "", "model.path", "must name a Hugging Face model id or a local directory")
        _require(self.task in TASKS, "model.task", f"must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task == "seq-cls":
            _require(len(self.labels) >= 2, "model.labels", "seq-cls needs at least two class names")
        _require(
            self.dtype in ("float32", "bfloat16", "float16"),
            "model.dtype",
            f"must be float32, bfloat16 or float16, got {self.dtype!r}",
        )


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
    head: str = field(
        default="global",
        metadata={"help": 'seq-cls head: shared with the mesh ("global") or kept at the site ("local").'},
    )

    def validate(self) -> None:
        _require(self.rank >= 1, "adapter.rank", f"must be >= 1, got {self.rank}")
        _require(self.alpha > 0, "adapter.alpha", f"must be > 0, got {self.alpha}")
        _require(0.0 <= self.dropout < 1.0, "adapter.dropout", f"must be in [0, 1), got {self.dropout}")
        _require(self.last_k_blocks >= 0, "adapter.last_k_blocks", "must be >= 0 (0 = all blocks)")
        _require(self.head in HEAD_SCOPES, "adapter.head", f"must be global or local, got {self.head!r}")


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
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
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
            "class (what macro-F1 punishes). Computed from the site's own training labels only."
        },
    )
    device: str = field(
        default="auto",
        metadata={
            "help": "auto (cuda when present, else cpu), cpu, cuda or cuda:N. The scenario runner spreads "
            "nodes over GPUs."
        },
    )

    def validate(self) -> None:
        _require(self.data != "", "train.data", "must name the site's JSONL training file")
        _require(0.0 < self.eval_fraction < 1.0, "train.eval_fraction", "must be in (0, 1)")
        _require(self.steps_per_round >= 0, "train.steps_per_round", "must be >= 0")
        _require(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _require(self.lr >= 0, "train.lr", "must be >= 0")
        _require(self.max_length >= 8, "train.max_length", "must be >= 8")
        _require(
            self.class_weights in CLASS_WEIGHTS,
            "train.class_weights",
            f"must be one of {', '.join(CLASS_WEIGHTS)}, got {self.class_weights!r}",
        )
        # The form only (torch is not imported here); the node checks the device exists at start.
        _require(
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
            "x <- W x; the lossy pipeline codec needs < 1."
        },
    )
    round_timeout_s: float = field(
        default=120.0,
        metadata={
            "help": "A round waits this long for neighbours' updates (a slow neighbour), then mixes with "
            "those it has."
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

    def validate(self) -> None:
        _require(self.rounds >= 1, "gossip.rounds", "must be >= 1")
        _require(0.0 <= self.gamma <= 1.0, "gossip.gamma", "must be in [0, 1]")
        for name in ("round_timeout_s", "rpc_timeout_s", "join_timeout_s"):
            _require(getattr(self, name) > 0, f"gossip.{name}", "must be > 0 seconds")
        _require(self.max_rounds_ahead >= 1, "gossip.max_rounds_ahead", "must be >= 1")
        _require(
            self.weighting in WEIGHTINGS,
            "gossip.weighting",
            f"must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}",
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

    def validate(self) -> None:
        # The codec package owns its options and their rules (one definition, torch-free).
        validate_codec_options(dataclasses.asdict(self))


@dataclass(frozen=True)
class PeerConfig:
    id: str = field(metadata={"help": "The neighbour's node_id.", "example": "site-b"})
    address: str = field(
        metadata={
            "help": "HOST:PORT the neighbour serves on (its advertise address, or its listen).",
            "example": "site-b.example.org:50051",
        }
    )


@dataclass(frozen=True)
class LinkConfig:
    """Emulated conditions of the link to one neighbour during some rounds (a scenario's faults).

    Applied inside the transport (`fedpeer.transport.emulated`) to what this node sends and
    receives, so that one schedule behaves the same with processes, namespaces and containers.
    """

    peer: str = field(
        metadata={
            "help": "The neighbour (one of the neighbours' ids) whose link this is.",
            "example": "site-b",
        }
    )
    from_round: int = field(
        default=1,
        metadata={"help": "First round the conditions apply (rounds from_round..to_round, both included)."},
    )
    to_round: int = field(default=0, metadata={"help": "Last round they apply; 0 = until the last round."})
    cut: bool = field(
        default=False,
        metadata={
            "help": "Nothing passes either way: calls fail as if the peer were down, its frames are refused."
        },
    )
    delay_ms: float = field(
        default=0.0,
        metadata={"help": "Added before each send (netem is missing on some kernels, so delay lives here)."},
    )
    loss: float = field(
        default=0.0,
        metadata={
            "help": "Probability that a whole update frame is dropped (the send fails, the receiver resyncs)."
        },
    )
    bandwidth_mbit: float = field(
        default=0.0,
        metadata={"help": "Cap emulated as a wait of bytes*8/rate per frame; 0 = unlimited."},
    )

    def active(self, rnd: int) -> bool:
        return self.from_round <= rnd and (self.to_round == 0 or rnd <= self.to_round)

    def validate(self, where: str) -> None:
        _require(self.peer != "", f"{where}.peer", "must name a neighbour")
        _require(self.from_round >= 0, f"{where}.from_round", "must be >= 0")
        _require(
            self.to_round == 0 or self.to_round >= self.from_round,
            f"{where}.to_round",
            "must be 0 (until the end) or >= from_round",
        )
        _require(self.delay_ms >= 0, f"{where}.delay_ms", "must be >= 0")
        _require(0.0 <= self.loss < 1.0, f"{where}.loss", "must be in [0, 1)")
        _require(self.bandwidth_mbit >= 0, f"{where}.bandwidth_mbit", "must be >= 0 (0 = unlimited)")


@dataclass(frozen=True)
class NodeConfig:
    node_id: str = field(metadata={"help": "Unique name of this site in the mesh (no '/')."})
    state_dir: str = field(
        metadata={
            "help": "checkpoint.safetensors and metrics.jsonl are written here; a node restarted on it "
            "resumes from its last completed round. Relative to this file."
        }
    )
    listen: str = field(
        default="127.0.0.1:50051",
        metadata={
            "help": "HOST:PORT this node serves its neighbours on.\ngRPC traffic between nodes is "
            "plaintext and unauthenticated today (no TLS yet): anyone who can reach `listen` can read "
            "the updates and send frames. 0.0.0.0 listens on every interface, public ones included: "
            'bind to a private interface or a VPN address (e.g. "10.8.0.2:50051") until TLS lands.'
        },
    )
    advertise: str = field(
        default="",
        metadata={
            "help": "Address neighbours use to reach us, if not `listen` (NAT, containers); empty = listen."
        },
    )
    neighbours: tuple[PeerConfig, ...] = field(
        default=(),
        metadata={
            "help": "Topology neighbours: one [[neighbours]] table each. Both ends must list each other."
        },
    )
    model: ModelConfig = field(
        default=ModelConfig(), metadata={"help": "The base model and its task (the same on every site)."}
    )
    adapter: AdapterConfig = field(
        default=AdapterConfig(),
        metadata={"help": "The LoRA adapters: a global one mixed over the mesh, a local one kept here."},
    )
    train: TrainConfig = field(
        default=TrainConfig(), metadata={"help": "Local training on this site's data between exchanges."}
    )
    gossip: GossipConfig = field(
        default=GossipConfig(),
        metadata={"help": "Rounds, timeouts and mixing: how updates are exchanged with the neighbours."},
    )
    codec: CodecConfig = field(
        default=CodecConfig(), metadata={"help": "How this node encodes the updates it sends."}
    )
    links: tuple[LinkConfig, ...] = field(
        default=(),
        metadata={
            "help": "Emulated link faults (cut, delay, loss, bandwidth) per neighbour and round; scenarios "
            "write them: one [[links]] table each."
        },
    )

    def validate(self) -> None:
        _require(
            self.node_id != "" and "/" not in self.node_id, "node_id", "must be a non-empty name without '/'"
        )
        _require(self.state_dir != "", "state_dir", "must name the node's state directory")
        _require(":" in self.listen, "listen", f"must be HOST:PORT, got {self.listen!r}")
        ids = [p.id for p in self.neighbours]
        _require(len(set(ids)) == len(ids), "neighbours", "neighbour ids must be unique")
        _require(self.node_id not in ids, "neighbours", "a node cannot be its own neighbour")
        for part in (self.model, self.adapter, self.train, self.gossip, self.codec):
            part.validate()
        # CHOCO converges with a compressor only for a consensus step below 1.
        _require(
            self.codec.name != "pipeline" or self.gossip.gamma < 1.0,
            "gossip.gamma",
            "must be < 1 with the lossy pipeline codec (CHOCO's consensus step; 0.5 is a safe start)",
        )
        for i, link in enumerate(self.links):
            link.validate(f"links[{i}]")
            _require(
                link.peer in ids, f"links[{i}].peer", f"{link.peer!r} is not a neighbour of {self.node_id}"
            )

    @property
    def address(self) -> str:
        return self.advertise or self.listen


def _require(ok: bool, field_path: str, reason: str) -> None:
    if not ok:
        raise ConfigError(f"{field_path} {reason}")


T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from plain TOML data, checking names and types field by field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{_join(where, unknown[0])} is not a known setting (known: {', '.join(sorted(fields))})"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {name: convert_value(hints[name], value, _join(where, name)) for name, value in data.items()}
    missing = [
        f.name
        for f in fields.values()
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{_join(where, missing[0])} is required")
    return cls(**kwargs)


def convert_value(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(convert_value(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: union types are not supported in config")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (
        not isinstance(value, tp) or (tp is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where} must be {tp.__name__}, got {value!r}")
    return value


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> TOML-ready dict (tuples become lists)."""
    out = dataclasses.asdict(obj)
    return _lists(out)


def _lists(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _lists(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_lists(x) for x in v]
    return v


def load_node_config(path: str | Path) -> NodeConfig:
    """Read and validate a node config file; relative paths in it are relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file (write one with `fedpeer init {path}`)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        cfg = from_dict(NodeConfig, data)
        cfg = resolve_paths(cfg, path.parent)
        cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg


def with_overrides(cfg: NodeConfig, changes: dict[str, Any]) -> NodeConfig:
    """`cfg` with dotted settings replaced ({"gossip.rounds": 3}), checked like the file's values:
    type first, then the whole config's validation (so --rounds 0 fails as `rounds = 0` would)."""
    for key, value in changes.items():
        section, _, name = key.rpartition(".")
        parent: Any = getattr(cfg, section, None) if section else cfg
        fields = {f.name for f in dataclasses.fields(parent)} if dataclasses.is_dataclass(parent) else set()
        if name not in fields:
            raise ConfigError(f"{key} is not a known setting")
        value = convert_value(typing.get_type_hints(type(parent))[name], value, key)
        parent = dataclasses.replace(parent, **{name: value})
        cfg = dataclasses.replace(cfg, **{section: parent}) if section else parent
    cfg.validate()
    return cfg


def hub_id_shaped(path: str) -> bool:
    """Whether `path` reads as a Hugging Face hub id `org/name`: exactly one '/', nothing path-like."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", path) is not None


def missing_model_dir(path: str, base: Path) -> Path | None:
    """Where model path `path` (relative to `base`) was looked for, when it is neither an existing
    path nor a hub id `org/name`; None otherwise. `org/name` whose `org` is a local directory is a
    local path too (models/base with models/ present), unless the Hugging Face cache holds it; so
    does a bare legacy id (gpt2), which passes only when cached."""
    local = base / Path(path).expanduser()
    if local.exists():
        return None
    if hub_id_shaped(path) and not (base / path.split("/")[0]).is_dir():
        return None
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", path) and in_hub_cache(path):
        return None
    return local.resolve()


def in_hub_cache(model_id: str) -> bool:
    """Whether the local Hugging Face cache holds model `model_id` (its config.json)."""
    try:
        from huggingface_hub import try_to_load_from_cache  # no torch behind it
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(model_id, "config.json"), str)


def resolve_paths(cfg: NodeConfig, base: Path) -> NodeConfig:
    """Make file paths absolute relative to `base` (model.path only when it is an existing dir).

    A model.path that exists nowhere and is no hub id `org/name` is refused at once (rather than
    tried on the hub, which retries for a minute before saying it cannot connect)."""

    def fix(p: str) -> str:
        return str((base / p).resolve()) if p and not Path(p).is_absolute() else p

    model_path = cfg.model.path
    missing = missing_model_dir(model_path, base) if model_path else None
    if missing is not None:
        raise ConfigError(
            f"model.path {model_path!r}: no such directory: {missing} (relative paths are relative to "
            "the config file; a Hugging Face model id is org/name)"
        )
    if model_path and (base / model_path).exists():
        model_path = fix(model_path)
    return dataclasses.replace(
        cfg,
        state_dir=fix(cfg.state_dir),
        model=dataclasses.replace(cfg.model, path=model_path),
        train=dataclasses.replace(cfg.train, data=fix(cfg.train.data), eval_data=fix(cfg.train.eval_data)),
    )


def dump_toml(data: dict[str, Any]) -> str:
    """Minimal TOML writer for our config shapes (scalars, lists, tables, arrays of tables)."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and not _is_table_list(v)}
    for k, v in scalars.items():
        lines.append(f"{k} = {toml_value(v)}")
    for k, v in data.items():
        if _is_table_list(v):
            for item in v:
                lines.append(f"\n[[{k}]]")
                lines.extend(f"{ik} = {toml_value(iv)}" for ik, iv in item.items())
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines.extend(f"{ik} = {toml_value(iv)}" for ik, iv in v.items())
    return "\n".join(lines) + "\n"


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(x, dict) for x in v)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")
