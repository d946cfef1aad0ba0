"""User-facing CLI behaviour from an issue report: one-line errors (exit 2, no traceback, nothing
lost), export choices, model paths, overrides, help text, signals, the compose render."""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from fedpeer_cli.common import EXIT_SIGINT, EXIT_SIGTERM, Terminated, friendly_errors
from fedpeer_cli.main import app
from typer.testing import CliRunner

from fedpeer import checkpoint
from fedpeer.config import AdapterConfig, ModelConfig, dump_toml, load_node_config
from fedpeer.datasets.synth import DEMO_LABELS, demo_corpus
from fedpeer.errors import ModelError
from fedpeer.model import build_tiny_model, export_peft, load_dual_lora
from fedpeer.node.state import best_dir

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
CPU = torch.device("cpu")


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *needles: str) -> None:
    """Exit 2, one line on stderr that says it, nothing on stdout, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output


def write_config(dir_: Path, model_path: str | Path, **extra: object) -> Path:
    data = {
        "node_id": "site-a",
        "state_dir": str(dir_ / "state"),
        "model": {"path": str(model_path), "task": "causal-lm"},
        "adapter": {"rank": 4, "alpha": 8.0},
        "train": {"data": "train.jsonl", "device": "cpu"},
        **extra,
    }
    path = dir_ / "node.toml"
    path.write_text(dump_toml(data))
    return path


# --- 1. export -------------------------------------------------------------------------------------
def test_export_to_a_file_is_one_line_and_leaves_it(tmp_path: Path, tiny_llama_dir: Path) -> None:
    config = write_config(tmp_path, tiny_llama_dir)
    target = tmp_path / "adapter"
    target.write_text("mine")
    r = invoke("export", "--config", config, "--out", target)
    assert_one_line_error(r, f"--out {target} is a file")
    assert target.read_text() == "mine"


def test_export_refuses_a_non_empty_directory(tmp_path: Path, tiny_llama_dir: Path) -> None:
    config = write_config(tmp_path, tiny_llama_dir)
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    r = invoke("export", "--config", config, "--out", out)
    assert_one_line_error(r, "is not empty", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    bad = invoke("export", "--config", config, "--out", tmp_path / "new", "--adapter", "mesh")
    assert_one_line_error(bad, "--adapter must be one of both, global, local")


def rank(export_dir: Path) -> int:
    return json.loads((export_dir / "adapter_config.json").read_text())["r"]


def _site_checkpoint(config: Path):
    """A checkpoint as a node writes it, with non-zero B_g, B_l (and so a visible difference)."""
    cfg = load_node_config(config)
    dual = load_dual_lora(cfg.model, cfg.adapter, CPU, local_seed=5)
    torch.manual_seed(0)
    dual.set_global_state({k: torch.randn_like(v) * 0.1 for k, v in dual.global_state().items()})
    dual.set_local_state({k: torch.randn_like(v) * 0.1 for k, v in dual.local_state().items()})
    groups = {"adapter": dual.adapter_state()}
    checkpoint.save(
        cfg.state_dir, checkpoint.flatten(groups), {"round": 3, "fingerprint": dual.fingerprint()}
    )
    return dual


def assert_global_export(out: Path, dual, model_dir: Path) -> None:
    """`out` is an export of `dual`'s global adapter alone, to the last bit."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(out))
    assert rank(out) == 4  # the global adapter alone, not stacked with the local one
    ours = dual.adapter_state()
    lora = {n: p for n, p in loaded.named_parameters() if ".lora_" in n}
    assert lora and len(lora) == len([k for k in ours if ".global." in k])
    for name, p in lora.items():
        key = name.removeprefix("base_model.model.").replace(".default.", ".global.")
        torch.testing.assert_close(p.detach(), ours[key], rtol=0, atol=0)


def test_export_global_only_is_the_node_global_adapter(tmp_path: Path, tiny_llama_dir: Path) -> None:
    config = write_config(tmp_path, tiny_llama_dir)
    dual = _site_checkpoint(config)
    out = tmp_path / "global"
    r = invoke("export", "--config", config, "--out", out, "--adapter", "global")
    assert r.exit_code == 0, r.output
    assert "exported round 3 of site-a (global adapter)" in r.stdout

    assert_global_export(out, dual, tiny_llama_dir)

    # --force writes over the adapter files: now both adapters, rank 8.
    again = invoke("export", "--config", config, "--out", out, "--force")
    assert again.exit_code == 0, again.output
    assert rank(out) == 8 and sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_export_best_is_the_kept_round_and_says_so(tmp_path: Path, tiny_llama_dir: Path) -> None:
    config = write_config(tmp_path, tiny_llama_dir, train={"data": "train.jsonl", "keep_best": "eval_loss"})
    latest = _site_checkpoint(config)
    missing = invoke("export", "--config", config, "--out", tmp_path / "none", "--best")
    assert_one_line_error(missing, "holds no best round", "train.keep_best", "without --best")

    cfg = load_node_config(config)
    best = load_dual_lora(cfg.model, cfg.adapter, CPU, local_seed=5)
    best.set_global_state({k: torch.randn_like(v) * 0.1 for k, v in best.global_state().items()})
    meta = {"round": 2, "criterion": "eval_loss", "value": 1.25, "fingerprint": best.fingerprint()}
    checkpoint.save(best_dir(cfg.state_dir), checkpoint.flatten({"adapter": best.adapter_state()}), meta)
    r = invoke("export", "--config", config, "--out", tmp_path / "best", "--adapter", "global", "--best")
    assert r.exit_code == 0, r.output
    assert "exported round 2 of site-a (global adapter, the best by eval_loss = 1.2500)" in r.stdout
    assert_global_export(tmp_path / "best", best, tiny_llama_dir)
    plain = invoke("export", "--config", config, "--out", tmp_path / "latest", "--adapter", "global")
    assert "exported round 3 of site-a (global adapter)" in plain.stdout
    assert_global_export(tmp_path / "latest", latest, tiny_llama_dir)


def test_global_only_export_refuses_a_private_head(tmp_path: Path, tiny_bert_cls_dir: Path) -> None:
    dual = load_dual_lora(
        ModelConfig(path=str(tiny_bert_cls_dir), task="seq-cls", labels=DEMO_LABELS),
        AdapterConfig(rank=4, head="local"),
        CPU,
        local_seed=0,
    )
    with pytest.raises(ModelError, match="head is private"):
        export_peft(dual, tmp_path / "x", adapters="global")
    assert not (tmp_path / "x").exists()
    assert (export_peft(dual, tmp_path / "y", adapters="local") / "adapter_model.safetensors").exists()


# --- 2. model paths ----------------------------------------------------------------------------------
@pytest.mark.parametrize("model_path", ["models/base", "./base", "../nowhere/base", "a/b/c", "gpt-nothing"])
def test_missing_model_dir_is_one_line_at_once(tmp_path: Path, model_path: str) -> None:
    (tmp_path / "models").mkdir()  # models/ is here, models/base is not: a local path, not a hub id
    config = write_config(tmp_path, model_path)
    t0 = time.monotonic()
    r = invoke("node", "run", "--config", config)
    assert time.monotonic() - t0 < 10  # no hub retries
    assert_one_line_error(r, f"no such directory: {(tmp_path / model_path).resolve()}")


def test_hub_id_not_in_cache_offline_is_refused_at_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(ModelError, match="no model 'nobody-here/base' in the Hugging Face cache") as err:
        load_dual_lora(ModelConfig(path="nobody-here/base"), AdapterConfig(), CPU, local_seed=0)
    assert time.monotonic() - t0 < 10
    assert "\n" not in str(err.value)
    # A hub-id-shaped name passes the config check (it may be downloaded when online).
    assert load_node_config(write_config(tmp_path, "nobody-here/base")).model.path == "nobody-here/base"


def test_ids_in_the_hub_cache_pass(tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    from fedpeer.config import missing_model_dir

    for repo in ("gpt2", "org/cached"):  # a legacy bare id, an org/name id
        snapshot = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc"
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text("{}")
        (snapshot.parent.parent / "refs").mkdir()
        (snapshot.parent.parent / "refs" / "main").write_text("abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "org").mkdir()  # even with a local org/ folder, a cached id is an id
    assert missing_model_dir("gpt2", tmp_path) is None
    assert missing_model_dir("gpt3", tmp_path) == tmp_path / "gpt3"
    assert missing_model_dir("org/cached", tmp_path) is None


# --- 3. overrides ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--rounds", "0"], "gossip.rounds must be >= 1 (command line: --rounds 0)"),
        (["--rounds", "-1"], "gossip.rounds must be >= 1"),
        (["--device", "cuda 1"], "train.device must be auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_overrides_are_validated_like_the_file(tmp_path: Path, flags: list[str], needle: str) -> None:
    config = write_config(tmp_path, tmp_path)
    assert_one_line_error(invoke("node", "run", "--config", config, *flags), needle)


@pytest.fixture
def keep_sigterm_handler():
    """`node run` installs its SIGTERM handler in this (pytest's) process: put pytest's back."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def test_overrides_reach_the_node(tmp_path: Path, monkeypatch, keep_sigterm_handler) -> None:
    import fedpeer.node

    seen = []

    class FakeNode:
        def __init__(self, cfg, transport) -> None:
            seen.append(cfg)

        def run(self) -> None:
            pass

    monkeypatch.setattr(fedpeer.node, "build_node", FakeNode)
    config = write_config(tmp_path, tmp_path, tls={"insecure": True})
    r = invoke("node", "run", "--config", config, "--rounds", "3", "--device", "cpu", "--allow-solo")
    assert r.exit_code == 0, r.output
    (cfg,) = seen
    assert (cfg.gossip.rounds, cfg.train.device, cfg.gossip.allow_solo) == (3, "cpu", True)
    invoke("node", "run", "--config", config)
    assert seen[1].gossip.allow_solo is False and seen[1].gossip.rounds == 10


def test_missing_config_is_reported_before_torch_is_imported(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom fedpeer_cli.main import app\n"
        "try:\n    app(['node', 'run', '--config', 'missing.toml'])\n"
        "except SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.stderr.splitlines() == [
        "error: missing.toml: no such config file (write one with `fedpeer init missing.toml`)",
        "exit 2 False",
    ]


# --- 4. labels vs the checkpoint's head ---------------------------------------------------------------
def test_labels_that_do_not_fit_the_head_are_said(tmp_path: Path, caplog) -> None:
    path = build_tiny_model(
        tmp_path / "bert2", arch="bert", task="seq-cls", corpus=demo_corpus(), labels=("no", "yes")
    )
    with caplog.at_level(logging.WARNING, logger="fedpeer"):
        load_dual_lora(
            ModelConfig(path=str(path), task="seq-cls", labels=("a", "b", "c")), AdapterConfig(), CPU, 0
        )
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("fedpeer")]
    assert ours == [
        "model.labels has 3 names but the checkpoint's head has 2 outputs: the head is re-initialised "
        "for 3 labels (what it learned is not used)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedpeer"):
        load_dual_lora(
            ModelConfig(path=str(path), task="seq-cls", labels=("x", "y")), AdapterConfig(), CPU, 0
        )
    assert not [r for r in caplog.records if r.name.startswith("fedpeer")]


# --- 5. render ---------------------------------------------------------------------------------------
TINY_SCENARIO = """
name = "compose-test"
nodes = 2
topology = "ring"
[tiny_model]
hidden_size = 16
num_layers = 1
num_heads = 2
intermediate_size = 32
[data]
n_train = 10
n_eval = 4
[train]
device = "cpu"
"""


def test_render_without_out_prints_the_compose_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(TINY_SCENARIO)
    r = invoke("scenario", "render", "s.toml", "--format", "compose")
    assert r.exit_code == 0, r.output
    out = tmp_path / "runs" / "compose-test-compose"
    assert r.stdout == (out / "docker-compose.yml").read_text()
    assert "services:" in r.stdout and "node0:" in r.stdout and "preparing" not in r.stdout
    assert f"under {Path('runs') / 'compose-test-compose'}" in r.stderr
    assert (out / "node0" / "node.toml").is_file() and (out / "node1" / "node.toml").is_file()

    with_out = invoke("scenario", "render", "s.toml", "--out", tmp_path / "c")
    assert with_out.exit_code == 0 and with_out.stdout == ""
    assert (tmp_path / "c" / "docker-compose.yml").is_file()


# --- 6. help, version, init ----------------------------------------------------------------------------
COMMANDS = [[], ["init"], ["status"], ["export"], ["report"], ["node"], ["node", "run"], ["scenario"],
            ["scenario", "run"], ["scenario", "render"]]  # fmt: skip


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "fedpeer")
def test_help_is_literal_with_plain_metavars(cmd: list[str]) -> None:
    r = invoke(*cmd, "--help")
    assert r.exit_code == 0, r.output
    for odd in ("<bool>", "<str>", "<path>", "<int>", "<float>", "<list", "{"):
        assert odd not in r.output, (odd, r.output)
    if cmd == ["scenario", "run"]:
        assert "([[faults]]: kill/restart" in r.output and "<node>/metrics.jsonl" in r.output
        assert "Usage: fedpeer scenario run [OPTIONS] SCENARIO" in r.output
        assert "--set KEY=VALUE" in r.output


def test_version() -> None:
    from importlib.metadata import version

    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout == f"fedpeer {version('fedpeer')}\n"


def test_init_mentions_only_what_is_left_to_edit(tmp_path: Path) -> None:
    given = invoke("init", tmp_path / "a.toml", "--model", "org/m", "--data", "d.jsonl", "-n", "b=h:1")
    assert given.exit_code == 0
    assert "check it, then run: fedpeer node run" in given.stdout
    bare = invoke("init", tmp_path / "b.toml", "--model", "org/m", "--listen", "10.8.0.2:50051")
    assert "edit [train] data and the neighbours, then:" in bare.stdout
    # Without --pki, one note says where the TLS files must come from, and nothing else is said.
    assert bare.stderr.startswith("note: [tls] expects") and bare.stderr.count("\n") == 1
    cls = invoke("init", tmp_path / "c.toml", "--task", "seq-cls")
    assert "edit [model] path, [model] labels, [train] data and the neighbours, then:" in cls.stdout
    assert "mutual TLS" in (tmp_path / "c.toml").read_text()


# --- 7. signals and --log-file ------------------------------------------------------------------------
def test_interrupt_and_terminate_exit_codes() -> None:
    import typer

    for exc, code in ((KeyboardInterrupt, EXIT_SIGINT), (Terminated, EXIT_SIGTERM)):

        @friendly_errors
        def stopped(exc: type[BaseException] = exc) -> None:
            raise exc

        with pytest.raises(typer.Exit) as caught:
            stopped()
        assert caught.value.exit_code == code
    assert (EXIT_SIGINT, EXIT_SIGTERM) == (130, 143)


@pytest.mark.slow
def test_sigterm_exits_143_and_logs_to_the_file(tmp_path: Path) -> None:
    from fedpeer.config import to_dict
    from fedpeer.scenario.runner import free_loopback_addresses
    from fedpeer.scenario.spec import node_names, prepare
    from tests.meshutil import tiny_spec

    spec = tiny_spec(nodes=2, topology="complete", gossip={"join_timeout_s": 120.0})
    cfg = prepare(spec, tmp_path, free_loopback_addresses(node_names(spec))).nodes[0]
    config = tmp_path / "node0.toml"
    config.write_text(dump_toml(to_dict(cfg)))
    log_file = tmp_path / "logs" / "node0.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedpeer_cli",
            "node",
            "run",
            "--config",
            str(config),
            "--log-file",
            str(log_file),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in proc.stderr or ():
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        # "listening on", then node0 waits for node1 (never started) in its join.
        while not any("waiting for node1" in line for line in seen):
            seen.append(lines.get(timeout=120))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == EXIT_SIGTERM
    finally:
        proc.kill()
    reader.join(timeout=10)  # the rest of stderr, up to EOF
    while not lines.empty():
        seen.append(lines.get())
    assert "terminated\n" in seen and not any("Traceback" in line for line in seen)
    logged = log_file.read_text()
    assert "node0 listening on" in logged and "WARNING terminated (SIGTERM)" in logged
