"""
Optimizer groups and gradient clipping
======================================

*"ValueError: some parameters appear in more than one parameter group"*, *"optimizer
contains a parameter group with duplicate parameters"*, a gradient norm that reads
√2 too large, or an EMA that runs ahead of the model. All four come from handing a
tied weight to PyTorch twice, once under each of its names; a fifth, a head that
never trains, from replacing a weight after the optimizer was made. This page reproduces
each with the real calls on a tiny tied language model and proves the fix: collect
parameters by identity (:func:`weightshare.param_groups`,
:func:`weightshare.unique_parameters`, or ``model.parameters()``, which lists a
shared parameter once) and average with
:class:`~torch.optim.swa_utils.AveragedModel`.
"""

# %%
# A tied model
# ------------
# An embedding whose weight is also the output projection, with a norm in between:
# the weight is an :class:`~torch.nn.Embedding` weight *and* a
# :class:`~torch.nn.Linear` weight. Tiny sizes keep the numbers readable: the tied
# weight has four elements.
import copy
import warnings

import matplotlib.pyplot as plt
import torch
from torch import nn

import weightshare

torch.manual_seed(0)


class TinyLM(nn.Module):
    """Embedding, LayerNorm, and an output layer tied to the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(2, 2)
        self.norm = nn.LayerNorm(2)
        self.head = nn.Linear(2, 2, bias=False)
        self.head.weight = self.emb.weight  # the tie

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.emb(x)))


model = TinyLM()

# %%
# Decay by module type puts the tied weight in both groups
# --------------------------------------------------------
# A common recipe (minGPT's, for one) decays the weights of linear layers and
# exempts embeddings and norms. Collected module by module, the tied weight lands
# in both lists, and the optimizer refuses:
decay = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
no_decay = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
no_decay += [model.norm.weight, model.norm.bias]
try:
    torch.optim.AdamW(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=0.1
    )
except ValueError as err:
    print(f"ValueError: {err}")

# %%
# The cause is identity: ``decay[0] is no_decay[0]``. Splitting
# ``model.named_parameters()`` by name avoids the error but has the opposite trap:
# it lists the tied weight under its first name only, so a rule about the other
# name never fires.
#
# >>> decay[0] is no_decay[0]
# True
# >>> "head.weight" in dict(model.named_parameters())
# False
#
# The fix: :func:`weightshare.param_groups` asks the rule about *every* name of each
# parameter and puts each parameter in one group. When the names disagree, as here,
# it says so instead of guessing, and ``tied=`` decides:


def by_type(name: str, module: nn.Module, param: nn.Parameter) -> bool:
    """True for what must not decay: biases, embeddings, norms."""
    return name.endswith("bias") or isinstance(module, (nn.Embedding, nn.LayerNorm))


try:
    weightshare.param_groups(model, weight_decay=0.1, no_decay=by_type)
except ValueError as err:
    print(str(err).partition("; ")[0])
groups = weightshare.param_groups(model, 0.1, no_decay=by_type, tied="no_decay")
optimizer = torch.optim.AdamW(groups, lr=0.1)

# %%
# >>> [len(group["params"]) for group in optimizer.param_groups]
# [0, 3]
# >>> sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
# True

# %%
# Listed twice in one group: a warning, and two steps
# ---------------------------------------------------
# Build the list from both modules' ``.parameters()`` and the duplicate sits in one
# group. PyTorch only warns (an error was proposed in
# `pytorch#41597 <https://github.com/pytorch/pytorch/pull/41597>`_ and softened to
# this warning), and ``step()`` then updates the tensor once per listing: plain SGD
# with learning rate 0.1 and a gradient of 1 moves it by 0.2, not 0.1.
params = [*model.emb.parameters(), *model.head.parameters()]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    sgd = torch.optim.SGD(params, lr=0.1)
print(f"UserWarning: {caught[0].message}")

before = model.emb.weight.detach().clone()
model.emb.weight.grad = torch.ones_like(model.emb.weight)
sgd.step()
moved = (before - model.emb.weight).detach()

# %%
# >>> [round(v, 6) for v in moved.flatten().tolist()]
# [0.2, 0.2, 0.2, 0.2]
# >>> len(weightshare.unique_parameters(params))
# 1

# %%
# Clipping a list with the weight twice: √2 in the norm, the coefficient twice
# ----------------------------------------------------------------------------
# :func:`torch.nn.utils.clip_grad_norm_` computes the total norm over the tensors
# it is given and multiplies each one's ``.grad`` by ``max_norm / total_norm``. With
# the tied weight listed twice, its gradient enters the norm twice, and the one
# ``.grad`` is multiplied twice. Two real calls, on a gradient of 10s:


def clip(parameters: list[torch.Tensor]) -> tuple[float, float]:
    """Set the tied weight's gradient to 10s, clip to 1; return (norm, grad)."""
    model.emb.weight.grad = torch.full_like(model.emb.weight, 10.0)
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm=1.0)
    return round(norm.item(), 4), round(model.emb.weight.grad[0, 0].item(), 6)


listed_twice = clip(params)
listed_once = clip(weightshare.unique_parameters(params))

# %%
# The true norm of four 10s is 20, so clipping to 1 should leave 10 / 20 = 0.5.
# Listed twice, the norm reads 20·√2 = 28.28 and the gradient ends at
# 10 / 28.28² = 0.0125, forty times smaller. Over
# ``weightshare.unique_parameters(params)`` (or ``model.parameters()``), it is right:
#
# >>> listed_twice
# (28.2843, 0.0125)
# >>> listed_once
# (20.0, 0.5)
#
# The same √2 appears at scale: with pipeline parallelism the tied weight lives on
# two stages as two copies, and a norm that sums both reads √2 too large and
# over-clips (`Megatron-LM#7228 <https://github.com/NVIDIA/Megatron-LM/pull/7228>`_).
fig, ax = plt.subplots(figsize=(4, 3))
labels = ["listed once", "listed twice"]
values = [listed_once[1], listed_twice[1]]
ax.bar(labels, values, color=["tab:green", "tab:red"])
for i, value in enumerate(values):
    ax.text(i, value, f"{value:g}", ha="center", va="bottom")
ax.set_ylim(0, 0.6)
ax.set_ylabel("gradient after clipping")
ax.set_title("clip_grad_norm_(max_norm=1) on 10s")
fig.tight_layout()

# %%
# An EMA over ``state_dict()`` updates the tied tensor twice
# ----------------------------------------------------------
# An exponential moving average with decay 0.9, written as a loop over
# ``state_dict()``, meets the tied tensor under both of its keys. Start the average
# at 0, set the model's weights to 1 and update once: the average should be 0.1,
# but the tied weight gets 0.9·0.1 + 0.1 = 0.19.
# :class:`~torch.optim.swa_utils.AveragedModel` iterates ``parameters()``, which
# lists it once.
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

with torch.no_grad():
    for p in model.parameters():
        p.zero_()
ema_loop = copy.deepcopy(model)
ema_swa = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
ema_swa.update_parameters(model)  # the first call copies the model
with torch.no_grad():
    for p in model.parameters():
        p.fill_(1.0)
    current = model.state_dict()
    for key, value in ema_loop.state_dict().items():
        value.mul_(0.9).add_(current[key], alpha=0.1)
ema_swa.update_parameters(model)
tied_loop = round(ema_loop.emb.weight[0, 0].item(), 6)
norm_loop = round(ema_loop.norm.weight[0].item(), 6)
tied_swa = round(ema_swa.module.emb.weight[0, 0].item(), 6)

# %%
# >>> [key for key in current if key.endswith("weight")]
# ['emb.weight', 'norm.weight', 'head.weight']
# >>> tied_loop, norm_loop, tied_swa
# (0.19, 0.1, 0.1)
# >>> ema_swa.module.head.weight is ema_swa.module.emb.weight
# True

# %%
# A parameter replaced after the optimizer is made is never trained
# -----------------------------------------------------------------
# The optimizer holds the Parameter objects it was given and nothing else. Replacing
# one afterwards, here the head's weight by a new :class:`~torch.nn.Parameter` with
# the embedding's values (as code that loads a pretrained head does), leaves the
# optimizer with the old object: the new weight gets a gradient at every step and
# no update, and the tie is gone too.
late = TinyLM()
late_optimizer = torch.optim.SGD(late.parameters(), lr=0.1)
late_guard = weightshare.TieGuard(late)
late.head.weight = nn.Parameter(late.emb.weight.detach().clone())
head_before = late.head.weight.detach().clone()
late(torch.tensor([0, 1])).sum().backward()
late_optimizer.step()
late_optimizer.zero_grad()
held = [p for group in late_optimizer.param_groups for p in group["params"]]

# %%
# The step left the new weight exactly as it was, and its gradient is still there
# after the optimizer's ``zero_grad`` (which clears only what the optimizer holds);
# the guard reports the tie broken:
#
# >>> any(p is late.head.weight for p in held)
# False
# >>> torch.equal(late.head.weight, head_before), late.head.weight.grad is not None
# (True, True)
# >>> late_guard.broken()
# [['emb.weight', 'head.weight']]
#
# The fix: :func:`weightshare.retie` puts the embedding's Parameter, the object the
# optimizer holds, back under both names, and the next step trains the head again.
# (A weight you mean to replace for good goes in before the optimizer is made.)
weightshare.retie(late, late_guard.groups)
head_before = late.head.weight.detach().clone()
late_optimizer.zero_grad()
late(torch.tensor([0, 1])).sum().backward()
late_optimizer.step()

# %%
# >>> late.head.weight is late.emb.weight, late_guard.broken()
# (True, [])
# >>> torch.equal(late.head.weight, head_before)
# False

# %%
# Conclusion
# ----------
# Every failure here is one tensor handed over twice. PyTorch's containers know
# identity: ``model.parameters()`` and :class:`~torch.optim.swa_utils.AveragedModel`
# list a tied weight once, and so do :func:`weightshare.param_groups` (two decay
# groups, each parameter in one, every name consulted) and
# :func:`weightshare.unique_parameters` (any hand-built list). Lists built module by
# module, or from ``state_dict()``, see it under every name. Users have hit each
# form: `pytorch#40967 <https://github.com/pytorch/pytorch/issues/40967>`_ (twice in
# one group is stepped twice, in two groups an error) and
# `DeepSpeed#195 <https://github.com/deepspeedai/DeepSpeed/issues/195>`_ (memory
# allocated for each listing of a tied parameter).
#
# Next: :doc:`plot_transforms_functional` (rewriting one side of a tie), and
# :func:`weightshare.param_groups` in the :doc:`API reference </api>`.
