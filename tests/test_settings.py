"""One definition per setting: field help, the template `fedpeer init` renders from it, round trips."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

from fedpeer_cli.main import app
from typer.testing import CliRunner

from fedpeer import config
from fedpeer.config import (
    AdapterConfig,
    CodecConfig,
    GossipConfig,
    LinkConfig,
    ModelConfig,
    NodeConfig,
    PeerConfig,
    TlsConfig,
    TrainConfig,
    load_node_config,
)
from fedpeer.config.template import WIDTH, config_classes, help_of, render_template

CONFIG_CLASSES: list[type] = [
    c
    for c in vars(config).values()
    if isinstance(c, type) and dataclasses.is_dataclass(c) and c.__module__.startswith(config.__name__ + ".")
]


def _tables() -> dict[str, type]:
    """Table name in the file ("" for the top level) -> the dataclass its keys are fields of."""
    hints = typing.get_type_hints(NodeConfig)
    tables: dict[str, type] = {"": NodeConfig}
    for name, tp in hints.items():
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp
        if isinstance(item, type) and dataclasses.is_dataclass(item):
            tables[name] = item
    return tables


def _documented(text: str) -> dict[str, str]:
    """ "table.key", "key" (top level) or "table" (its header) -> the `# ` lines just above, joined."""
    tables, table = _tables(), ""
    out: dict[str, str] = {}
    comment: list[str] = []
    for line in text.splitlines():
        body = line.removeprefix("# ")
        header = re.fullmatch(r"\[\[?(\w+)\]\]?", body)
        key = re.match(r"(\w+) = ", body)
        if header:
            table = header[1]
            out.setdefault(table, " ".join(comment))
        elif key and key[1] in {f.name for f in dataclasses.fields(tables[table])}:
            out.setdefault(f"{table}.{key[1]}".lstrip("."), " ".join(comment))
        elif line.startswith("# "):
            comment.append(body)
            continue
        comment = []
    return out


def _flags_cfg(base: Path) -> NodeConfig:
    """What `fedpeer init --model org/m --data d.jsonl` writes, loaded from a file in `base`."""
    return NodeConfig(
        node_id="site-a",
        state_dir=str(base / "state" / "site-a"),
        listen="0.0.0.0:50051",
        model=ModelConfig(path="org/m"),
        train=TrainConfig(data=str(base / "d.jsonl")),
        tls=_init_tls(base),
    )


def _init_tls(base: Path | None) -> TlsConfig:
    """The [tls] `fedpeer init` writes without --pki: pki/ beside the config (absolute once loaded)."""
    names = ("pki/ca.pem", "pki/site-a.pem", "pki/site-a.key")
    ca, cert, key = (str(base / n) if base else n for n in names)
    return TlsConfig(ca=ca, cert=cert, key=key)


def test_every_setting_has_help() -> None:
    assert set(config_classes()) == set(CONFIG_CLASSES)  # all reachable from NodeConfig: all rendered
    for cls in CONFIG_CLASSES:
        for f in dataclasses.fields(cls):
            assert help_of(f).strip(), f"{cls.__name__}.{f.name} has no help"


def test_template_shows_every_setting_under_its_help() -> None:
    for cfg in (
        NodeConfig(node_id="a", state_dir="s"),  # empty [[neighbours]] / [[links]]: commented examples
        NodeConfig(
            node_id="a", state_dir="s", neighbours=(PeerConfig("b", "h:1"),), links=(LinkConfig(peer="b"),)
        ),
    ):
        documented = _documented(render_template(cfg))
        for table, cls in _tables().items():
            for f in dataclasses.fields(cls):
                key = f"{table}.{f.name}".lstrip(".")
                if table == "" and f.name in _tables():
                    key = f.name  # a table: its help sits above its header
                assert documented.get(key) == " ".join(help_of(f).split()), key


def test_template_lines_fit_and_start_with_how_to_run() -> None:
    text = render_template(NodeConfig(node_id="a", state_dir="s"), "site.toml")
    assert text.startswith("# fedpeer node config. Run with:  fedpeer node run --config site.toml\n")
    assert text.endswith("\n") and not text.endswith("\n\n")
    too_long = [line for line in text.splitlines() if line.startswith("#") and len(line) > WIDTH]
    assert too_long == []


def test_template_loads_back_to_the_defaults_plus_flags(tmp_path: Path) -> None:
    cfg = NodeConfig(
        node_id="site-a",
        state_dir="state/site-a",
        listen="0.0.0.0:50051",
        model=ModelConfig(path="org/m"),
        train=TrainConfig(data="d.jsonl"),
        tls=_init_tls(None),
    )
    path = tmp_path / "node.toml"
    path.write_text(render_template(cfg, path))
    assert load_node_config(path) == _flags_cfg(tmp_path)


def _every_setting_changed(base: Path) -> NodeConfig:
    return NodeConfig(
        node_id="site-a",
        state_dir=str(base / "state"),
        listen="10.8.0.2:50051",
        advertise="site-a.example.org:50051",
        neighbours=(PeerConfig("site-b", "10.0.0.2:50051"), PeerConfig("site-c", "10.0.0.3:50051")),
        model=ModelConfig(
            path="org/m",
            task="seq-cls",
            labels=("no", "yes"),
            dtype="bfloat16",
            quantize="4bit",
            dropout=False,
        ),
        adapter=AdapterConfig(
            rank=4,
            alpha=8.5,
            dropout=0.1,
            target_modules=("q_proj", "v_proj"),
            last_k_blocks=2,
            train_global_a=True,
            mesh_seed=7,
            use_local=False,
            head="local",
            local_rank=2,
            share="ab",
            fused=False,
        ),
        train=TrainConfig(
            data=str(base / "train.jsonl"),
            eval_data=str(base / "eval.jsonl"),
            eval_fraction=0.2,
            steps_per_round=3,
            batch_size=4,
            lr=1e-3,
            shared_lr=4e-3,
            lr_decay_rounds=6,
            weight_decay=0.01,
            proximal=0.5,
            prior=0.5,
            prior_choices=(0.5, 1.0),
            keep_best="eval_loss",
            max_length=64,
            seed=5,
            class_weights="balanced",
            schedule="alternate",
            frozen_cache_mb=64,
            device="cuda:1",
            precision="bf16",
            grad_accum=2,
            gradient_checkpointing=True,
            compile=True,
        ),
        gossip=GossipConfig(
            rounds=3,
            gamma=0.5,
            round_timeout_s=10.0,
            failure_timeout_s=2.0,
            rpc_timeout_s=5.0,
            join_timeout_s=2.5,
            max_rounds_ahead=3,
            linger_s=0.5,
            weighting="val-loss",
            allow_solo=True,
            robust="clipped",
            clip_radius=0.5,
            byzantine_fraction=0.3,
            norm_bound=10.0,
            dp=True,
            dp_clip_norm=0.05,
            dp_noise_multiplier=1.2,
            dp_epsilon=50.0,
            dp_delta=1e-6,
        ),
        codec=CodecConfig(
            name="pipeline",
            zstd_level=5,
            max_payload_mb=64.0,
            bits=8,
            block=128,
            rank_fraction=0.25,
            methods=("tt",),
            stochastic=True,
            budget_bytes=100_000,
        ),
        tls=TlsConfig(
            ca=str(base / "ca.pem"), cert=str(base / "a.pem"), key=str(base / "a.key"), insecure=True
        ),
        links=(
            LinkConfig(
                peer="site-b", from_round=2, to_round=3, cut=True, delay_ms=20.0, loss=0.1, bandwidth_mbit=5.0
            ),
            LinkConfig(peer="site-c"),
        ),
    )


def _unchanged(value: Any, default: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(value) if getattr(value, f.name) == getattr(default, f.name)]


def test_every_value_round_trips(tmp_path: Path) -> None:
    cfg = _every_setting_changed(tmp_path)
    defaults = NodeConfig(node_id="", state_dir="")
    assert _unchanged(cfg, defaults) == []  # so that a value the template drops would show
    for name in ("model", "adapter", "train", "gossip", "codec", "tls"):
        assert _unchanged(getattr(cfg, name), getattr(defaults, name)) == [], name
    assert _unchanged(cfg.links[0], LinkConfig(peer="")) == []
    path = tmp_path / "node.toml"
    path.write_text(render_template(cfg, path))
    assert load_node_config(path) == cfg


def test_init_writes_the_rendered_template(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    args = ["init", str(path), "--model", "org/m", "--data", "d.jsonl", "-n", "site-b=10.0.0.2:50051"]
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    peers = (PeerConfig("site-b", "10.0.0.2:50051"),)
    written = NodeConfig(
        node_id="site-a",
        state_dir="state/site-a",
        listen="0.0.0.0:50051",
        neighbours=peers,
        model=ModelConfig(path="org/m"),
        train=TrainConfig(data="d.jsonl"),
        tls=_init_tls(None),
    )
    assert path.read_text() == render_template(written, path)
    assert load_node_config(path) == dataclasses.replace(_flags_cfg(tmp_path), neighbours=peers)
