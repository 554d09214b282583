"""Attribute a shared parameter's gradient to each use."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from ._names import first_names, get_parameter

__all__ = ["grad_contributions"]

DIRECT = "(direct)"
ROOT = "(root)"


def grad_contributions(
    model: nn.Module,
    param: nn.Parameter | str,
    loss_fn: Callable[[], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Split a shared parameter's gradient into one term per use.

    A *use* is one call of a module that holds ``param`` as one of its own
    parameters (e.g. the embedding and the output projection of a tied
    language model). During ``loss_fn()`` each such call sees its own alias
    ``param.view_as(param)``, so autograd can tell the calls apart; the terms
    then add up to the ``.grad`` an ordinary ``loss_fn().backward()`` would give.

    Parameters
    ----------
    model : :class:`torch.nn.Module`
        The model holding ``param``.
    param : :class:`torch.nn.Parameter` or str
        The shared parameter, or one of its names.
    loss_fn : ``Callable[[], torch.Tensor]``
        Called once with no arguments (with gradients enabled); must run the
        model and return a scalar loss that depends on ``param``.

    Returns
    -------
    dict
        One entry per call in call order, keyed by the holder module's name
        (``"fc1"``); a module called several times gets ``"enc[0]"``,
        ``"enc[1]"``, ...; a parametrization ``X.parametrizations.weight`` is
        reported as ``"X"`` and the root module as ``"(root)"``. Gradient that
        reaches ``param`` outside any holder's call (e.g.
        ``F.linear(h, self.emb.weight)`` in a parent's ``forward``) is reported
        under ``"(direct)"`` when it is not all zeros. Each value is a
        :class:`torch.Tensor` shaped like ``param``.

    Raises
    ------
    TypeError
        If ``loss_fn`` returns a non-scalar, or a tensor that does not depend on
        ``param``.
    ValueError
        If ``param`` is not a parameter of ``model`` (``weightshare``'s
        ``UnknownNameError`` for names), does not require grad, or is on the
        meta device.
    RuntimeError
        If called under ``torch.inference_mode()``, or if ``loss_fn`` uses
        ``torch.utils.checkpoint.checkpoint`` with ``use_reentrant=True``
        (which does not support :func:`torch.autograd.grad`; pass
        ``use_reentrant=False``).

    Notes
    -----
    No ``.grad`` is touched (it uses :func:`torch.autograd.grad`), and the model is
    left exactly as found, also when ``loss_fn`` raises (its exception
    propagates): the same Parameter objects in every slot, no hooks left behind,
    and every buffer the same object with the same values. The extra forward pass
    of ``loss_fn`` does change buffers, e.g. the running statistics and
    ``num_batches_tracked`` of ``nn.BatchNorm1d`` in training mode;
    they are copied before the call and put back after it. The global random
    number generators (the CPU one, and that of each CUDA device holding a
    parameter or buffer of the model) are put back too, so the extra call does not
    shift the random numbers drawn after it.

    ``loss_fn`` is called once. The sum equals the ``.grad`` of a separate
    ``loss_fn().backward()`` when that call computes the same loss: fixed inputs,
    and dropout masks drawn from the global generator, which is restored, so the
    next call draws the same masks.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import weightshare as ws
    >>> model = nn.Sequential()
    >>> model.add_module("fc1", nn.Linear(1, 1))
    >>> model.add_module("fc2", nn.Linear(1, 1))
    >>> w = nn.Parameter(torch.tensor([[2.0]]))
    >>> model.fc1.weight = model.fc2.weight = w
    >>> with torch.no_grad():
    ...     _ = model.fc1.bias.fill_(2.0), model.fc2.bias.fill_(4.0)
    >>> x = torch.tensor([1.0])
    >>> parts = ws.grad_contributions(model, w, lambda: model(x).sum())
    >>> {key: value.item() for key, value in parts.items()}
    {'fc1': 2.0, 'fc2': 4.0}
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "grad_contributions() was called under torch.inference_mode(), where "
            "autograd records nothing (torch.enable_grad() does not lift it); call it "
            "outside the inference_mode block"
        )
    name, target = _resolve(model, param)
    _check_param(name, target)
    with _as_found(model):
        tracer = _Tracer(model, target)
        try:
            tracer.install()
            with torch.enable_grad():
                loss = loss_fn()
        finally:
            tracer.remove()
        _check_loss(loss, name)
        return tracer.contributions(loss, name)


@contextmanager
def _as_found(model: nn.Module) -> Iterator[None]:
    """Put back the model's buffers and the global RNG states on leaving.

    Buffers are restored after the caller's :func:`torch.autograd.grad`, since an
    eval-mode forward may save a buffer for backward; only those whose values
    changed are copied back (BatchNorm's kernel updates its running statistics
    without moving their version counter, so the values are compared).
    """
    saved = [
        (module, key, buf, None if buf.is_meta else buf.detach().clone())
        for module in model.modules()
        for key, buf in module._buffers.items()
        if buf is not None
    ]
    tensors = itertools.chain(model.parameters(), model.buffers())
    cuda = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=cuda, device_type="cuda"):
            yield
    finally:
        with torch.no_grad():
            for module, key, buf, copy in saved:
                module._buffers[key] = buf
                if copy is not None and not torch.equal(buf, copy):
                    buf.copy_(copy)


def _resolve(model: nn.Module, param: nn.Parameter | str) -> tuple[str, nn.Parameter]:
    if isinstance(param, str):
        return param, get_parameter(model, param, "param")
    if not isinstance(param, torch.Tensor):
        raise TypeError(f"param must be a Parameter or a name, got {type(param)}")
    name = first_names(model).get(id(param))
    if name is None:
        raise ValueError(
            f"param (a tensor of shape {tuple(param.shape)}) is not a parameter of "
            "model: no name in model.named_parameters() refers to this object; "
            "pass one of the model's own parameters, or its name"
        )
    return name, param


def _check_param(name: str, param: nn.Parameter) -> None:
    if param.device.type == "meta":
        raise ValueError(
            f"param {name!r} is on the meta device and has no values to "
            "differentiate; materialise the model first (to_empty() and initialise)"
        )
    if not param.requires_grad:
        raise ValueError(
            f"param {name!r} has requires_grad=False, so it gets no gradient; "
            "call .requires_grad_() on it first"
        )


def _check_loss(loss: object, name: str) -> None:
    if not isinstance(loss, torch.Tensor):
        got = f"a {type(loss).__name__}"
    elif loss.numel() != 1:
        got = f"a tensor of shape {tuple(loss.shape)}; reduce it, e.g. with .sum()"
    elif loss.grad_fn is None:
        got = (
            "a tensor without grad_fn (detached, computed without autograd, or by "
            "torch.utils.checkpoint with use_reentrant=True from inputs that do not "
            "require grad: pass use_reentrant=False)"
        )
    else:
        return
    raise TypeError(
        f"loss_fn must return a scalar tensor that depends on {name!r}; it returned "
        f"{got}"
    )


def _holder_key(module_name: str, module: nn.Module) -> str:
    """Report ``X.parametrizations.weight`` as ``X`` and the root as ``(root)``."""
    if isinstance(module, parametrize.ParametrizationList):
        module_name = module_name.rpartition(".parametrizations")[0]
    return module_name or ROOT


class _Tracer:
    """Swaps fresh aliases of ``param`` into its holders' slots, call by call."""

    def __init__(self, model: nn.Module, param: nn.Parameter) -> None:
        self.param = param
        self.holders = [
            (_holder_key(name, module), module, attrs)
            for name, module in model.named_modules()
            if (attrs := [a for a, p in module._parameters.items() if p is param])
        ]
        self.direct = param.view_as(param)
        self.calls: list[tuple[str, torch.Tensor]] = []
        self.handles: list[RemovableHandle] = []

    def install(self) -> None:
        for key, module, attrs in self.holders:
            self._swap(module, attrs, self.direct)
            self.handles.append(
                module.register_forward_pre_hook(self._pre(key, attrs), prepend=True)
            )
            self.handles.append(
                module.register_forward_hook(self._post(attrs), always_call=True)
            )

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for _, module, attrs in self.holders:
            self._swap(module, attrs, self.param)

    @staticmethod
    def _swap(module: nn.Module, attrs: list[str], value: torch.Tensor) -> None:
        for attr in attrs:
            module._parameters[attr] = value  # type: ignore[assignment]

    def _pre(self, key: str, attrs: list[str]) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, args: Any) -> None:
            alias = self.param.view_as(self.param)
            self.calls.append((key, alias))
            self._swap(module, attrs, alias)

        return hook

    def _post(self, attrs: list[str]) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._swap(module, attrs, self.direct)

        return hook

    def contributions(self, loss: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
        inputs = [alias for _, alias in self.calls] + [self.direct, self.param]
        try:
            grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        except RuntimeError as err:
            if not _has_reentrant_checkpoint(loss):
                raise
            raise RuntimeError(
                f"cannot split the gradient of {name!r}: loss_fn ran "
                "torch.utils.checkpoint with use_reentrant=True, which does not "
                "support torch.autograd.grad (used here to take one gradient per "
                "use); pass use_reentrant=False to torch.utils.checkpoint.checkpoint"
            ) from err
        *per_call, direct, total = grads
        if total is None:
            raise TypeError(
                f"loss_fn must return a scalar tensor that depends on {name!r}; the "
                "loss it returned does not depend on it"
            )
        zero = torch.zeros_like(self.param)
        parts = [zero if g is None else g for g in per_call]
        result = dict(zip(self._keys(), parts, strict=True))
        rest = total - sum(parts, zero)
        if _has_direct(direct, rest, [total, *parts]):
            result[DIRECT] = rest
        return result

    def _keys(self) -> list[str]:
        counts = Counter(key for key, _ in self.calls)
        seen: Counter[str] = Counter()
        keys = []
        for key, _ in self.calls:
            keys.append(f"{key}[{seen[key]}]" if counts[key] > 1 else key)
            seen[key] += 1
        return keys


def _has_reentrant_checkpoint(loss: torch.Tensor) -> bool:
    """Whether the loss's graph has a node of reentrant activation checkpointing."""
    seen: set[object] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        if node.name() == "CheckpointFunctionBackward":
            return True
        seen.add(node)
        stack.extend(fn for fn, _ in node.next_functions)
    return False


def _has_direct(
    direct: torch.Tensor | None, rest: torch.Tensor, terms: list[torch.Tensor]
) -> bool:
    """Whether gradient reached the parameter outside the holders' calls.

    Exact for uses that read the module attribute (they see the ``direct``
    alias); for uses of a reference taken before the call (straight to the
    parameter) the remainder is compared with float round-off of the terms.
    """
    if direct is not None and bool(direct.count_nonzero()):
        return True
    untracked = rest if direct is None else rest - direct
    if untracked.numel() == 0:
        return False
    scale = max(float(t.abs().max()) for t in terms)
    tolerance = 8 * len(terms) * torch.finfo(rest.dtype).eps * scale
    return bool(untracked.abs().max() > tolerance)
