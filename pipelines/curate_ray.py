"""The ``ray`` engine of `fada curate`: one Ray task per source video, on a cluster or a local Ray.

The engine knows nothing of curation (`pipelines.curate` imports it, never the other way): it is
handed the task body (`curate.curate_source`: decode, crop, score, write the clip mp4s and the
source's Parquet part) and runs it with an explicit request of one CPU, so Ray places as many tasks on a node as it
has CPUs; the output folder must be visible to every node (a shared filesystem). The driver
keeps about four tasks per cluster CPU submitted and collects them in completion order, so the
progress bar counts work finished on the cluster and no call grows with the number of sources. A
task whose worker dies (out of memory, a crash in a decoder) is retried once, then its source
becomes a rejected row with the error as the reason; the run goes on.

Without ``ray_address`` a local Ray is started with ``workers`` CPUs and shut down at the end;
with one, the driver connects to that cluster and leaves it running. An address where nothing
listens fails at once, and one that does not answer within ``connect_timeout`` seconds then
(`check_ray_address`, before anything is written): Ray itself retries for minutes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.errors import UsageError
from pipelines.extras import require
from pipelines.rendezvous import unreachable

if TYPE_CHECKING:
    from pipelines.curate import CurateConfig

TASK_CPUS = 1  # CPUs each source task asks Ray for (the scorers run single-threaded)
TASK_RETRIES = 1  # retries of a task whose worker died before its source is recorded as failed
IN_FLIGHT_PER_CPU = 4  # tasks submitted ahead per cluster CPU; the rest wait in the driver's queue
WAIT_BATCH = 64  # finished tasks collected per ray.wait (which returns after at most 1 s anyway)


def _ray():
    return require("ray", "`engine` ray")


def ray_host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray address — ``host:port``, ``ray://host:port`` or ``auto`` (the cluster Ray finds
    on this machine) — or None when there is nothing to probe (no cluster found, a format Ray reads itself)."""
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address(address)
        except Exception:  # noqa: BLE001 - Ray's own lookup; if it fails, ray.init reports it
            return None
        if address is None:
            return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def check_ray_address(config: CurateConfig) -> None:
    """Fail with one line when ``config.ray_address`` answers nothing: at once where the connection is refused (a
    running Ray head listens), after ``config.connect_timeout`` seconds where nothing answers at all."""
    if config.engine != "ray" or config.ray_address is None:
        return
    _ray()  # the missing extra is the first thing to say
    target = ray_host_port(config.ray_address)
    if target is None:
        return
    if (reason := unreachable(*target, config.connect_timeout, retry_refused=False)) is not None:
        raise UsageError(
            f"nothing answers at `ray_address` {config.ray_address} ({reason}; `connect_timeout` "
            f"{config.connect_timeout:g} s); check that the Ray head runs there (`ray start --head` prints its "
            "address) and that the port is open from this machine, or omit `ray_address` for a local Ray."
        )


def start_ray(config: CurateConfig) -> bool:
    """Connect to ``config.ray_address`` or start a local Ray; True when this call started it."""
    ray = _ray()
    if ray.is_initialized():
        return False
    if config.ray_address is None:
        ray.init(num_cpus=config.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        try:
            ray.init(address=config.ray_address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UsageError(
                f"cannot connect to the Ray cluster at `ray_address` {config.ray_address} "
                f"({' '.join(str(exc).split())[:200]}); start it with `ray start --head` or omit `ray_address`."
            ) from exc
    return True


def iter_ray(sources: list[Path], out_dir: Path, config: CurateConfig, done: dict[Path, frozenset[str]],
             metadata: dict, work: Callable, failed: Callable) -> Iterator[tuple[Path, list[dict]]]:  # fmt: skip
    """Yield (source, rows) as the Ray tasks finish.

    ``work(source, out_dir, config, done[source], metadata)`` is the task body (`curate.curate_source`);
    ``failed(source, reason, out_dir, metadata)`` the rows of a source whose worker died (`curate.failed_part`).
    """
    if not sources:
        return
    ray = _ray()
    started_here = start_ray(config)
    try:
        task = ray.remote(num_cpus=TASK_CPUS, max_retries=TASK_RETRIES)(work)
        out_dir = out_dir.absolute()
        queue = list(reversed(sources))
        in_flight_cap = max(8, IN_FLIGHT_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
        pending: dict = {}
        while queue or pending:
            while queue and len(pending) < in_flight_cap:  # a bounded window keeps each wait cheap
                source = queue.pop()  # arguments are small: a config, a few KB, and this source's ids
                pending[task.remote(source, out_dir, config, done.get(source, frozenset()), metadata)] = source
            ready, _ = ray.wait(list(pending), num_returns=min(len(pending), WAIT_BATCH), timeout=1.0)
            for ref in ready:
                source = pending.pop(ref)
                try:
                    rows = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died (twice) on this source
                    rows = failed(source, f"ray worker: {type(exc).__name__}: {str(exc).splitlines()[0]}", out_dir,
                                  metadata)  # fmt: skip
                yield source, rows
    finally:
        if started_here:
            ray.shutdown()
