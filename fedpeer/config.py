"""Node configuration: frozen dataclasses, loaded from TOML with errors that name the field.

A node config file has one table per dataclass below (`[model]`, `[adapter]`, `[train]`,
`[gossip]`, `[codec]`) plus top-level `node_id`, `listen`, `state_dir` and a `[[neighbours]]`
array. `fedpeer init` writes a commented example.
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

from fedpeer.errors import ConfigError

TASKS = ("causal-lm", "seq-cls")
CODECS = ("lossless", "fp16", "pipeline")
# What the pipeline codec may factorize with (fedpeer.codec.factorize); bit widths it may use.
CODEC_METHODS = ("svd", "tucker", "tt")
CODEC_BITS = (4, 8, 16)
HEAD_SCOPES = ("global", "local")
CLASS_WEIGHTS = ("none", "balanced")
WEIGHTINGS = ("metropolis-hastings", "data-size", "val-loss")


@dataclass(frozen=True)
class ModelConfig:
    path: str = field(default="", metadata={"help": "Hugging Face model id or local directory"})
    task: str = field(default="causal-lm", metadata={"help": "causal-lm | seq-cls"})
    # Class names for seq-cls; the JSONL `label` field is one of these (or its index).
    labels: tuple[str, ...] = ()
    # Same base weights everywhere matter more than speed; fp32 keeps CPU runs exact.
    dtype: str = "float32"
    # The frozen base model's own dropout while training (LoRA's is adapter.dropout). false turns it
    # off: nothing random is drawn, so nodes sharing a process train in parallel and reproducibly.
    dropout: bool = True

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
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # Empty: pick the attention projections of the architecture (q/v or query/value).
    target_modules: tuple[str, ...] = ()
    # Med-DualLoRA: adapting the last blocks is enough; 0 adapts every block.
    last_k_blocks: int = 0
    # FFA-LoRA: A_g frozen from mesh_seed makes mixing of B_g exact and halves the bytes.
    train_global_a: bool = False
    mesh_seed: int = 0
    # A second, private adapter that never leaves the site. False gives a global-only model.
    use_local: bool = True
    # seq-cls head: shared with the mesh ("global") or kept at the site ("local").
    head: str = "global"

    def validate(self) -> None:
        _require(self.rank >= 1, "adapter.rank", f"must be >= 1, got {self.rank}")
        _require(self.alpha > 0, "adapter.alpha", f"must be > 0, got {self.alpha}")
        _require(0.0 <= self.dropout < 1.0, "adapter.dropout", f"must be in [0, 1), got {self.dropout}")
        _require(self.last_k_blocks >= 0, "adapter.last_k_blocks", "must be >= 0 (0 = all blocks)")
        _require(self.head in HEAD_SCOPES, "adapter.head", f"must be global or local, got {self.head!r}")


@dataclass(frozen=True)
class TrainConfig:
    data: str = field(default="", metadata={"help": "JSONL file: `text` (causal-lm) or `text`+`label`"})
    # Empty: hold out eval_fraction of `data`, chosen by `seed`.
    eval_data: str = ""
    eval_fraction: float = 0.1
    steps_per_round: int = 10
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 0.0
    max_length: int = 128
    seed: int = 0
    # seq-cls loss weights. none: plain cross-entropy. balanced: each class the site has weighs
    # n / (classes present * n_class), so a skewed site does not settle on its majority class
    # (what macro-F1 punishes). Computed from the site's own training labels only.
    class_weights: str = "none"
    # auto: cuda when present, else cpu. The scenario runner spreads nodes over GPUs.
    device: str = "auto"

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
    rounds: int = 10
    # CHOCO consensus step size. 1.0 with a lossless codec is plain gossip x <- W x.
    gamma: float = 1.0
    # A round waits this long for neighbours' updates, then mixes with those it has.
    round_timeout_s: float = 120.0
    # Deadline of one RPC (handshake, one update stream, one snapshot).
    rpc_timeout_s: float = 30.0
    # How long a starting node keeps retrying its first handshakes before starting round 1 anyway.
    join_timeout_s: float = 60.0
    # Frames for rounds further ahead than this are refused (bounds the inbox).
    max_rounds_ahead: int = 2
    # Seconds to keep serving after the last round (slower neighbours may still need a snapshot).
    linger_s: float = 5.0
    # Mixing weights. metropolis-hastings: w_ij = 1/(1+max(d_i,d_j)), the mesh averages uniformly.
    # data-size / val-loss: Metropolis-Hastings towards a target distribution pi (pi_i = the
    # site's number of training examples, or exp(1 - val_loss) as in Fed-MedLoRA+), so the mesh
    # converges to the pi-weighted average instead (see docs/protocol.md).
    weighting: str = "metropolis-hastings"
    # A node that never hears from any neighbour during its whole run trained alone: it then exits
    # with an error (a misconfigured mesh must not pass for a working one). True allows solo runs.
    allow_solo: bool = False

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
    # lossless | fp16 | pipeline. The pipeline is lossy: set gossip.gamma < 1 with it (CHOCO).
    name: str = "fp16"
    # Levels 1-3: noise-like floats and int codes gain little from higher levels, which cost CPU.
    zstd_level: int = 3
    # Decoder bound on one update's decompressed size; frames declaring more are refused.
    max_payload_mb: float = 1024.0
    # --- pipeline only (senders' choice: the frame header carries what a receiver needs) ---
    # Measured on MiniLM B_g updates (benchmarks/codec.py): 4 bits alone is 6 % error per round and
    # ~16x fewer bytes than fp32 LoRA exchange; 8 bits 0.4 % and 7.7x; 16 bits (fp16) 0.02 %.
    bits: int = 4
    # Values per fp16 block scale: 64 costs 0.25 bit/value and follows local magnitudes closely.
    block: int = 64
    # Low-rank rank as a fraction of each unfolding's rank (B_g [out, r]: svd rank ceil(f·r)).
    # A group is factorized only where it pays (error and bytes measured each round): 0.5 with
    # 4 bits is ~30x on real updates (40 % error, resent by error feedback), and falls back to
    # dense on noise-like ones. 1.0 never factorizes (the ~16x point with the least error).
    rank_fraction: float = 0.5
    # Factorizations to try per tensor group: per-matrix SVD, Tucker / tensor train over the stack.
    methods: tuple[str, ...] = ("svd", "tucker")
    # Unbiased (stochastic) rounding instead of nearest: zero-mean error, slightly larger.
    stochastic: bool = False
    # Bytes per round per link; > 0 lets the codec pick ranks and bits to fit (bits and
    # rank_fraction are then ignored). One frame goes to every neighbour (CHOCO needs one x_hat
    # per sender), so give the tightest link's budget. 0 = off.
    budget_bytes: int = 0

    def validate(self) -> None:
        _require(self.name in CODECS, "codec.name", f"must be one of {', '.join(CODECS)}, got {self.name!r}")
        _require(1 <= self.zstd_level <= 22, "codec.zstd_level", "must be in 1..22")
        _require(self.max_payload_mb > 0, "codec.max_payload_mb", "must be > 0")
        _require(self.bits in CODEC_BITS, "codec.bits", f"must be 4, 8 or 16, got {self.bits}")
        _require(8 <= self.block <= 65536, "codec.block", f"must be in 8..65536, got {self.block}")
        _require(0.0 < self.rank_fraction <= 1.0, "codec.rank_fraction", "must be in (0, 1]")
        for m in self.methods:
            _require(
                m in CODEC_METHODS, "codec.methods", f"must be among {', '.join(CODEC_METHODS)}, got {m!r}"
            )
        _require(self.budget_bytes >= 0, "codec.budget_bytes", "must be >= 0 (0 = off)")


@dataclass(frozen=True)
class PeerConfig:
    id: str
    address: str


@dataclass(frozen=True)
class LinkConfig:
    """Emulated conditions of the link to one neighbour during some rounds (a scenario's faults).

    Applied inside the transport (`fedpeer.transport.emulated`) to what this node sends and
    receives, so that one schedule behaves the same with processes, namespaces and containers.
    """

    peer: str
    # Rounds from_round..to_round, both included; to_round 0 = until the last round.
    from_round: int = 1
    to_round: int = 0
    # Nothing passes either way: calls fail as if the peer were down, its frames are refused.
    cut: bool = False
    # Added before each send (netem is missing on some kernels, so delay lives here).
    delay_ms: float = 0.0
    # Probability that a whole update frame is dropped (the send fails, the receiver resyncs).
    loss: float = 0.0
    # Cap emulated as a wait of bytes*8/rate per frame; 0 = unlimited.
    bandwidth_mbit: float = 0.0

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
    node_id: str
    state_dir: str
    listen: str = "127.0.0.1:50051"
    # Address neighbours use to reach us; empty = listen.
    advertise: str = ""
    neighbours: tuple[PeerConfig, ...] = ()
    model: ModelConfig = ModelConfig()
    adapter: AdapterConfig = AdapterConfig()
    train: TrainConfig = TrainConfig()
    gossip: GossipConfig = GossipConfig()
    codec: CodecConfig = CodecConfig()
    # Emulated link faults (cut, delay, loss, bandwidth) per neighbour and round; scenarios write them.
    links: tuple[LinkConfig, ...] = ()

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
        lines.append(f"{k} = {_toml_value(v)}")
    for k, v in data.items():
        if _is_table_list(v):
            for item in v:
                lines.append(f"\n[[{k}]]")
                lines.extend(f"{ik} = {_toml_value(iv)}" for ik, iv in item.items())
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines.extend(f"{ik} = {_toml_value(iv)}" for ik, iv in v.items())
    return "\n".join(lines) + "\n"


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(x, dict) for x in v)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")
