"""Node configuration: frozen dataclasses, loaded from TOML with errors that name the field.

A node config file has one table per section dataclass (`[model]`, `[adapter]`, `[train]`,
`[gossip]`, `[codec]`, `[tls]`) plus top-level `node_id`, `state_dir`, `listen`, `advertise` and the
`[[neighbours]]` and `[[links]]` arrays. Each setting is defined once, in `sections` or `node`: its
type, default and `help` metadata (why the default is what it is). `fedpeer init` writes them as a
commented file (`template.render_template`); validation stays in each class's `validate`.

Modules: `sections` (the section tables and their checks), `node` (`NodeConfig`, `PeerConfig`,
`LinkConfig`), `convert` (plain data <-> dataclasses), `paths` (path resolution, model path checks),
`load` (reading a file, overrides), `dump` (writing TOML), `template` (the `fedpeer init` file).
Every name below is importable from `fedpeer.config` itself. Importing this package imports no torch.
"""

from __future__ import annotations

from fedpeer.config.convert import convert_value, from_dict, to_dict
from fedpeer.config.dump import dump_toml, toml_value
from fedpeer.config.load import load_node_config, with_overrides
from fedpeer.config.node import LinkConfig, NodeConfig, PeerConfig, TlsConfig
from fedpeer.config.paths import hub_id_shaped, in_hub_cache, missing_model_dir, resolve_paths
from fedpeer.config.sections import (
    CLASS_WEIGHTS,
    HEAD_SCOPES,
    TASKS,
    WEIGHTINGS,
    AdapterConfig,
    CodecConfig,
    GossipConfig,
    ModelConfig,
    TrainConfig,
)
from fedpeer.config.template import render_template

__all__ = [
    "CLASS_WEIGHTS",
    "HEAD_SCOPES",
    "TASKS",
    "WEIGHTINGS",
    "AdapterConfig",
    "CodecConfig",
    "GossipConfig",
    "LinkConfig",
    "ModelConfig",
    "NodeConfig",
    "PeerConfig",
    "TlsConfig",
    "TrainConfig",
    "convert_value",
    "dump_toml",
    "from_dict",
    "hub_id_shaped",
    "in_hub_cache",
    "load_node_config",
    "missing_model_dir",
    "render_template",
    "resolve_paths",
    "to_dict",
    "toml_value",
    "with_overrides",
]
