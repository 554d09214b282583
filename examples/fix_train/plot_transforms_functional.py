"""
Transformations and functional calls
====================================

*"After weight_norm the embedding no longer follows the output layer"*,
*"functional_call got multiple values for keys ... which are tied"*, *"my hook on the
embedding sees the output layer's gradient too"*. Tools that rewrite a module act on
one module at a time, so on one side of a tie. This page applies each to one side of
a tied embedding and output layer and shows, in one short cell each, whether the tie
survives: :func:`~torch.nn.utils.parametrizations.weight_norm` unties, pruning
unties until :func:`~torch.nn.utils.prune.remove` prunes both sides, dynamic
quantisation unties, :func:`~torch.func.functional_call` and
:func:`~torch.export.export` keep the tie, and a tensor hook on the shared weight
fires once with the total gradient.
"""

# %%
# A tied pair
# -----------
# An embedding whose weight is also the output layer's, so ``head(emb(x))`` uses the
# one matrix twice. ``gap`` measures how far the head's *effective* weight (what its
# forward uses, after any rewriting) is from the embedding's.
import warnings

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.nn.utils import prune
from torch.nn.utils.parametrizations import weight_norm

import weightshare


class TiedPair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(6, 4)
        self.head = nn.Linear(4, 6, bias=False)
        self.head.weight = self.emb.weight  # the tie

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x))


def gap(model: nn.Module) -> float:
    """Largest difference between the head's effective weight and the embedding's."""
    head = model.head.weight
    head = head() if callable(head) else head  # a quantized head: a method
    head = head.dequantize() if head.is_quantized else head
    return (head - model.emb.weight).abs().max().item()


def sgd_step(model: nn.Module) -> None:
    model(x).sum().backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()


x = torch.tensor([1, 2])
gaps = {}

# %%
# ``weight_norm`` on one side unties
# ----------------------------------
# :func:`~torch.nn.utils.parametrizations.weight_norm` replaces ``head.weight`` by
# a value computed from two new parameters (a norm and a direction); the embedding
# keeps the old one. One step later they differ. The fix: parametrize both sides
# and tie the two pairs of new parameters with :func:`weightshare.tie`.
broken = TiedPair()
weight_norm(broken.head)
sgd_step(broken)
fixed = TiedPair()
weight_norm(fixed.emb)
weight_norm(fixed.head)
new = "parametrizations.weight.original"  # the norm (…0) and the direction (…1)
for part in (f"{new}0", f"{new}1"):
    weightshare.tie(fixed, f"head.{part}", f"emb.{part}")
sgd_step(fixed)
gaps["weight_norm, one side"] = gap(broken)

# %%
# >>> weightshare.shared_groups(broken), gap(broken) > 0.1
# ([], True)
# >>> len(weightshare.shared_groups(fixed)), gap(fixed)
# (2, 0.0)

# %%
# Pruning one side unties until ``prune.remove``
# ----------------------------------------------
# Pruning keeps the shared :class:`~torch.nn.Parameter` as ``head.weight_orig`` and
# computes ``head.weight`` as a masked copy, so the head drops half the entries while
# the embedding still uses all of them. :func:`~torch.nn.utils.prune.remove` then
# writes the pruned values into the shared parameter: the embedding is pruned too,
# and the tie is whole again.
pruned = TiedPair()
prune.l1_unstructured(pruned.head, "weight", amount=0.5)
zeros_while_pruning = [int((m.weight == 0).sum()) for m in (pruned.head, pruned.emb)]
gaps["pruned, before remove"] = gap(pruned)
prune.remove(pruned.head, "weight")
zeros_after_remove = [int((m.weight == 0).sum()) for m in (pruned.head, pruned.emb)]

# %%
# >>> zeros_while_pruning, zeros_after_remove
# ([12, 0], [12, 12])
# >>> weightshare.shared_groups(pruned)
# [['emb.weight', 'head.weight']]

# %%
# Dynamic quantisation unties
# ---------------------------
# ``torch.ao.quantization.quantize_dynamic`` returns a copy whose linear layers hold
# packed int8 copies of their weights; embeddings stay float. The head's weight is
# then a second, rounded matrix, no longer a parameter, and training the float
# embedding does not reach it. On torch 2.13 the function still works, with a
# deprecation warning whose text still names release 2.10 (printed live):
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    quantized = torch.ao.quantization.quantize_dynamic(
        TiedPair(), {nn.Linear}, dtype=torch.qint8
    )
print(str(caught[0].message).splitlines()[0].strip())
gaps["quantize_dynamic"] = gap(quantized)

# %%
# >>> [name for name, _ in quantized.named_parameters()]
# ['emb.weight']
# >>> 0 < gap(quantized) < 0.05
# True

# %%
# ``functional_call`` keeps the tie unless told
# ---------------------------------------------
# :func:`~torch.func.functional_call` runs the model with replacement tensors. With
# ``tie_weights=True`` (the default), a tensor given for one tied name replaces
# both uses, and different tensors for the two names are an error;
# ``tie_weights=False`` lets each name take its own tensor for that call.
from torch.func import functional_call

model = TiedPair()
ones = torch.ones(6, 4)
tied_out = functional_call(model, {"head.weight": ones}, (x,))
untied_out = functional_call(model, {"head.weight": ones}, (x,), tie_weights=False)
try:
    functional_call(model, {"head.weight": ones, "emb.weight": 2 * ones}, (x,))
except ValueError as err:
    print(f"ValueError: {err}")

# %%
# With ones in both places every logit is 1·1·4 = 4; untied, the embedding's own
# rows are summed instead:
#
# >>> torch.equal(tied_out, torch.full((2, 6), 4.0))
# True
# >>> torch.allclose(untied_out[:, 0], model.emb(x).sum(dim=1))
# True

# %%
# ``torch.export`` lists both names, uses one
# -------------------------------------------
# :func:`~torch.export.export` (non-strict, the default on torch 2.13) keeps both
# names: the graph signature has a parameter input per name and the state dict a key
# per name, both holding the one tensor. The graph reads the tensor through one
# input only, and the exported module is tied again. (ONNX export is another matter:
# users found tied weights stored twice when constant folding transposed one side,
# `pytorch#108342 <https://github.com/pytorch/pytorch/issues/108342>`_.)
program = torch.export.export(model, (x,))
kinds = program.graph_signature.input_specs
used = [node.name for node in program.graph.find_nodes(op="placeholder") if node.users]

# %%
# >>> [spec.target for spec in kinds if spec.kind.name == "PARAMETER"]
# ['emb.weight', 'head.weight']
# >>> used
# ['p_head_weight', 'x']
# >>> program.state_dict["emb.weight"] is program.state_dict["head.weight"]
# True
# >>> weightshare.shared_groups(program.module())
# [['emb.weight', 'head.weight']]

# %%
# A hook on the shared weight fires once, with the sum
# ----------------------------------------------------
# :meth:`~torch.Tensor.register_hook` on the shared parameter runs once per
# backward, with the gradient already summed over both uses; it cannot see the uses
# apart. :func:`weightshare.grad_contributions` gives one term per use.
model = TiedPair()
seen = []
model.emb.weight.register_hook(lambda grad: seen.append(grad.clone()))
model(x).sum().backward()
hook_calls = len(seen)
per_use = weightshare.grad_contributions(model, "emb.weight", lambda: model(x).sum())

# %%
# >>> hook_calls, torch.equal(seen[0], model.emb.weight.grad)
# (1, True)
# >>> sorted(per_use), torch.allclose(sum(per_use.values()), seen[0])
# (['emb', 'head'], True)

# %%
# The gaps in one chart
# ---------------------
# How far the head's effective weight is from the embedding's after each rewriting
# that unties (after one SGD step for ``weight_norm``); every kept tie is at 0.
fig, ax = plt.subplots(figsize=(4.5, 3))
ax.barh(list(gaps), list(gaps.values()), color="tab:red")
ax.set_xscale("log")
ax.set_xlabel("max |head weight − embedding|")
ax.set_title("one side rewritten")
fig.tight_layout()

# %%
# Conclusion
# ----------
# A rewriting that acts on one module acts on one side of a tie: ``weight_norm``
# and dynamic quantisation untie for good, pruning until ``prune.remove`` (which
# then prunes both). Parametrize both sides and tie the new parameters, or apply the
# rewriting before tying. ``functional_call`` and ``torch.export`` know about ties,
# and a hook on a shared weight sees only the sum: per-use gradients need
# :func:`weightshare.grad_contributions`.
#
# Next: :doc:`/auto_examples/fix_save_load/plot_save_load_tied` (keeping the tie
# through a checkpoint), and :func:`weightshare.tie` in the
# :doc:`API reference </api>`.
