"""The docker runner: one container per node of the node image, on a user-defined bridge network
where peers reach each other by name (`node0:50051`); and a compose file for the same nodes.

The scenario's OUT directory (model, data, node state) is mounted into every container at the
same path, so node configs need no rewriting and metrics land where the runner reads them; a
model or data files outside OUT are mounted read-only the same way. Containers run as the image's
non-root user (uid 10001); as root the runner hands OUT over to that user (chown), otherwise
containers run as the calling user (`--user UID:GID`) so that files stay yours.

Each container is started by a `docker run` child process attached to it (its output is the
node's node.log and its exit status the node's), so ProcessLauncher does the bookkeeping; kills
and teardown go through the engine (`docker kill`, `docker rm -f`, `docker network rm`).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

from fedpeer.config import NodeConfig
from fedpeer.errors import FedpeerError
from fedpeer.scenario.runner import QUIET_ENV, Echo, MeshRunner, ProcessLauncher, write_node_config
from fedpeer.scenario.spec import PreparedScenario, ScenarioSpec, node_names, prepare

DEFAULT_IMAGE = "fedpeer-node:latest"
IMAGE_UID = 10001  # the Dockerfile's fedpeer user
PORT = 50051
_DNS_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def docker_addresses(names: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(what neighbours dial: NAME:50051, where each node binds: 0.0.0.0:50051)."""
    bad = [n for n in names if not _DNS_NAME.match(n)]
    if bad:
        raise FedpeerError(
            f"node name {bad[0]!r} cannot be a container host name: use lower-case letters, digits and '-'"
        )
    return {n: f"{n}:{PORT}" for n in names}, {n: f"0.0.0.0:{PORT}" for n in names}


def check_docker(image: str) -> None:
    """Refuse early, in one line, where containers cannot run."""
    if shutil.which("docker") is None:
        raise FedpeerError("--runner docker needs the docker CLI and engine: see docs/multihost.md")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        raise FedpeerError(
            "no Docker engine answers `docker info`: start dockerd (as root: scripts/docker/ensure_docker.sh)"
        )
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        raise FedpeerError(
            f"no image {image}: build it with scripts/docker/build_node_image.sh (see docs/multihost.md)"
        )


def source_digest() -> str:
    """sha256 of fedpeer's and its CLI's Python sources, as scripts/docker/build_node_image.sh
    labels the image with: a node image built from other sources would run other code."""
    import fedpeer_cli

    import fedpeer

    h = hashlib.sha256()
    for pkg in (fedpeer, fedpeer_cli):
        root = Path(str(pkg.__file__)).parent
        for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
            h.update(path.read_bytes())
    return h.hexdigest()


def image_is_current(image: str) -> bool:
    label = subprocess.run(
        ["docker", "image", "inspect", "-f", '{{index .Config.Labels "fedpeer.source"}}', image],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return label == source_digest()


def prepare_for_docker(
    spec: ScenarioSpec, out_dir: str | Path, image: str = DEFAULT_IMAGE
) -> PreparedScenario:
    check_docker(image)
    return prepare_containers(spec, out_dir)


def prepare_containers(spec: ScenarioSpec, out_dir: str | Path) -> PreparedScenario:
    addresses, listen = docker_addresses(node_names(spec))
    return prepare(spec, out_dir, addresses, listen=listen)


def mounts(prepared: PreparedScenario) -> list[tuple[str, str]]:
    """(host path, mode) mounted at the same path: OUT read-write, inputs outside it read-only."""
    out = prepared.out_dir
    inputs: set[Path] = set()
    for cfg in prepared.nodes:
        model = Path(cfg.model.path)
        if model.is_absolute() and model.exists():
            inputs.add(model)
        inputs.update(Path(p).parent for p in (cfg.train.data, cfg.train.eval_data) if p)
    outside: list[Path] = []
    for p in sorted(p for p in inputs if not p.is_relative_to(out)):  # parents sort before children
        if not any(p.is_relative_to(q) for q in outside):
            outside.append(p)
    return [(str(out), "rw")] + [(str(p), "ro") for p in outside]


def container_user() -> list[str]:
    """`docker run` arguments for the user a node runs as: the image's (as root), else the caller."""
    if os.geteuid() != 0:
        return ["--user", f"{os.getuid()}:{os.getgid()}", "-e", "HOME=/tmp"]
    return []


def hand_over(out_dir: Path) -> None:
    """As root, give OUT to the image's user: nodes write their state there and read the model
    (saved 0600 by safetensors). Without root, containers run as the caller, who owns OUT already."""
    if os.geteuid() != 0:
        return
    for path in [out_dir, *out_dir.rglob("*")]:
        os.chown(path, IMAGE_UID, IMAGE_UID, follow_symlinks=False)


def _name(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:40] or "scenario"


class DockerLauncher(ProcessLauncher):
    def __init__(
        self,
        prepared: PreparedScenario,
        image: str = DEFAULT_IMAGE,
        extra_args: list[str] | None = None,
        echo: Echo = print,
    ) -> None:
        super().__init__(len(prepared.nodes))
        self.prepared = prepared
        self.image = image
        self.extra_args = list(extra_args or [])
        self.echo = echo
        self.network = f"fedpeer-{_name(prepared.spec.name)}-{secrets.token_hex(3)}"
        self.mounts = mounts(prepared)
        self.containers: dict[str, str] = {}
        self.ready = False

    def container(self, node_id: str) -> str:
        return f"{self.network}-{node_id}"

    def setup(self) -> None:
        self.ready = True
        if not image_is_current(self.image):
            self.echo(f"docker: warning: {self.image} was built from other fedpeer sources than these; "
                      "rebuild it (make docker-image) if the nodes fail")  # fmt: skip
        shared = ", ".join(f"{p} ({m})" for p, m in self.mounts)
        self.echo(f"docker: network {self.network} (bridge), image {self.image}, mounting {shared}")
        for cfg in self.prepared.nodes:
            Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
        hand_over(self.prepared.out_dir)
        _docker("network", "create", "--driver", "bridge", self.network)

    def start(self, cfg: NodeConfig) -> None:
        if not self.ready:  # here, not in __init__: MeshRunner tears down whatever start() began
            self.setup()
        name = self.container(cfg.node_id)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)  # a killed one, restarted
        self.containers[cfg.node_id] = name
        super().start(cfg)
        self.echo(f"docker: started {name} ({cfg.node_id}:{PORT} on {self.network})")

    def command(self, cfg: NodeConfig, config_path: Path) -> list[str]:
        """`docker run` attached to the container (its output is the node's log)."""
        threads = max(1, (os.cpu_count() or 1) // self.n_nodes)
        volumes = [arg for path, mode in self.mounts for arg in ("-v", f"{path}:{path}:{mode}")]
        quiet = [arg for key, value in QUIET_ENV.items() for arg in ("-e", f"{key}={value}")]
        return [
            "docker", "run", "--name", self.container(cfg.node_id), "--network", self.network,
            "--network-alias", cfg.node_id, "--hostname", cfg.node_id,
            *volumes, *container_user(), *quiet, "-e", f"OMP_NUM_THREADS={threads}",
            "-e", f"FEDPEER_HEALTH_ADDR=localhost:{PORT}",
            *self.extra_args, self.image, "node", "run", "--config", str(config_path),
        ]  # fmt: skip

    def kill(self, node_id: str) -> None:
        if self.running(node_id):
            subprocess.run(["docker", "kill", "-s", "KILL", self.containers[node_id]], capture_output=True)

    def teardown(self) -> None:
        # SIGTERM to each attached `docker run` is passed on to its node (a clean stop, as on Ctrl-C).
        super().teardown()
        if not self.ready:
            return
        if self.containers:
            subprocess.run(["docker", "rm", "-f", *self.containers.values()], capture_output=True)
        subprocess.run(["docker", "network", "rm", self.network], capture_output=True)
        self.echo(f"docker: removed {len(self.containers)} containers and network {self.network}")
        self.containers, self.ready = {}, False


def _docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise FedpeerError(f"`docker {' '.join(args)}` failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def DockerRunner(  # noqa: N802
    prepared: PreparedScenario,
    image: str = DEFAULT_IMAGE,
    extra_args: list[str] | None = None,
    echo: Echo = print,
) -> MeshRunner:
    """Every node a container of `image` on its own bridge network."""
    return MeshRunner(prepared, DockerLauncher(prepared, image, extra_args, echo), echo)


# ---------------------------------------------------------------------------- docker compose
def render_compose(prepared: PreparedScenario, image: str = DEFAULT_IMAGE) -> str:
    """A docker-compose.yml starting the same nodes (service = node id, so peers resolve by name).

    Written by hand (no YAML library): every value is quoted JSON-style, which YAML reads as is.
    """
    import json

    q = json.dumps
    user = [] if os.geteuid() == 0 else [f"    user: {q(f'{os.getuid()}:{os.getgid()}')}",
                                         '    environment: ["HOME=/tmp"]']  # fmt: skip
    volumes = [f"      - {q(f'{p}:{p}:{m}')}" for p, m in mounts(prepared)]
    lines = [
        f"# {prepared.spec.name}: {len(prepared.nodes)} fedpeer nodes, written by `fedpeer scenario render`.",
        "#   docker compose up        (image: scripts/docker/build_node_image.sh)",
        f"# Metrics and checkpoints: {prepared.out_dir}/<node>/.",
        "name: " + q(_name(prepared.spec.name)),
        "services:",
    ]
    for cfg in prepared.nodes:
        config_path = Path(cfg.state_dir) / "node.toml"
        lines += [
            f"  {cfg.node_id}:",
            f"    image: {q(image)}",
            f"    hostname: {q(cfg.node_id)}",
            f"    command: {q(['node', 'run', '--config', str(config_path)])}",
            *user,
            "    volumes:",
            *volumes,
            '    restart: "no"',
        ]
    return "\n".join(lines) + "\n"


def write_compose(prepared: PreparedScenario, image: str = DEFAULT_IMAGE) -> Path:
    """Node configs (and, as root, state directories the image's user can write) plus the compose file."""
    for cfg in prepared.nodes:
        write_node_config(cfg)
    hand_over(prepared.out_dir)
    path = prepared.out_dir / "docker-compose.yml"
    path.write_text(render_compose(prepared, image))
    return path
