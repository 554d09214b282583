"""Count parameters with and without sharing."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._names import named

__all__ = ["ParameterCount", "count_parameters", "training_state_bytes"]


@dataclass(frozen=True)
class ParameterCount:
    """Parameter counts of a model, with ties counted once or once per name.

    Attributes
    ----------
    unique : int
        Elements in unique Parameter objects, each tie counted once: the
        parameters' share of memory. Frozen parameters (``requires_grad=False``)
        count too; the elements that train are
        ``sum(p.numel() for p in model.parameters() if p.requires_grad)``.
    with_duplicates : int
        Sum of ``numel()`` over ``named_parameters(remove_duplicate=False)``: a
        tied weight is counted once per name.
    state_dict : int
        Sum of ``numel()`` over ``state_dict()`` values: includes persistent
        buffers, and a tied weight is counted once per key.
    unique_tensors : int
        Number of unique Parameter objects.
    names : int
        Number of parameter names (``remove_duplicate=False``).

    Examples
    --------
    >>> from torch import nn
    >>> import weightshare as ws
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    >>> model[1].weight = model[0].weight
    >>> count = ws.count_parameters(model)
    >>> count.unique, count.with_duplicates, count.saved_by_sharing
    (24, 40, 16)
    """

    __module__ = "weightshare"

    unique: int
    with_duplicates: int
    state_dict: int
    unique_tensors: int
    names: int

    @property
    def saved_by_sharing(self) -> int:
        """The elements that sharing saves, ``with_duplicates - unique``."""
        return self.with_duplicates - self.unique


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count a model's parameters with ties counted once and once per name.

    ``sum(p.numel() for p in model.parameters())`` counts a tied weight once
    (``parameters()`` removes duplicates), while summing over ``state_dict()`` or
    ``named_parameters(remove_duplicate=False)`` counts it once per name. This
    returns all of them side by side. Only ``numel()`` is read, so it works on the
    meta device, e.g. to size a model before allocating it.

    Parameters
    ----------
    model : :class:`torch.nn.Module`
        The model to count.

    Returns
    -------
    weightshare.ParameterCount
        The counts; ``saved_by_sharing`` is the difference that sharing makes.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import weightshare as ws
    >>> with torch.device("meta"):
    ...     model = nn.ModuleDict({"emb": nn.Embedding(100, 8),
    ...                            "head": nn.Linear(8, 100, bias=False)})
    >>> model.head.weight = model.emb.weight
    >>> ws.count_parameters(model)
    ParameterCount(unique=800, with_duplicates=1600, state_dict=1600, \
unique_tensors=1, names=2)
    """
    pairs = named(model)
    unique = {id(p): p.numel() for _, p in pairs}
    state = model.state_dict(keep_vars=True).values()
    return ParameterCount(
        unique=sum(unique.values()),
        with_duplicates=sum(p.numel() for _, p in pairs),
        state_dict=sum(t.numel() for t in state if isinstance(t, torch.Tensor)),
        unique_tensors=len(unique),
        names=len(pairs),
    )


def training_state_bytes(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> int:
    """Bytes that training holds for a model: parameters, gradients, optimizer state.

    Each storage is counted once, so a tied weight, its one gradient and its one
    set of optimizer moments count once however many names it has. This is the
    memory that tying saves, measured rather than assumed, on any device.

    Parameters
    ----------
    model : :class:`torch.nn.Module`
        The model whose parameters and their ``.grad`` are counted.
    optimizer : :class:`torch.optim.Optimizer`, optional
        Also count the tensors in its state (e.g. AdamW's two moments and step).

    Returns
    -------
    int
        The bytes of all unique storages.

    Examples
    --------
    With AdamW, an untied V×d output matrix costs 16·V·d bytes (weight, gradient and
    two moments, 4 bytes each) plus 4 for its own step counter:

    >>> import torch
    >>> from torch import nn
    >>> import weightshare as ws
    >>> def after_one_step(tied):
    ...     torch.manual_seed(0)
    ...     model = nn.ModuleDict({"emb": nn.Embedding(10, 4),
    ...                            "head": nn.Linear(4, 10, bias=False)})
    ...     if tied:
    ...         model.head.weight = model.emb.weight
    ...     optimizer = torch.optim.AdamW(model.parameters())
    ...     model.head(model.emb(torch.tensor([1, 2]))).sum().backward()
    ...     optimizer.step()
    ...     return ws.training_state_bytes(model, optimizer)
    >>> after_one_step(tied=False) - after_one_step(tied=True)
    644
    """
    params = list(model.parameters())
    tensors = params + [p.grad for p in params if p.grad is not None]
    if optimizer is not None:
        for state in optimizer.state.values():
            tensors += [t for t in state.values() if isinstance(t, torch.Tensor)]
    # _cdata identifies the storage itself, also on the meta device (data_ptr() is 0).
    storages = {t.untyped_storage()._cdata: t.untyped_storage() for t in tensors}
    return sum(s.nbytes() for s in storages.values())
