"""`fedpeer scenario run SPEC --runner ray`: the simulation sharded over Ray actors.

Each actor is a `NodeBlock`: one base model and a contiguous block of nodes (their adapters, trainers,
public copies). A round is two calls on every actor at once: `step` (train, encode) returns the
block's rows through Ray's object store; this process stacks them and mixes all nodes with the same
code as the sim runner (`SimMesh`), then `finish` sends each block its mixed rows and the actors
evaluate. The numbers are the sim runner's (tests/test_sim_ray.py: to 1e-6); only where the per-node
work runs differs.

Ray is an optional extra (`pip install 'fedpeer[ray]'`). Without `sim.ray_address` (or RAY_ADDRESS)
a Ray is started on this machine for the run; with it, the run joins a cluster started with
`ray start --head` (docs/simulation.md).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fedpeer.config import NodeConfig
from fedpeer.errors import ConfigError, FedpeerError
from fedpeer.scenario.spec import ScenarioSpec
from fedpeer.sim.block import NodeBlock
from fedpeer.sim.mesh import BlocksFactory, Echo

__all__ = ["RAY_MISSING", "RayBlocks", "import_ray", "ray_blocks", "run_scenario", "start_local_ray"]

RAY_MISSING = "--runner ray needs Ray, an optional extra: pip install 'fedpeer[ray]'"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


class _ActorBlock(NodeBlock):
    """A block in a Ray actor: rows that arrive through the object store are copied before the block
    writes into them (a deserialized tensor may share a read-only buffer)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from fedpeer.scenario.runner import quiet_progress_bars

        quiet_progress_bars()  # Ray prints an actor's output in the driver's terminal
        super().__init__(*args, **kwargs)

    def set_x(self, x: torch.Tensor) -> None:
        self.x = x.clone()


def _own(value: Any) -> Any:
    """A tensor argument as its own storage: a view pickles its whole base (all nodes' rows)."""
    return value.clone() if isinstance(value, torch.Tensor) else value


class RayBlocks:
    """`actors` blocks of about equal size, one per Ray actor (one CPU each)."""

    runner = "ray"

    def __init__(self, configs: Sequence[NodeConfig], mode: str, actors: int, echo: Echo) -> None:
        self.ray = import_ray()
        n = len(configs)
        k = max(1, min(actors, n))
        bounds = [round(b * n / k) for b in range(k + 1)]
        self.ranges = [(bounds[b], bounds[b + 1]) for b in range(k)]
        self.where = f"on {k} Ray actors"
        echo(f"starting {k} Ray actors, {n // k}-{-(-n // k)} nodes and one base model each")
        actor = self.ray.remote(num_cpus=1)(_ActorBlock)
        first = configs[0]
        self.actors = [actor.remote(list(configs[lo:hi]), lo, mode, first) for lo, hi in self.ranges]

    def call(self, method: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        pairs = zip(self.actors, args, strict=True)
        refs = [getattr(a, method).remote(*[_own(v) for v in arg]) for a, arg in pairs]
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, FedpeerError):
                raise cause from None  # fedpeer's own error in an actor: its one line
            raise FedpeerError(
                f"a Ray actor failed in {method}: {type(cause).__name__}: {cause}; on a cluster every "
                "machine needs the driver's fedpeer and its --out at the same path (docs/simulation.md)"
            ) from exc
        except self.ray.exceptions.RayActorError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FedpeerError(
                f"a Ray actor died in {method} ({first}): out of memory? see `ray status` and the logs "
                "under /tmp/ray/session_latest/logs"
            ) from exc

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []


def _startup_logs(lines: int = 6) -> str:
    """The last lines of the logs that say why a local Ray did not come up (raylet, GCS, agents)."""
    logs = Path(tempfile.gettempdir()) / "ray" / "session_latest" / "logs"
    parts = []
    for name in (
        "raylet.err",
        "raylet.out",
        "gcs_server.err",
        "dashboard_agent.err",
        "runtime_env_agent.err",
    ):
        try:
            tail = [ln for ln in (logs / name).read_text(errors="replace").splitlines() if ln.strip()][
                -lines:
            ]
        except OSError:
            continue
        if tail:
            parts.append(f"--- {name}\n" + "\n".join(tail))
    return "\n".join(parts) or f"(no logs under {logs})"


def start_local_ray(cpus: int, echo: Echo, **options: Any) -> None:
    """Start a Ray on this machine (loopback only, no dashboard), trying twice: the first start on a
    cold, busy machine can outlast Ray's fixed 30 s wait for its node (seen in this project's CI and
    on its 2-core machines, where the second try came up; Ray's own fixed agent timeouts are
    ray-project/ray#65983). A second failure is one FedpeerError with the tail of Ray's logs."""
    ray = import_ray()
    for attempt in (1, 2):
        try:
            ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **options)
            return
        except Exception as exc:  # Ray raises bare Exceptions on a failed start
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            ray.shutdown()
            if attempt == 2:
                raise FedpeerError(
                    f"Ray did not start on this machine twice ({first}); what its logs say:\n"
                    f"{_startup_logs()}"
                ) from exc
            echo(f"Ray did not start ({first}); trying once more")


def ray_blocks(actors: int, echo: Echo) -> BlocksFactory:
    """`SimMesh(..., blocks=ray_blocks(4, print))`: the mesh's nodes on 4 actors of the Ray this
    process is connected to (`connect`)."""
    return lambda configs, mode: RayBlocks(configs, mode, actors, echo)


def connect(address: str, actors: int, echo: Echo) -> tuple[int, bool]:
    """Join the Ray cluster at `address` (or RAY_ADDRESS), else start one here; a Ray this process
    already started (tests) is used as it is. The number of actors to start and whether this call
    started Ray (and so shuts it down)."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS", "")
        if address:
            echo(f"joining the Ray cluster at {address}")
            ray.init(address=address, log_to_driver=True)
        else:
            cpus = actors or os.cpu_count() or 1
            echo(f"starting a Ray on this machine with {cpus} CPUs (sim.ray_address joins a cluster)")
            start_local_ray(cpus, echo)
        started = True
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if actors > cpus:
        if started:
            ray.shutdown()
        raise ConfigError(
            f"sim.actors = {actors} but the Ray cluster has {cpus} CPUs (an actor takes one): set "
            f"sim.actors <= {cpus}, or add machines with `ray start --address HEAD:6379`"
        )
    return actors or cpus, started


def run_scenario(spec: ScenarioSpec, out_dir: str | Path, echo: Echo = print) -> list[dict[str, Any]]:
    """As the sim runner's `run_scenario`, the nodes' per-node work on Ray actors."""
    from fedpeer.sim.runner import prepare_for_sim, refuse_earlier_run, run_prepared

    ray = import_ray()  # before any work: say what to install
    refuse_earlier_run(spec, Path(out_dir))
    prepared = prepare_for_sim(spec, out_dir, echo=echo)
    actors, started = connect(spec.sim.ray_address, spec.sim.actors, echo)
    made: list[RayBlocks] = []

    def blocks(configs: Sequence[NodeConfig], mode: str) -> RayBlocks:
        made.append(RayBlocks(configs, mode, actors, echo))
        return made[-1]

    try:
        return run_prepared(prepared, echo, blocks=blocks)[0]
    finally:
        for b in made:
            b.close()
        if started:
            ray.shutdown()
