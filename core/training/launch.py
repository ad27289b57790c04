"""`accelerate launch` for a job that trains on several GPUs, with the runner's pause and
cancel requests passed on.

The launcher (torch.distributed.run's agent, inside accelerate) starts every rank in a
session of its own, so the runner's signals to its child's process group reach the
launcher only. SIGUSR1/SIGUSR2 (pause/cancel) would kill it by default; here they are
written to a stop file the ranks poll each optimizer step instead (TUNEFORGE_STOP_FILE)
-- not forwarded as signals, which could interrupt a rank inside a collective -- and the
ranks agree on rank 0's reading (see `distributed.agreed_stop`). SIGTERM is the agent's
own business: it stops the ranks and exits. A SIGKILLed launcher takes its ranks along:
worker.child asks the kernel for that (PR_SET_PDEATHSIG).

    python -m core.training.launch N -m worker.child ...

`--multi_gpu` selects accelerate's torch.distributed.run launcher, the one that starts N
ranks; on a machine without CUDA those ranks fall back to the gloo backend on the CPU,
which is how the tests run this path (`--cpu` would start a single process).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile

STOP_FILE_ENV = "TUNEFORGE_STOP_FILE"
REQUESTS = {signal.SIGUSR1: "pause", signal.SIGUSR2: "cancel"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_args(processes: int) -> list[str]:
    """Every choice as a flag, so no accelerate config file on the host changes the run."""
    return ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]


def main(argv: list[str]) -> None:
    fd, path = tempfile.mkstemp(prefix=".stop-", dir=".")  # the attempt dir: it goes with it
    os.close(fd)
    path = os.path.abspath(path)
    os.environ[STOP_FILE_ENV] = path  # the ranks inherit the launcher's environment

    def request(sig, _frame) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(REQUESTS[sig] + "\n")

    for sig in REQUESTS:
        signal.signal(sig, request)
    from accelerate.commands.launch import main as accelerate_launch

    sys.argv = ["accelerate launch", *accelerate_args(int(argv[0])), *argv[1:]]
    try:
        accelerate_launch()
    finally:
        os.unlink(path)


if __name__ == "__main__":
    main(sys.argv[1:])
