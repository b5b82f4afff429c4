"""Distributed data-parallel training of ``global_nn`` with PyTorch.

One train function, :func:`train_worker`, runs in every process. It reads the training
windows from an ``.npz`` file, builds the network
(:func:`forecasting.models.global_models.nn.build_module`, the PyTorch twin of the numpy
inference there), wraps it in
``DistributedDataParallel`` when there is more than one process, draws its share of the
windows with a ``DistributedSampler``, minimises the pinball loss, and (rank 0) writes
the final weights and the loss per epoch to an ``.npz`` file: plain arrays, no pickle.

Launchers (:func:`train`), all running that same function:

* one process: called in this process;
* ``local``, N processes: ``torch.multiprocessing.spawn`` on this machine, rendezvous
  over ``env://`` on 127.0.0.1;
* ``spark``, N processes: ``pyspark.ml.torch.distributor.TorchDistributor(num_processes=N,
  local_mode=True, use_gpu=False)`` (torchrun on the driver; ``use_gpu=False`` only means
  Spark assigns no GPU resources: the processes still see the machine's GPUs).

Device and backend: with ``use_gpu`` ``auto`` (or true) and CUDA visible, each process
takes ``cuda:<local_rank>`` and the NCCL backend; otherwise the CPU and Gloo.

Reproducibility: the windows are drawn with the seed, the network is initialised with
``torch.manual_seed(seed)``, the sampler shuffles with the seed and the epoch, each
process runs a fixed number of CPU threads and deterministic algorithms, so a CPU run
gives the same final weights for the same seed and number of processes (not across
different numbers of processes: the batches differ). On CUDA, ``CUBLAS_WORKSPACE_CONFIG``
is set for deterministic cuBLAS; NCCL reductions may still differ in the last bits.

Horovod is not a backend here: it cannot be installed against current PyTorch (it needs
unreleased C++17 fixes), so there is no Horovod code path.

torch is imported inside the functions only: with the deep extra absent this module
still imports, and ``global_nn`` is refused at config validation instead.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from forecasting.errors import ConfigError, ModelError
from forecasting.models.global_models.nn import build_module  # the network, beside its numpy twin

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "spark")


def torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def require_torch() -> None:
    if not torch_available():
        raise ConfigError(
            "models",
            "global_nn",
            "a model whose packages are installed: install the deep extra: pip install -e .[deep]",
        )


def pinball(pred, target, quantiles):
    """Mean pinball loss of ``pred`` (n, H, Q) against ``target`` (n, H)."""
    diff = target.unsqueeze(-1) - pred
    return (quantiles * diff).maximum((quantiles - 1) * diff).mean()


# -- the train function (every process) ----------------------------------------------
def train_worker(
    data_path: str,
    meta: dict[str, Any],
    params: dict[str, Any],
    seed: int,
    out_path: str,
    use_gpu: Any = "auto",
    threads: int | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
) -> str:
    """Train on the windows in ``data_path``; rank 0 writes ``out_path`` and returns it.
    ``on_epoch(done, total)`` is told after each epoch (in-process training only).

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment (set by
    torchrun/TorchDistributor, or by :func:`_spawn_entry`); without them it trains
    alone. ``params``: ``epochs``, ``batch_size`` (global, split over the processes),
    ``lr``.
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    gpu, device = _pick_device(use_gpu, local_rank, world, threads)
    distributed = world > 1
    if distributed:
        dist.init_process_group("nccl" if gpu else "gloo", init_method="env://", rank=rank, world_size=world)
    try:
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=gpu)
        dataset = _load_windows(data_path)
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        batch = max(1, int(params["batch_size"]) // world)
        loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=0)
        model = build_module(meta).to(device)
        net = (
            DistributedDataParallel(model, device_ids=[device.index] if gpu else None)
            if distributed
            else model
        )
        opt = torch.optim.Adam(net.parameters(), lr=float(params["lr"]))
        quantiles = torch.tensor(meta["quantiles"], dtype=torch.float32, device=device)
        losses = []
        for epoch in range(int(params["epochs"])):
            sampler.set_epoch(epoch)
            total = _train_epoch(net, loader, opt, quantiles, device)
            if distributed:
                dist.all_reduce(total)
            losses.append(float(total[0] / total[1]))
            if on_epoch is not None:
                on_epoch(epoch + 1, int(params["epochs"]))
        if rank == 0:
            arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
            with open(out_path, "wb") as fh:
                np.savez(fh, __losses__=np.asarray(losses, dtype=np.float64), **arrays)
        if distributed:
            dist.barrier()
    finally:
        if distributed:
            dist.destroy_process_group()
    return out_path


def _pick_device(use_gpu: Any, local_rank: int, world: int, threads: int | None) -> tuple[bool, Any]:
    """``(gpu, torch.device)``: ``cuda:<local_rank>`` with deterministic cuBLAS when a GPU
    is wanted and visible, else the CPU with ``threads`` threads (default: the cores
    shared by the ``world`` processes)."""
    import torch

    gpu = use_gpu in ("auto", True) and torch.cuda.is_available()
    if gpu:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, int(threads or max(1, (os.cpu_count() or 1) // world))))
    return gpu, device


def _load_windows(data_path: str):
    """The ``x``, ``ctx``, ``y`` arrays of ``data_path`` as a float32 ``TensorDataset``."""
    import torch
    from torch.utils.data import TensorDataset

    with np.load(data_path, allow_pickle=False) as data:
        x, ctx, y = (torch.from_numpy(np.asarray(data[k], dtype=np.float32)) for k in ("x", "ctx", "y"))
    return TensorDataset(x, ctx, y)


def _train_epoch(net, loader, opt, quantiles, device):
    """One pass over this process's batches; returns ``[sum of loss x batch size, windows]``
    (float64) for the caller to reduce over the processes."""
    import torch

    total = torch.zeros(2, dtype=torch.float64, device=device)
    for xb, cb, yb in loader:
        xb, cb, yb = xb.to(device), cb.to(device), yb.to(device)
        opt.zero_grad(set_to_none=True)
        loss = pinball(net(xb, cb), yb, quantiles)
        loss.backward()
        opt.step()
        total += torch.stack(
            [
                loss.detach().double() * len(yb),
                torch.tensor(float(len(yb)), device=device, dtype=torch.float64),
            ]
        )
    return total


def _spawn_entry(local_rank: int, world: int, port: int, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(local_rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(local_rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    train_worker(*args)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- launchers ------------------------------------------------------------------------
@dataclass
class TrainResult:
    """Final weights (PyTorch's parameter names), the loss per epoch, and how it ran."""

    arrays: dict[str, np.ndarray]
    losses: list[float]
    seconds: float
    processes: int
    launcher: str
    device: str
    extra: dict[str, Any] = field(default_factory=dict)


def train(
    samples: dict[str, np.ndarray],
    meta: dict[str, Any],
    params: dict[str, Any],
    seed: int,
    num_processes: int = 1,
    launcher: str = "local",
    use_gpu: Any = "auto",
    threads: int | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train ``global_nn`` on ``samples`` (``x``, ``ctx``, ``y`` from
    :func:`forecasting.models.global_models.nn.build_samples`) with ``num_processes``
    data-parallel processes, launched ``local`` (torch.multiprocessing) or on ``spark``
    (TorchDistributor, local mode). ``on_epoch(done, total)`` is told after each epoch
    when training runs in this process (one process, local).

    Raises:
        ConfigError: torch is not installed, or an unknown launcher.
        ModelError: a training process failed (its error is in the message).
    """
    require_torch()
    if launcher not in LAUNCHERS:
        raise ConfigError("launcher", launcher, f"one of {', '.join(LAUNCHERS)}")
    n = max(1, int(num_processes))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmf-deep-") as tmp:
        data_path = str(Path(tmp) / "windows.npz")
        out_path = str(Path(tmp) / "weights.npz")
        with open(data_path, "wb") as fh:
            np.savez(fh, **{k: np.asarray(samples[k], dtype=np.float32) for k in ("x", "ctx", "y")})
        args = (data_path, meta, params, int(seed), out_path, use_gpu, threads)
        try:
            if launcher == "spark":
                _run_spark(n, args)
            elif n == 1:
                train_worker(*args, on_epoch=on_epoch)
            else:
                import torch.multiprocessing as tmp_mp

                tmp_mp.spawn(_spawn_entry, args=(n, free_port(), args), nprocs=n, join=True)
        except (ConfigError, ModelError):
            raise
        except Exception as exc:
            raise ModelError(f"global_nn training with {n} process(es) ({launcher}) failed: {exc}") from exc
        if not Path(out_path).exists():
            raise ModelError(
                f"global_nn training ({launcher}, {n} process(es)) ended without writing its weights"
            )
        with np.load(out_path, allow_pickle=False) as out:
            arrays = {k: np.array(out[k]) for k in out.files if k != "__losses__"}
            losses = [float(v) for v in out["__losses__"]]
    import torch

    device = "cuda" if use_gpu in ("auto", True) and torch.cuda.is_available() else "cpu"
    return TrainResult(arrays, losses, time.perf_counter() - start, n, launcher, device)


def _run_spark(n: int, args: tuple) -> None:
    """``TorchDistributor(num_processes=n, local_mode=True, use_gpu=False).run(train_worker, ...)``
    on the active Spark session (the Spark engine's)."""
    from pyspark.ml.torch.distributor import TorchDistributor

    TorchDistributor(num_processes=n, local_mode=True, use_gpu=False).run(train_worker, *args)
