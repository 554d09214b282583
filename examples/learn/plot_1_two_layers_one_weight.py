"""
Two layers, one weight
======================

Two :class:`~torch.nn.Linear` layers can hold one and the same
:class:`~torch.nn.Parameter`. This page builds the smallest such model, with a shared
weight of 2, biases 2 and 4 and input 1, and shows the three facts that make weight
tying work. The two layers hold *one object*. Its gradient is the *sum* of the gradients
of its two uses, 2 + 4 = 6. And ``optimizer.step()`` updates that one object, so nothing
can pull the layers apart. Three contrasting models close the page: independent layers,
layers sharing weight and bias, and shared layers trained on two losses.
"""

# %%
# The model: the tie is one line
# -------------------------------
# Both layers are built as usual; then the second layer's weight is replaced by the
# first layer's :class:`~torch.nn.Parameter` object. From then on ``fc1.weight`` and
# ``fc2.weight`` are two names for one tensor. The assignment's direction decides which
# initial values survive; here both get the value 2 explicitly.
import torch
from torch import nn

import weightshare

torch.manual_seed(0)


class TwoLayers(nn.Module):
    """``fc2(fc1(x))`` where both layers hold one weight Parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(1, 1)
        self.fc2 = nn.Linear(1, 1)
        self.fc1.weight = nn.Parameter(torch.tensor([[2.0]]))
        self.fc2.weight = self.fc1.weight  # the tie: one Parameter, two names
        with torch.no_grad():
            self.fc1.bias.fill_(2.0)
            self.fc2.bias.fill_(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


model = TwoLayers()

# %%
# Both names are one object at one address, and :func:`weightshare.shared_groups` finds
# the group:
#
# >>> model.fc1.weight is model.fc2.weight
# True
# >>> model.fc1.weight.data_ptr() == model.fc2.weight.data_ptr()
# True
# >>> weightshare.shared_groups(model)
# [['fc1.weight', 'fc2.weight']]
#
# ``model.parameters()`` yields the shared weight once, so the model has three
# parameters to train, not four:
#
# >>> [name for name, _ in model.named_parameters()]
# ['fc1.weight', 'fc1.bias', 'fc2.bias']
#
# The forward pass
# ----------------
# With input 1 the first layer gives 2·1 + 2 = 4 and the second 2·4 + 4 = 12.
x = torch.tensor([1.0])
out = model(x)

# %%
# >>> out.item()
# 12.0
#
# One node in the autograd graph
# ------------------------------
# `torchviz <https://github.com/szagoruyko/pytorchviz>`_ draws the backward graph of
# ``out``. The shared weight is one blue node; its single ``AccumulateGrad`` node
# feeds both ``TBackward0`` nodes, one per layer that uses it. Gradient flows back
# along both paths into the one ``.grad``.
from torchviz import make_dot

shared_label = "fc1.weight = fc2.weight"
params = {shared_label: model.fc1.weight, "fc1.bias": model.fc1.bias}
params["fc2.bias"] = model.fc2.bias
graph = make_dot(out, params=params)
graph  # a cell that ends in a graph shows it, as in a notebook

# %%
# Counted in the drawing's source: one node carries the weight's label, and the one
# ``AccumulateGrad`` node below it has two outgoing edges, one per use.
edges = [line.split()[:3] for line in graph.body if " -> " in line]
weight_nodes = [line.split()[0] for line in graph.body if shared_label in line]
accumulate = [dst for src, _, dst in edges if src in weight_nodes]
uses_in_graph = [dst for src, _, dst in edges if src in accumulate]

# %%
# >>> len(weight_nodes), len(accumulate), len(uses_in_graph)
# (1, 1, 2)
#
# The gradient is the sum of the two uses
# ---------------------------------------
# By the chain rule, the derivative of ``out = w·(w·x + 2) + 4`` with respect to ``w``
# has one term per use of ``w``. The second layer's use contributes its input, 4; the
# first layer's use contributes ``w·x = 2``, carried through the second layer's
# weight. :func:`weightshare.grad_contributions` computes each use's term separately,
# without touching ``.grad``; the ordinary backward pass then gives their sum.
contributions = weightshare.grad_contributions(
    model, model.fc1.weight, lambda: model(x).sum()
)
out.backward()

import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(4, 3), layout="constrained")
uses = ["fc1's use", "fc2's use"]
ax.bar(uses, [g.item() for g in contributions.values()], color=["C0", "C1"])
ax.bar(["shared .grad"], [contributions["fc1"].item()], color="C0")
ax.bar(
    ["shared .grad"],
    [contributions["fc2"].item()],
    bottom=[contributions["fc1"].item()],
    color="C1",
)
ax.set_ylabel("gradient")
ax.set_title("one weight, two uses: 2 + 4 = 6")
plt.show()

# sphinx_gallery_thumbnail_number = 2

# %%
# >>> {use: grad.item() for use, grad in contributions.items()}
# {'fc1': 2.0, 'fc2': 4.0}
# >>> model.fc1.weight.grad.item()
# 6.0
# >>> model.fc1.weight.grad.item() == sum(g.item() for g in contributions.values())
# True
#
# The biases are not shared. ``fc1.bias`` gets ``w = 2`` (its effect passes through
# ``fc2``), ``fc2.bias`` gets 1:
#
# >>> model.fc1.bias.grad.item(), model.fc2.bias.grad.item()
# (2.0, 1.0)

# %%
# ``optimizer.step()`` keeps the tie
# ----------------------------------
# The optimizer holds the parameters that ``model.parameters()`` yields, so it holds
# the shared weight once and updates it once with its summed gradient. Plain SGD with
# learning rate 0.1 moves it from 2 to 2 − 0.1·6 = 1.4. The update is in place: the
# same object at the same address, seen through both names.
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
weight_before = model.fc1.weight
address_before = model.fc1.weight.data_ptr()
optimizer.step()

# %%
# >>> model.fc1.weight is weight_before and model.fc2.weight is weight_before
# True
# >>> model.fc2.weight.data_ptr() == address_before
# True
# >>> round(model.fc1.weight.item(), 6), round(model.fc2.weight.item(), 6)
# (1.4, 1.4)
# >>> len(optimizer.param_groups[0]["params"])
# 3
#
# Contrast 1: independent layers with equal values
# ------------------------------------------------
# Two layers that merely *start* equal are two parameters. Each gets only its own
# use's gradient (2 and 4), the same SGD step sends them to different values, and an
# in-place change to one does not show in the other.
independent = TwoLayers()
independent.fc2.weight = nn.Parameter(torch.tensor([[2.0]]))  # a second object
independent(x).backward()
torch.optim.SGD(independent.parameters(), lr=0.1).step()
after_step = (independent.fc1.weight.item(), independent.fc2.weight.item())
with torch.no_grad():
    independent.fc1.weight.fill_(-1.0)

# %%
# The step moved ``fc1.weight`` by its gradient 2 to 1.8 and ``fc2.weight`` by its
# gradient 4 to 1.6: the two drifted apart in one step. The ``fill_`` then changed
# ``fc1.weight`` alone.
#
# >>> weightshare.shared_groups(independent)
# []
# >>> [round(w, 6) for w in after_step]
# [1.8, 1.6]
# >>> round(independent.fc1.weight.item(), 6), round(independent.fc2.weight.item(), 6)
# (-1.0, 1.6)
#
# Contrast 2: sharing weight *and* bias
# -------------------------------------
# Tie the biases as well and the layers are one function applied twice. Any in-place
# change through one layer's name shows through the other's.
both = TwoLayers()
both.fc2.bias = both.fc1.bias
with torch.no_grad():
    both.fc1.bias.fill_(0.5)
    both.fc2.weight.mul_(3.0)

# %%
# >>> both.fc2.bias.item(), both.fc1.weight.item()
# (0.5, 6.0)
# >>> weightshare.shared_groups(both)
# [['fc1.weight', 'fc2.weight'], ['fc1.bias', 'fc2.bias']]
#
# Contrast 3: one shared layer, two losses
# ----------------------------------------
# A model often reaches a shared weight through several losses, for example two
# heads on one trunk. Each ``backward()`` adds into the one ``.grad``, so calling it
# once on each loss or once on ``loss_a + loss_b`` gives the same gradient: the sum.
two_losses = TwoLayers()
loss_a = two_losses.fc1(x).sum()  # uses the weight once: gradient x = 1
loss_b = two_losses(x).sum()  # uses it twice: gradient 6
loss_a.backward()
grad_after_a = two_losses.fc1.weight.grad.item()
loss_b.backward()
grad_after_both = two_losses.fc1.weight.grad.item()

one_backward = TwoLayers()
(one_backward.fc1(x).sum() + one_backward(x).sum()).backward()
torch.optim.SGD(two_losses.parameters(), lr=0.1).step()

# %%
# >>> grad_after_a, grad_after_both
# (1.0, 7.0)
# >>> one_backward.fc1.weight.grad.item() == grad_after_both
# True
# >>> two_losses.fc1.weight is two_losses.fc2.weight
# True
# >>> round(two_losses.fc2.weight.item(), 6)
# 1.3

# %%
# Conclusion
# ----------
# A tie is an identity: one :class:`~torch.nn.Parameter` object that several modules
# hold. Autograd sums the gradients of all its uses into that object's ``.grad``, and
# the optimizer updates that object in place, so the "layers" cannot drift apart: there
# is nothing to drift. Values that are merely equal do drift, after a single step.
#
# Next: :func:`weightshare.grad_contributions` and :func:`weightshare.shared_groups` in
# the :doc:`API reference </api>`, and the other pages of the
# :ref:`gallery <gallery>`.
