"""Whether the other machines a run joins answer at all — a launcher's rendezvous, a Ray cluster — so that
a wrong address fails in seconds rather than after a library's own long wait.

Imports neither torch nor the model code: `fada train-teacher` and `fada distill` probe the rendezvous
before their heavy imports (about 17 s of start-up on a loaded 2-core CPU), so a dead address fails
within the connect timeout of the command's start.
"""

from __future__ import annotations

import os
import socket
import time

from pipelines.errors import DeviceError

CONNECT_TIMEOUT_S = 20.0  # default seconds to reach a launcher's rendezvous (`TrainConfig.connect_timeout`)


def unreachable(host: str, port: int, timeout_s: float, retry_refused: bool = True) -> str | None:
    """Try to open a TCP connection to ``host:port`` until one succeeds or ``timeout_s`` seconds pass.

    Returns None once something answers, else why nothing did (connection refused, no route, timed
    out). ``retry_refused``: a refused connection is tried again every 0.5 s (the other side may still
    be starting); otherwise it is the answer at once — nothing listens there.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                return None
        except OSError as exc:  # refused, unreachable, unknown host, or no answer in time
            refused = isinstance(exc, ConnectionRefusedError)
            if (refused and not retry_refused) or time.monotonic() + 0.5 >= deadline:
                return exc.strerror or str(exc) or type(exc).__name__
            time.sleep(0.5)


def agent_store() -> bool:
    """Whether torchrun's agent (``accelerate launch``'s launcher) hosts the rendezvous store: it is up before
    any process of the run starts."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"


def launcher_rendezvous() -> tuple[str, int] | None:
    """The (host, port) this process must reach to join a multi-process run, from the launcher's
    environment (``WORLD_SIZE`` > 1, ``MASTER_ADDR``, ``MASTER_PORT``); None when it has nothing to reach:
    a single process, or the process of rank 0 that hosts the store itself (not under torchrun's agent)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
        return None
    if int(os.environ.get("RANK", "0")) == 0 and not agent_store():
        return None
    return os.environ["MASTER_ADDR"], int(os.environ.get("MASTER_PORT", "29500"))


def check_rendezvous(timeout_s: float) -> None:
    """Fail with one line when the launcher's rendezvous answers nothing: within ``timeout_s`` seconds, or at the
    first refused connection where torchrun's agent hosts the store (it is up before the processes start; when
    rank 0 hosts it, a refusal is retried — rank 0 may still be starting).

    torch waits for the store as long as the collective timeout (an hour by default, for the barriers
    after a latent-cache fill or a large checkpoint save); a wrong address should not cost that hour.
    """
    target = launcher_rendezvous()
    if target is None:
        return
    host, port = target
    if (reason := unreachable(host, port, timeout_s, retry_refused=not agent_store())) is not None:
        raise DeviceError(
            f"cannot reach the rendezvous of the launcher at {host}:{port} (MASTER_ADDR:MASTER_PORT) within "
            f"{timeout_s:g} s ({reason}); check that the main node is up, that --main_process_ip and "
            "--main_process_port name it and that the port is open from here, or raise `connect_timeout`."
        )
