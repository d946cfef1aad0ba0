"""The node config as a whole: `NodeConfig` (top-level settings and the section tables) and the
`[[neighbours]]` (`PeerConfig`) and `[[links]]` (`LinkConfig`) arrays of tables."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedpeer.config.sections import (
    AdapterConfig,
    CodecConfig,
    GossipConfig,
    ModelConfig,
    TrainConfig,
    require,
)


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
class TlsConfig:
    """Mutual TLS between neighbours: every node proves its node id with a certificate of the mesh's CA."""

    ca: str = field(
        default="",
        metadata={
            "help": "PEM file of the CA(s) whose certificates this node trusts (a consortium with one CA "
            "per hospital concatenates them). Relative to this file."
        },
    )
    cert: str = field(
        default="",
        metadata={
            "help": "This node's certificate (`fedpeer pki issue CA_DIR NODE_ID`): its identity "
            "fedpeer://mesh/<node_id> must be this node_id."
        },
    )
    key: str = field(default="", metadata={"help": "This node's private key (kept 0600)."})
    insecure: bool = field(
        default=False,
        metadata={
            "help": "true: plaintext gRPC, no peer authentication: anyone who can reach `listen` can read "
            "updates and send frames as any neighbour. Only on an isolated test network."
        },
    )

    @property
    def enabled(self) -> bool:
        return not self.insecure

    def validate(self) -> None:
        if self.insecure:
            return
        missing = [name for name in ("ca", "cert", "key") if not getattr(self, name)]
        require(
            not missing,
            f"tls.{missing[0] if missing else 'ca'}",
            "is not set: a node needs the mesh CA, its certificate and its key (`fedpeer pki init DIR`, "
            "then `fedpeer pki issue DIR NODE_ID`; `fedpeer init --pki DIR` writes them into the config), "
            "or tls.insecure = true for plaintext on an isolated test network",
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
        require(self.peer != "", f"{where}.peer", "must name a neighbour")
        require(self.from_round >= 0, f"{where}.from_round", "must be >= 0")
        require(
            self.to_round == 0 or self.to_round >= self.from_round,
            f"{where}.to_round",
            "must be 0 (until the end) or >= from_round",
        )
        require(self.delay_ms >= 0, f"{where}.delay_ms", "must be >= 0")
        require(0.0 <= self.loss < 1.0, f"{where}.loss", "must be in [0, 1)")
        require(self.bandwidth_mbit >= 0, f"{where}.bandwidth_mbit", "must be >= 0 (0 = unlimited)")


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
            "help": "HOST:PORT this node serves its neighbours on, over mutual TLS ([tls]): only holders "
            "of a certificate of the mesh CA get an answer, and only the configured neighbours may "
            "exchange updates. 0.0.0.0 listens on every interface."
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
    tls: TlsConfig = field(
        default=TlsConfig(),
        metadata={"help": "Mutual TLS: the mesh CA, this node's certificate and key (see `fedpeer pki`)."},
    )
    links: tuple[LinkConfig, ...] = field(
        default=(),
        metadata={
            "help": "Emulated link faults (cut, delay, loss, bandwidth) per neighbour and round; scenarios "
            "write them: one [[links]] table each."
        },
    )

    def validate(self) -> None:
        require(
            self.node_id != "" and "/" not in self.node_id, "node_id", "must be a non-empty name without '/'"
        )
        require(self.state_dir != "", "state_dir", "must name the node's state directory")
        require(":" in self.listen, "listen", f"must be HOST:PORT, got {self.listen!r}")
        ids = [p.id for p in self.neighbours]
        require(len(set(ids)) == len(ids), "neighbours", "neighbour ids must be unique")
        require(self.node_id not in ids, "neighbours", "a node cannot be its own neighbour")
        for part in (self.model, self.adapter, self.train, self.gossip, self.codec):
            part.validate()
        # CHOCO converges with a compressor only for a consensus step below 1.
        require(
            not self.codec.lossy or self.gossip.gamma < 1.0,
            "gossip.gamma",
            "must be < 1 with the lossy pipeline codec (CHOCO's consensus step; 0.5 is a safe start)",
        )
        require(
            self.train.keep_best != "macro_f1" or self.model.task == "seq-cls",
            "train.keep_best",
            'macro_f1 needs model.task = "seq-cls"; a causal-lm site keeps its best model by eval_loss',
        )
        require(
            self.train.prior == 0 or self.model.task == "seq-cls",
            "train.prior",
            'is a class prior: it needs model.task = "seq-cls" (set it to 0 for a causal LM)',
        )
        require(
            not self.train.prior_choices or self.model.task == "seq-cls",
            "train.prior_choices",
            'are values of a class prior: they need model.task = "seq-cls" '
            "(leave them empty for a causal LM)",
        )
        require(
            self.train.schedule != "decoupled"
            or (self.adapter.share != "a" and (self.adapter.head != "local" or self.model.task != "seq-cls")),
            "train.schedule",
            'decoupled trains the shared part alone: it needs a shared head (adapter.head "split" or '
            '"global") and a shared B_g (adapter.share "b" or "ab")',
        )
        for i, link in enumerate(self.links):
            link.validate(f"links[{i}]")
            require(
                link.peer in ids, f"links[{i}].peer", f"{link.peer!r} is not a neighbour of {self.node_id}"
            )

    @property
    def address(self) -> str:
        return self.advertise or self.listen
