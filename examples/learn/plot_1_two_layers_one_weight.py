"""
1. Two layers, one weight
=========================

The claim: when two :class:`~torch.nn.Linear` layers hold one and the same
:class:`~torch.nn.Parameter` object, that object's gradient is the *sum* of the
gradients of its two uses, and ``optimizer.step()`` updates that one object, so the
layers cannot drift apart. The smallest such model proves it with whole numbers: a
shared weight of 2, biases 2 and 4, input 1, and a gradient of 2 + 4 = 6.
"""

# %%
# The model: the tie is one line
# -------------------------------
# Both layers are built as usual; then the second layer's weight is replaced by the
# first layer's :class:`~torch.nn.Parameter` object. From then on ``fc1.weight`` and
# ``fc2.weight`` are two names for one tensor. The direction of the assignment
# decides whose initial values survive; here the shared weight is set to 2.
#
# ``weightshare`` is this site's own small library. It is not on PyPI: every page
# offers its wheel for download at the bottom, in the box "Run this example on your
# own machine", with the commands that install it next to the pinned PyTorch.
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
copied = TwoLayers()
copied.fc2.weight = nn.Parameter(copied.fc1.weight.detach().clone())  # not a tie

# %%
# What a tie is, drawn from the live objects
# ------------------------------------------
# Beside the tied model stands ``copied``, whose second layer got a *copy* of the
# first layer's weight: equal values, a second object. The drawing is made from the
# objects themselves: one box per distinct ``id()`` of a Parameter, one per distinct
# address of its data (``data_ptr()``), and an arrow from each attribute to the
# object it holds.
import graphviz


def draw_weights(models: dict[str, nn.Module]) -> graphviz.Digraph:
    """Attribute names -> Parameter objects -> storages, for each model."""
    graph = graphviz.Digraph(node_attr={"shape": "box"})
    for title, net in models.items():
        with graph.subgraph(name=f"cluster_{title}") as box:
            box.attr(label=title)
            edges = {}  # each arrow once, in the order drawn
            for name in ("fc1.weight", "fc2.weight"):
                param = net.get_parameter(name)
                obj, data = f"{title}/{id(param)}", f"{title}/{param.data_ptr()}"
                box.node(f"{title}/{name}", name, shape="plaintext")
                box.node(obj, f"Parameter\nid {id(param):#x}", style="filled")
                box.node(data, f"storage\ndata_ptr {param.data_ptr():#x}")
                edges.update(dict.fromkeys([(f"{title}/{name}", obj), (obj, data)]))
            box.edges(list(edges))
    return graph


def objects(net: nn.Module) -> int:
    """How many Parameter objects the two weight names hold."""
    return len({id(net.get_parameter(f"{layer}.weight")) for layer in ("fc1", "fc2")})


draw_weights({"model (tied)": model, "copied": copied})

# %%
# The tied model's two names lead to one Parameter and one storage; the copy's lead
# to two of each, though their values are equal:
#
# >>> model.fc1.weight is model.fc2.weight, objects(model), objects(copied)
# (True, 1, 2)
# >>> model.fc1.weight.data_ptr() == model.fc2.weight.data_ptr()
# True
# >>> torch.equal(copied.fc1.weight, copied.fc2.weight)
# True
#
# :func:`weightshare.shared_groups` finds the tie, and ``model.parameters()`` yields
# the shared weight once, so the model has three parameters to train, not four:
#
# >>> weightshare.shared_groups(model), weightshare.shared_groups(copied)
# ([['fc1.weight', 'fc2.weight']], [])
# >>> [name for name, _ in model.named_parameters()]
# ['fc1.weight', 'fc1.bias', 'fc2.bias']

# %%
# Why the gradients of the uses add up
# ------------------------------------
# Give each use of the weight its own name: ``out = w₂·(w₁·x + b₁) + b₂`` with
# ``w₁ = w₂ = w``. In general a weight ``w`` enters the computation at ``k`` places,
# the loss is ``L = f(u_1, ..., u_k)`` with every ``u_i = w``, and the chain rule
# gives one term per use:
#
# .. math::
#
#    \frac{\partial L}{\partial w}
#    = \sum_{i=1}^{k} \frac{\partial L}{\partial u_i}
#      \frac{\partial u_i}{\partial w}
#    = \sum_{i=1}^{k} \frac{\partial L}{\partial u_i},
#
# since each ``∂u_i/∂w`` is 1. Here, with ``x = 1``, the forward pass gives
# 2·1 + 2 = 4 after ``fc1`` and 2·4 + 4 = 12 after ``fc2``. The term of ``fc2``'s use
# is that layer's input, ``w₁·x + b₁ = 4``. The term of ``fc1``'s use is
# ``∂out/∂w₁ = w₂·x = 2``: the input ``x = 1``, times the weight ``w₂ = 2`` of the
# layer that ``fc1``'s output passes through. The sum is 6.
#
# Autograd does exactly this: each use sends its term back to the one leaf tensor,
# whose ``.grad`` receives the sum. :func:`weightshare.grad_contributions` shows the
# terms one by one. It runs the loss once more with a separate alias of the weight
# (``w.view_as(w)``) for each call of a layer that holds it, and asks
# :func:`torch.autograd.grad` for the gradient of each alias, leaving ``.grad``
# untouched.
x = torch.tensor([1.0])
out = model(x)
contributions = weightshare.grad_contributions(
    model, model.fc1.weight, lambda: model(x).sum()
)
out.backward()

# %%
# >>> out.item()
# 12.0
# >>> {use: grad.item() for use, grad in contributions.items()}
# {'fc1': 2.0, 'fc2': 4.0}
# >>> model.fc1.weight.grad.item()
# 6.0
#
# The biases are not shared. ``fc1.bias`` gets ``w₂ = 2`` (its effect passes
# through ``fc2``), ``fc2.bias`` gets 1:
#
# >>> model.fc1.bias.grad.item(), model.fc2.bias.grad.item()
# (2.0, 1.0)

# %%
# ``optimizer.step()`` keeps the tie
# ----------------------------------
# The optimizer holds the parameters that ``model.parameters()`` yields, so it holds
# the shared weight once and updates it once with its summed gradient. Plain SGD with
# learning rate 0.1 moves it from 2 to 2 − 0.1·6 = 1.4, in place: the same object at
# the same address, seen through both names.
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
weight_before, address_before = model.fc1.weight, model.fc1.weight.data_ptr()
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

# %%
# The copy gets 2 and 4, and drifts
# ---------------------------------
# The copied model runs the same numbers through two Parameter objects, so plain
# PyTorch, with no helper, already shows the two terms: each object's ``.grad`` holds
# its own use's term only, 2 for ``fc1`` and 4 for ``fc2``. The same SGD step then
# sends the two weights to different values, and an in-place change to one does not
# show in the other.
copied(x).backward()
torch.optim.SGD(copied.parameters(), lr=0.1).step()
after_step = (copied.fc1.weight.item(), copied.fc2.weight.item())
with torch.no_grad():
    copied.fc1.weight.fill_(-1.0)

# %%
# >>> copied.fc1.weight.grad.item(), copied.fc2.weight.grad.item()
# (2.0, 4.0)
# >>> [round(w, 6) for w in after_step]
# [1.8, 1.6]
# >>> round(copied.fc1.weight.item(), 6), round(copied.fc2.weight.item(), 6)
# (-1.0, 1.6)

# %%
# Two losses add up too
# ---------------------
# A model often reaches a shared weight through several losses, for example two
# heads on one trunk. Each ``backward()`` adds into the one ``.grad``, so calling it
# once per loss or once on ``loss_a + loss_b`` gives the same gradient: the sum.
two_losses = TwoLayers()
two_losses.fc1(x).sum().backward()  # uses the weight once: gradient x = 1
grad_after_a = two_losses.fc1.weight.grad.item()
two_losses(x).sum().backward()  # uses it twice: gradient 6
grad_after_both = two_losses.fc1.weight.grad.item()
one_backward = TwoLayers()
(one_backward.fc1(x).sum() + one_backward(x).sum()).backward()

# %%
# >>> grad_after_a, grad_after_both
# (1.0, 7.0)
# >>> one_backward.fc1.weight.grad.item() == grad_after_both
# True

# %%
# Conclusion
# ----------
# A tie is an identity: one :class:`~torch.nn.Parameter` object that several modules
# hold. Autograd sums the gradients of all its uses into that object's ``.grad``, and
# the optimizer updates that object in place, so the layers cannot drift apart: there
# is nothing to drift. Values that are merely equal drift after a single step.
#
# Next: :doc:`/auto_examples/learn/plot_2_tied_transformer`, where one matrix has
# three uses. When something goes wrong instead, two Fix pages follow from this one:
# :doc:`/auto_examples/fix_build/plot_copies_not_ties` (ties that were copies all
# along) and :doc:`/auto_examples/fix_train/plot_optimizer_groups_clipping` (a
# shared weight listed twice, in parameter groups or in clipping).
