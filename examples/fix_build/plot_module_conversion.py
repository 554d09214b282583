"""
Moving or converting a model unties it
======================================

*"model.to(xla_device) increases the number of named_parameters"*
(`pytorch/xla#7042 <https://github.com/pytorch/xla/issues/7042>`_), *"Weight tying
is broken on TPUs leading to silent errors"* (`Lightning#2705
<https://github.com/Lightning-AI/pytorch-lightning/issues/2705>`_), or a parameter
count that grows after ``.to()`` or ``.half()``. ``Module.to()``, ``.half()``,
``.double()`` and ``to_empty()`` convert each module's parameters one at a time. A
tie survives only while the conversion keeps each :class:`~torch.nn.Parameter`
*object*; where it makes a new one, it makes one per name. On torch 2.13 that
happens with ``torch.__future__.set_overwrite_module_params_on_conversion(True)``
and, with no flag at all, on a move between tensor types that cannot take each
other's data (the meta device here). This page shows both, then two fixes: tie
again after the move, or ``set_swap_module_params_on_conversion(True)``, which
keeps every Parameter object.
"""

# %%
# A tied pair, and the global flags
# ---------------------------------
# An embedding whose weight is also the output layer's. The two conversion flags
# live in ``torch.__future__`` and are global, so this page sets them only inside
# ``flags()``, which puts them back afterwards.
import contextlib
from collections.abc import Iterator

import torch
from torch import nn

import weightshare


def tied_pair() -> nn.ModuleDict:
    torch.manual_seed(0)
    model = nn.ModuleDict({"emb": nn.Embedding(6, 4), "head": nn.Linear(4, 6)})
    model["head"].weight = model["emb"].weight  # the tie
    return model


@contextlib.contextmanager
def flags(overwrite: bool = False, swap: bool = False) -> Iterator[None]:
    """Set the two conversion flags of ``torch.__future__`` for a block."""
    future = torch.__future__
    saved = (
        future.get_overwrite_module_params_on_conversion(),
        future.get_swap_module_params_on_conversion(),
    )
    future.set_overwrite_module_params_on_conversion(overwrite)
    future.set_swap_module_params_on_conversion(swap)
    try:
        yield
    finally:
        future.set_overwrite_module_params_on_conversion(saved[0])
        future.set_swap_module_params_on_conversion(saved[1])


# %%
# Both flags are off by default:
#
# >>> torch.__future__.get_overwrite_module_params_on_conversion()
# False
# >>> torch.__future__.get_swap_module_params_on_conversion()
# False

# %%
# By default a conversion keeps the tie
# -------------------------------------
# ``Module._apply`` (which ``.to()`` and its relatives call) converts a parameter
# and, when the new tensor's type allows it, puts the result into the *same*
# object with ``param.data = converted``. The second module holding the tie finds
# the object already converted. One Parameter before, one after:
model = tied_pair()
weight_before = model["emb"].weight
model.double()

# %%
# >>> weightshare.shared_groups(model), model["emb"].weight is weight_before
# ([['emb.weight', 'head.weight']], True)

# %%
# The overwrite flag gives each name a new Parameter
# --------------------------------------------------
# With ``set_overwrite_module_params_on_conversion(True)`` ``_apply`` instead
# stores ``nn.Parameter(converted)`` under the module's key. It does so once for
# the embedding and once for the head, from the same old object: two new
# Parameters with equal values, no tie. An optimizer made before the move holds
# the old object, which no longer gets a gradient.
model = tied_pair()
optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
with flags(overwrite=True):
    model.double()
x = torch.tensor([1, 2])
model["head"](model["emb"](x)).sum().backward()
optimizer.step()
stale = optimizer.param_groups[0]["params"][0]

# %%
# >>> weightshare.shared_groups(model), sum(p.numel() for p in model.parameters())
# ([], 54)
# >>> torch.equal(model["emb"].weight, model["head"].weight), stale.grad is None
# (True, True)
#
# Trained on from here, with a new optimizer, the two copies part after one step:
#
# >>> torch.optim.SGD(model.parameters(), lr=0.5).step()
# >>> (model["emb"].weight - model["head"].weight).abs().max() > 0.1
# tensor(True)

# %%
# Even a conversion that changes nothing, ``.float()`` on a float32 model, goes
# this way: the two new Parameters then wrap the old memory, two objects over one
# storage (as the ``.data`` ties of :doc:`plot_copies_not_ties` do), counted twice
# and split apart by the next real conversion.
model = tied_pair()
with flags(overwrite=True):
    model.float()

# %%
# >>> weightshare.shared_groups(model), len(weightshare.storage_aliases(model))
# ([], 1)

# %%
# A move to another kind of tensor unties with no flag set
# --------------------------------------------------------
# ``param.data = converted`` only works between compatible tensor types, which
# ``_apply`` asks ``torch._has_compatible_shallow_copy_type``. A CPU tensor and a
# ``float64`` one are compatible; a CPU tensor and a meta tensor are not, so moving
# to the meta device takes the new-Parameter branch even with both flags off.
# (``to_empty()``, which materialises a meta model, is the same branch in reverse:
# :doc:`/auto_examples/fix_build/plot_meta_device_init`.) The XLA reports above
# describe this outcome for ``model.to(xla_device)``: more parameters after the
# move (pytorch/xla#7042), and tensors copied rather than shared unless tied after
# the move, as Lightning#2705 quotes PyTorch/XLA's troubleshooting guide.
cpu = torch.zeros(1)
compatible = [
    torch._has_compatible_shallow_copy_type(cpu, other)
    for other in (cpu.double(), cpu.to("meta"))
]
model = tied_pair()
guard = weightshare.TieGuard(model)
model.to("meta")

# %%
# >>> compatible
# [True, False]
# >>> weightshare.shared_groups(model), len(list(model.parameters()))
# ([], 3)

# %%
# Fix 1: tie again after the move
# -------------------------------
# Record the ties before the move (:class:`weightshare.TieGuard`, or
# :func:`weightshare.shared_groups`), check after it, and tie again with
# :func:`weightshare.retie` (in transformers, ``model.tie_weights()``). The
# guard's report, produced live, names the cause: both names were replaced, not
# one of them.
report = ""
try:
    guard.check()
except weightshare.BrokenTieError as err:
    report = str(err)
    print(report)
weightshare.retie(model, guard.groups)

# %%
# >>> "every name now holds a new Parameter" in report
# True
# >>> guard.broken(), len(list(model.parameters()))
# ([], 2)

# %%
# Fix 2: swap the tensors inside the Parameter
# --------------------------------------------
# ``set_swap_module_params_on_conversion(True)`` makes ``_apply`` convert with
# ``torch.utils.swap_tensors``, which exchanges the contents of the old
# Parameter and the new tensor, whatever their types: the object stays, so the tie
# stays, and an optimizer made earlier still holds the model's parameters. It
# takes precedence over the overwrite flag.
swapped = {}
for label, move in {
    "to meta": lambda m: m.to("meta"),
    "double, overwrite on": lambda m: m.double(),
}.items():
    model = tied_pair()
    first = model["emb"].weight
    with flags(overwrite=True, swap=True):
        move(model)
    groups = weightshare.shared_groups(model)
    swapped[label] = (len(groups), model["head"].weight is first)

# %%
# >>> swapped
# {'to meta': (1, True), 'double, overwrite on': (1, True)}
#
# and ``flags()`` has put both global flags back, so later code converts as before:
#
# >>> (torch.__future__.get_overwrite_module_params_on_conversion(),
# ...  torch.__future__.get_swap_module_params_on_conversion())
# (False, False)

# %%
# Conclusion
# ----------
# A conversion keeps a tie only while it keeps the Parameter object: the default
# ``.data`` assignment between compatible tensors, or ``swap_tensors`` with the
# swap flag. The overwrite flag, and a move to an incompatible kind of tensor (meta
# here, XLA in the reports), make one new Parameter per name, and the two sides
# train apart. Tie after the move, checked by a :class:`weightshare.TieGuard`
# recorded before it, or turn on
# ``torch.__future__.set_swap_module_params_on_conversion(True)``.
#
# Next: :doc:`plot_scaled_tied_embedding`, where the tie holds and the values of
# the shared matrix go wrong, and the :doc:`symptom index </symptoms>`.
