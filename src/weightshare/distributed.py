"""Run a function in several processes that form a :mod:`torch.distributed` group.

:func:`run` starts ``nprocs`` processes on this machine, joins them into one process
group (the gloo backend, on CPU), calls the same function in each and returns what
each rank returned, in rank order. When a rank raises, the others are stopped
within seconds and :class:`RankFailedError` names the rank and carries its
traceback; a timeout stops them all. Started
under ``torchrun`` instead, :func:`run` calls the function in the current process,
in torchrun's group (NCCL and one GPU per process when there are enough GPUs), so
one script serves both. :func:`rank_spread` checks that the ranks hold equal
weights; :func:`all_reduce_tied_grads` sums the gradients of a weight that several
ranks hold a copy of (a tied embedding split across pipeline stages).

Examples
--------
>>> import weightshare.distributed as wsd
>>> def whoami():
...     import torch.distributed as dist
...     return dist.get_rank(), dist.get_world_size()
>>> wsd.run(whoami, nprocs=2)
[(0, 2), (1, 2)]
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import nn
from torch.multiprocessing.spawn import (
    ProcessContext,
    ProcessException,
    start_processes,
)

__all__ = ["RankFailedError", "all_reduce_tied_grads", "device", "rank_spread", "run"]

T = TypeVar("T")

#: Seconds the other ranks may take to end by themselves after a first rank has
#: failed, before they are stopped (SIGTERM, then SIGKILL after as long again).
FAILURE_GRACE = 0.5


class RankFailedError(RuntimeError):
    """A rank of :func:`run` raised, or died, before returning its result.

    The other ranks have been stopped when it is raised.

    Attributes
    ----------
    rank : int
        The rank that failed: one whose process died, if any (the others' errors
        then follow from it), else the one that raised first.
    error : str
        Its exception as ``"Type: message"``, or how the process ended.
    details : str
        The rank's traceback; empty when its process ended without one (what the
        rank printed went to this process's standard output and error).

    Examples
    --------
    >>> import weightshare.distributed as wsd
    >>> def fails_on_rank_1():
    ...     import torch.distributed as dist
    ...     if dist.get_rank() == 1:
    ...         raise ValueError("no data for rank 1")
    ...     dist.barrier()  # rank 0 waits here until it is stopped
    >>> try:
    ...     wsd.run(fails_on_rank_1, nprocs=2)
    ... except wsd.RankFailedError as err:
    ...     print(err.rank, err.error)
    1 ValueError: no data for rank 1
    """

    __module__ = "weightshare.distributed"

    def __init__(self, rank: int, error: str, details: str) -> None:
        message = f"rank {rank} failed: {error}; the other ranks were stopped"
        if details:
            message += f"\n\n--- rank {rank} ---\n{details.rstrip()}"
        super().__init__(message)
        self.rank = rank
        self.error = error
        self.details = details

    def __reduce__(self) -> tuple[type[RankFailedError], tuple[int, str, str]]:
        return (type(self), (self.rank, self.error, self.details))


def run(
    worker: Callable[..., T],
    nprocs: int = 2,
    *,
    args: Sequence[Any] = (),
    timeout: float = 60.0,
) -> list[T]:
    """Call ``worker(*args)`` in ``nprocs`` processes that form one process group.

    The processes are forked from this one by
    ``torch.multiprocessing.start_processes``, so ``worker`` may be any
    function, including one defined in a notebook or a script's ``__main__``, and
    the ranks inherit the modules imported so far. Each rank gets the environment
    variables ``torchrun`` would set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT`` on a free port chosen now) and
    ``OMP_NUM_THREADS=1``, uses one thread, and joins the gloo process group before
    ``worker`` is called; after it returns, the ranks wait for each other and
    leave the group, unless ``worker`` left it itself
    (``dist.destroy_process_group()``, as scripts written for ``torchrun`` end).
    What a rank prints goes to this process's standard output and error. The
    ranks end when this process ends, also while they wait inside a collective.
    Before forking, this imports
    ``torch._dynamo`` (1 to 2 s, once per process), which
    :class:`~torch.nn.parallel.DistributedDataParallel` imports on construction:
    imported here, it is shared by the ranks instead of imported by each.

    When the environment already names this process's rank (``RANK`` and
    ``WORLD_SIZE`` are set, as under ``torchrun``), nothing is forked: the process
    group is initialized if needed (NCCL, with ``cuda:LOCAL_RANK`` as the current
    device, when each local rank has a GPU; gloo otherwise), ``worker`` runs here and
    the ranks' results are gathered on every rank. ``nprocs`` and ``timeout`` are
    then the launcher's business and are not used.

    Parameters
    ----------
    worker : ``Callable[..., T]``
        Called as ``worker(*args)`` on every rank. Its return value must be
        picklable (numbers, strings, lists, dicts, tensors).
    nprocs : int, default 2
        How many processes (ranks) to start.
    args : ``Sequence``, default ()
        Positional arguments for ``worker``, the same on every rank.
    timeout : float, default 60.0
        Seconds the whole run may take; also the process group's timeout.

    Returns
    -------
    list
        What ``worker`` returned on rank 0, 1, ... ``nprocs - 1``.

    Raises
    ------
    RankFailedError
        If a rank raises, or its process ends before returning a result; the other
        ranks are stopped first.
    TimeoutError
        If the ranks have not all returned within ``timeout`` seconds; its message
        names the ranks that had not. All are stopped first.
    ValueError
        If ``nprocs`` is less than 1 or ``timeout`` is not positive.

    Examples
    --------
    >>> import torch
    >>> import weightshare.distributed as wsd
    >>> def total(x):
    ...     import torch.distributed as dist
    ...     t = torch.tensor([x * (dist.get_rank() + 1)])
    ...     dist.all_reduce(t)  # sums over the ranks
    ...     return t.item()
    >>> wsd.run(total, nprocs=3, args=(10,))
    [60, 60, 60]
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return _run_here(worker, args)
    if nprocs < 1:
        raise ValueError(f"nprocs must be at least 1, got {nprocs}")
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    return _run_forked(worker, nprocs, args, timeout)


def device() -> torch.device:
    """The device this rank computes on: its GPU under NCCL, else the CPU.

    Examples
    --------
    >>> import weightshare.distributed as wsd
    >>> wsd.device()  # no process group: the CPU
    device(type='cpu')
    >>> def where():
    ...     return str(wsd.device())
    >>> wsd.run(where, nprocs=2)  # the gloo backend: the CPU
    ['cpu', 'cpu']
    """
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())  # pragma: no cover
    return torch.device("cpu")


def rank_spread(
    tensors: nn.Module | Iterable[torch.Tensor], group: Any = None
) -> float:
    """The largest difference between ranks of any element of ``tensors``.

    ``0.0`` means every rank of ``group`` holds exactly the same values. Each rank
    passes its own tensors (or model, whose :meth:`~torch.nn.Module.parameters`
    list a tied weight once), with the same shapes in the same order; the values are
    compared in float64 with two all-reduces (the elementwise max and min).

    Parameters
    ----------
    tensors : :class:`torch.nn.Module` or iterable of :class:`torch.Tensor`
        A model, or the tensors to compare.
    group : ``ProcessGroup``, optional
        The ranks to compare; the default group when None.

    Returns
    -------
    float
        ``max over elements of (max over ranks - min over ranks)``; the same on
        every rank of ``group``.

    Raises
    ------
    TypeError
        If a tensor is a DTensor: each rank holds a different shard of it, so
        compare ``.full_tensor()`` instead.

    Examples
    --------
    >>> import torch
    >>> import weightshare.distributed as wsd
    >>> def spreads():
    ...     import torch.distributed as dist
    ...     same = torch.ones(3)
    ...     differs = torch.tensor([0.0, 0.5 * dist.get_rank()])
    ...     return wsd.rank_spread([same]), wsd.rank_spread([same, differs])
    >>> wsd.run(spreads, nprocs=2)
    [(0.0, 0.5), (0.0, 0.5)]
    """
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    values = list(tensors.parameters() if isinstance(tensors, nn.Module) else tensors)
    for index, tensor in enumerate(values):
        if isinstance(tensor, DTensor):
            raise TypeError(
                f"tensors[{index}] is a DTensor, sharded differently on each rank; "
                "compare tensor.full_tensor() (or compare values on one rank)"
            )
    if not values:
        return 0.0
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in values])
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
    dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
    return float((high - low).max()) if flat.numel() else 0.0


def all_reduce_tied_grads(params: Iterable[torch.Tensor], group: Any = None) -> None:
    """Sum, over the ranks of ``group``, the gradients of a weight each rank copies.

    When pipeline stages on different ranks each hold a copy of one tied weight
    (the input embedding on the first stage, the output projection on the last),
    each copy's ``.grad`` has only its own stage's part of the gradient. After this
    call every copy's ``.grad`` is the total, as the single tied parameter would
    have, so equal copies take equal optimizer steps and stay equal. A copy without
    a gradient counts as zeros. Every rank of ``group`` calls it with its copies in
    the same order.

    Parameters
    ----------
    params : iterable of :class:`torch.Tensor`
        This rank's copies of the weights tied across ranks.
    group : ``ProcessGroup``, optional
        The ranks that hold copies (e.g. ``torch.distributed.new_group([0, last])``);
        the default group when None.

    Examples
    --------
    >>> import torch
    >>> import weightshare.distributed as wsd
    >>> def summed():
    ...     import torch.distributed as dist
    ...     copy = torch.nn.Parameter(torch.zeros(2))
    ...     (copy * (dist.get_rank() + 1)).sum().backward()  # grads 1 and 2
    ...     wsd.all_reduce_tied_grads([copy])
    ...     return copy.grad.tolist()
    >>> wsd.run(summed, nprocs=2)
    [[3.0, 3.0], [3.0, 3.0]]
    """
    import torch.distributed as dist

    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM, group=group)


# -- under torchrun ------------------------------------------------------------------


def _backend(local_world_size: int) -> str:
    """NCCL when every local rank can have its own GPU, else gloo."""
    if torch.cuda.is_available() and torch.cuda.device_count() >= local_world_size:
        return "nccl"  # pragma: no cover - needs as many GPUs as local ranks
    return "gloo"


def _run_here(worker: Callable[..., T], args: Sequence[Any]) -> list[T]:
    """Run ``worker`` in this process, a rank started by torchrun; gather results."""
    import torch.distributed as dist

    if not dist.is_initialized():
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        backend = _backend(local_world)
        if backend == "nccl":  # pragma: no cover - needs GPUs
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    result = worker(*args)
    results: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(results, result)
    return results


# -- forked ranks --------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """What every forked rank needs, and where it leaves its outcome."""

    worker: Callable[..., Any]
    args: Sequence[Any]
    world_size: int
    port: int
    timeout: float
    folder: str
    parent: int

    def outcome(self, rank: int) -> str:
        """The file where ``rank`` leaves ``("ok", result)`` or its error."""
        return os.path.join(self.folder, f"rank{rank}.pickle")


def _free_port() -> int:
    """A TCP port that is free now on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_forked(
    worker: Callable[..., T], nprocs: int, args: Sequence[Any], timeout: float
) -> list[T]:
    """Fork the ranks with ``torch.multiprocessing.start_processes``; wait.

    ``start_processes`` asks Linux to signal each rank when this process dies,
    passes a raising rank's traceback back in a file, and stops the other ranks
    (after :data:`FAILURE_GRACE` seconds) once one fails. Each rank also leaves
    its result, or the time and text of its error, in a file of its own, so the
    error can name the first failure and a timeout the ranks still working.
    """
    import torch._dynamo  # noqa: F401 - see run(): shared with the ranks

    with tempfile.TemporaryDirectory(prefix="weightshare-ranks-") as folder:
        job = _Job(worker, args, nprocs, _free_port(), timeout, folder, os.getpid())
        context: ProcessContext = start_processes(  # type: ignore[no-untyped-call]
            _rank, args=(job,), nprocs=nprocs, join=False, start_method="fork"
        )
        deadline = time.monotonic() + timeout
        try:
            while not context.join(
                timeout=max(deadline - time.monotonic(), 0.0),
                grace_period=FAILURE_GRACE,
            ):
                if time.monotonic() >= deadline:
                    raise _timed_out(job, timeout)
        except ProcessException as err:
            raise _failure(context, job, err.error_index) from None
        finally:
            _stop(context)
        outcomes = [_read(job.outcome(rank)) for rank in range(nprocs)]
        if any(o is None or o[0] != "ok" for o in outcomes):  # e.g. sys.exit(0)
            raise _failure(context, job, first=-1)
        return [o[1] for o in outcomes if o is not None]


def _read(path: str) -> tuple[Any, ...] | None:
    """The outcome a rank left in ``path``, or None when it left none."""
    try:
        with open(path, "rb") as f:
            outcome: tuple[Any, ...] = pickle.load(f)
    except FileNotFoundError:
        return None
    return outcome


def _write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (a rename)."""
    with open(f"{path}.part", "wb") as f:
        f.write(data)
    os.replace(f"{path}.part", path)


def _timed_out(job: _Job, timeout: float) -> TimeoutError:
    """The error for ranks that had not all returned within ``timeout`` seconds."""
    returned = [r for r in range(job.world_size) if _read(job.outcome(r)) is not None]
    working = [r for r in range(job.world_size) if r not in returned]
    message = f"ranks {working} had not returned after timeout={timeout} s; "
    if returned:
        message += f"ranks {returned} had returned and were waiting for them; "
    return TimeoutError(
        message + "all were stopped. A rank may be waiting in a collective that "
        "another rank never calls, or the work needs a longer timeout"
    )


def _failure(context: ProcessContext, job: _Job, first: int) -> RankFailedError:
    """The error to report once a rank has failed and every rank has ended.

    A rank that died without a traceback comes first (the others' errors then
    follow from it): ``first``, the one ``start_processes`` saw fail first, if it
    is one of them, else the lowest. Otherwise the earliest exception. A rank
    that ``start_processes`` stopped with SIGTERM, after another failed, is not
    a failure of its own.
    """
    died: list[int] = []
    raised: list[tuple[float, int, str]] = []
    for rank, process in enumerate(context.processes):
        outcome = _read(job.outcome(rank))
        code = process.exitcode
        if outcome is not None and outcome[0] == "error":
            raised.append((outcome[2], rank, outcome[1]))
        elif code == -signal.SIGTERM and rank != first:
            continue  # stopped by start_processes
        elif code != 0 or outcome is None:
            died.append(rank)
    if died:
        rank = first if first in died else died[0]
        code = context.processes[rank].exitcode
        how = (
            f"killed by {signal.Signals(-code).name}"
            if code < 0
            else f"exit code {code}"
        )
        return RankFailedError(
            rank, f"its process ended ({how}) before returning a result", ""
        )
    _, rank, error = min(raised)
    return RankFailedError(rank, error, _traceback(context.error_files[rank]))


def _traceback(path: str) -> str:
    """The traceback that ``start_processes`` saved for a rank that raised."""
    try:
        with open(path, "rb") as f:
            text: str = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError):
        return ""
    return text


def _stop(context: ProcessContext) -> None:
    """Kill the ranks still running, reap them all, remove the traceback files."""
    for process in context.processes:
        if process.is_alive():
            process.kill()
    for process, path in zip(context.processes, context.error_files, strict=True):
        process.join()
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _rank(rank: int, job: _Job) -> None:  # pragma: no cover - runs in the ranks
    """The body of a forked rank, called by ``start_processes``.

    ``start_processes`` has asked Linux to send SIGINT to this process when its
    parent dies. Python would turn the signal into a KeyboardInterrupt only
    once a blocking collective returns; its default action ends the process at
    once. The parent may have died before that request: then it ends here.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if os.getppid() != job.parent:
        os._exit(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(job.port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(job.world_size),
        LOCAL_WORLD_SIZE=str(job.world_size),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    _rank_main(
        job.worker, job.args, rank, job.world_size, job.timeout, job.outcome(rank)
    )


def _rank_main(
    worker: Callable[..., Any],
    args: Sequence[Any],
    rank: int,
    world_size: int,
    timeout: float,
    path: str,
) -> None:
    """Join the group, call ``worker``, leave its result in ``path``, leave the group.

    The environment names the rendezvous (``MASTER_ADDR``, ``MASTER_PORT``). The
    result is written before the rank waits at a barrier for the others, so
    that none leaves while another still talks to it (rank 0 also serves the
    group's store); a worker that has left the group itself skips it. When
    anything raises, ``("error", "Type: message", time)`` is written instead and
    the exception goes on to ``start_processes``, which passes its traceback on.
    """
    import torch.distributed as dist

    try:
        dist.init_process_group(
            "gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout)
        )
        result = worker(*args)
        try:
            # Plain pickle copies tensors' data; multiprocessing's pickler would
            # share their memory through this process, which is about to exit.
            data = pickle.dumps(("ok", result))
        except Exception as err:
            raise TypeError(
                f"could not send rank {rank}'s result to the parent process: {err}; "
                "return numbers, strings, lists, dicts or tensors"
            ) from err
        _write(path, data)
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    except (Exception, KeyboardInterrupt) as err:
        # start_processes swallows a KeyboardInterrupt (the rank exits with code
        # 0), so without this record the error would read "exit code 0".
        text = (
            f"{type(err).__qualname__}: {err}" if str(err) else type(err).__qualname__
        )
        _write(path, pickle.dumps(("error", text, time.time())))
        raise
