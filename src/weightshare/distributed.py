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
import ctypes
import math
import multiprocessing
import os
import pickle
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["RankFailedError", "all_reduce_tied_grads", "device", "rank_spread", "run"]

T = TypeVar("T")

#: Seconds a finished rank may take to leave its process group and exit before it is
#: killed, and that :func:`run` waits for a killed rank to be gone.
GRACE = 5.0
#: Seconds the other ranks may take to report after a first rank has failed.
FAILURE_GRACE = 0.5
_LOG_TAIL = 20  # lines of a rank's output quoted when it dies without a traceback


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
        The rank's traceback, or the last lines it printed when it died without one.

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

    The processes are forked from this one, so ``worker`` may be any function,
    including one defined in a notebook or a script's ``__main__``, and the ranks
    inherit the modules imported so far. Each rank gets the environment variables
    ``torchrun`` would set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT`` on a free port chosen now) and
    ``OMP_NUM_THREADS=1``, uses one thread, and joins the gloo process group before
    ``worker`` is called. What a rank prints goes to a log file, quoted in the error
    if that rank dies without a traceback. Before forking, this imports
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
        ranks are killed first.
    TimeoutError
        If the ranks have not all returned within ``timeout`` seconds; all are
        killed first.
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


@dataclass
class _Rank:
    """A forked rank as the parent sees it."""

    rank: int
    process: BaseProcess
    reader: Connection
    log: str


def _free_port() -> int:
    """A TCP port that is free now on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_forked(
    worker: Callable[..., T], nprocs: int, args: Sequence[Any], timeout: float
) -> list[T]:
    import torch._dynamo  # noqa: F401 - see run(): shared with the ranks

    context = multiprocessing.get_context("fork")
    port = _free_port()
    ranks: list[_Rank] = []
    with tempfile.TemporaryDirectory(prefix="weightshare-ranks-") as logs:
        try:
            for rank in range(nprocs):
                reader, writer = context.Pipe(duplex=False)
                log = os.path.join(logs, f"rank{rank}.log")
                spec = (worker, args, rank, nprocs, port, timeout, writer, log)
                process = context.Process(
                    target=_child, args=(*spec, os.getpid()), name=f"rank{rank}"
                )
                process.start()
                writer.close()  # the child holds the writing end now
                ranks.append(_Rank(rank, process, reader, log))
            results = _collect(ranks, timeout)
            _join(ranks, GRACE)
            return results
        finally:
            _stop(ranks)


def _collect(ranks: list[_Rank], timeout: float) -> list[Any]:
    """Each rank's result, in rank order; raise soon after a rank fails.

    When a rank fails, the others often fail a moment later because a peer left
    their collective. So the ranks get :data:`FAILURE_GRACE` seconds to report, and
    the error names the first failure: a process that died without a traceback,
    else the earliest exception.
    """
    deadline = time.monotonic() + timeout
    results: dict[int, Any] = {}
    failures: list[_Failure] = []
    waiting = list(ranks)
    while waiting:
        if failures:
            deadline = min(deadline, failures[0].seen + FAILURE_GRACE)
        handles = [r.reader for r in waiting] + [r.process.sentinel for r in waiting]
        left = deadline - time.monotonic()
        ready = wait(handles, timeout=left) if left > 0 else []
        if not ready:
            break
        for r in [r for r in waiting if {r.reader, r.process.sentinel} & set(ready)]:
            waiting.remove(r)
            outcome = _receive(r)
            if isinstance(outcome, _Failure):
                failures.append(outcome)
            else:
                results[r.rank] = outcome.value
    if failures:
        first = min(failures, key=lambda f: (f.when, f.rank))
        raise RankFailedError(first.rank, first.error, first.details)
    if waiting:
        running = [r.rank for r in waiting]
        raise TimeoutError(
            f"ranks {running} had not returned after timeout={timeout} s and were "
            "stopped; a rank may be waiting in a collective that another rank "
            "never calls, or the work needs a longer timeout"
        )
    return [results[rank] for rank in range(len(ranks))]


@dataclass
class _Result:
    value: Any


@dataclass
class _Failure:
    """How a rank failed; ``when`` orders failures (-inf: died without a word)."""

    rank: int
    error: str
    details: str
    when: float
    seen: float = field(default_factory=time.monotonic)


def _receive(r: _Rank) -> _Result | _Failure:
    """What a rank sent: its result or its error; or how its process ended."""
    message: tuple[Any, ...] | None = None
    if r.reader.poll():
        with contextlib.suppress(EOFError):
            message = pickle.loads(r.reader.recv_bytes())
    if message is None:
        r.process.join(GRACE)
        code = r.process.exitcode
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        else:
            how = f"exit code {code}"
        error = f"its process ended ({how}) before returning a result"
        return _Failure(r.rank, error, _tail(r.log), -math.inf)
    if message[0] == "error":
        return _Failure(r.rank, message[1], message[2], message[3])
    return _Result(message[1])


def _tail(path: str) -> str:
    """The last lines of a rank's log, or "" when it printed nothing."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-_LOG_TAIL:])


def _join(ranks: list[_Rank], grace: float) -> None:
    """Wait up to ``grace`` seconds in all for the ranks to exit."""
    deadline = time.monotonic() + grace
    for r in ranks:
        r.process.join(max(deadline - time.monotonic(), 0.0))


def _stop(ranks: list[_Rank]) -> None:
    """Kill the ranks that are still running, reap them, close the pipes."""
    for r in ranks:
        if r.process.is_alive():
            r.process.kill()
    for r in ranks:
        r.process.join(GRACE)
        r.reader.close()


def _rank_main(
    worker: Callable[..., Any],
    args: Sequence[Any],
    rank: int,
    world_size: int,
    timeout: float,
) -> tuple[Any, ...]:
    """Join the group, call ``worker``, leave the group: the message for the parent.

    The environment names the rendezvous (``MASTER_ADDR``, ``MASTER_PORT``). A
    successful rank waits at a barrier for the others before it leaves the group,
    so that none leaves while another still talks to it (rank 0 also serves the
    group's store). An error message carries the time of the failure.
    """
    import torch.distributed as dist

    try:
        dist.init_process_group(
            "gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout)
        )
        message: tuple[Any, ...] = ("ok", worker(*args))
        dist.barrier()
        dist.destroy_process_group()
    except Exception as err:
        error = (
            f"{type(err).__qualname__}: {err}" if str(err) else type(err).__qualname__
        )
        message = ("error", error, traceback.format_exc(), time.time())
    return message


def _child(  # pragma: no cover - runs in the forked ranks (tests/test_distributed.py)
    worker: Callable[..., Any],
    args: Sequence[Any],
    rank: int,
    world_size: int,
    port: int,
    timeout: float,
    writer: Connection,
    log: str,
    parent: int,
) -> None:
    """The body of a forked rank: tidy the process, run, send the message."""
    _die_with_parent(parent)
    output = open(log, "w", buffering=1, encoding="utf-8")  # noqa: SIM115
    os.dup2(output.fileno(), 1)
    os.dup2(output.fileno(), 2)
    sys.stdout = sys.stderr = output
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    message = _rank_main(worker, args, rank, world_size, timeout)
    try:
        # Plain pickle copies tensors' data; multiprocessing's own pickler would
        # share their memory with the parent through this process, which exits now.
        data = pickle.dumps(message)
    except Exception as err:  # e.g. a result that cannot be pickled
        failure = ("error", f"could not send the result: {err}", "", time.time())
        data = pickle.dumps(failure)
    writer.send_bytes(data)
    writer.close()


def _die_with_parent(parent: int) -> None:  # pragma: no cover - in the forked ranks
    """Ask Linux to kill this process when its parent dies (no orphans left)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
