"""/dev/shm for engines on more than one GPU: NCCL and the engine's worker processes exchange
data through it, and containers get 64 MiB unless told otherwise (--ipc=host, --shm-size)."""

from __future__ import annotations

from .hardware import Hardware
from .units import GiB, gib

MIN_SHM_BYTES = 1 * GiB
SOURCE = ("https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/troubleshooting.html (Docker's default "
          "/dev/shm is too small for NCCL: --shm-size=1g or --ipc=host); "
          "https://docs.vllm.ai/en/latest/deployment/docker.html (--ipc=host or --shm-size for tensor parallel)")


def warning(hw: Hardware, gpus: int) -> str | None:
    """A plan warning when an engine on `gpus` GPUs would find /dev/shm too small."""
    shm = hw.host.shm_bytes
    if gpus <= 1 or shm is None or shm >= MIN_SHM_BYTES:
        return None
    return (f"/dev/shm is {gib(shm)}, too small for {gpus} GPU processes (NCCL needs about {gib(MIN_SHM_BYTES, 0)}): "
            f"run the container with --ipc=host or --shm-size 16g (`qwenplan export compose` and `k8s` do)")
