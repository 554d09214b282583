"""
Building big models on the meta device
======================================

*"The embedding and lm_head differ after the first step"*, or *"to_empty() broke
my tied weights"*. A tied model built on the meta device, materialised with
``to_empty()`` and filled with ``load_state_dict`` says
``<All keys matched successfully>`` and trains, but its embedding and output head are
two tensors: one Adam step at learning rate 0.01 puts them 0.02 apart.
``to_empty()``, ``load_state_dict(..., assign=True)`` and accelerate's
``init_empty_weights()`` all work name by name, so none of them keeps two names on
one tensor. The fix is to tie again *after* materialising, with
:func:`weightshare.retie` and the groups a :class:`weightshare.TieGuard` recorded, or
with a Hugging Face model's own ``tie_weights()``.
"""

# %%
# A tie on the meta device
# ------------------------
# Building a large model on the meta device costs no memory: parameters have shapes
# but no values. Tying works there, since a tie is only two names for one
# :class:`~torch.nn.Parameter` object. The tied :class:`weightshare.models.GPT`
# below stands for the big model; ``source`` plays the pretrained checkpoint.
# :class:`weightshare.TieGuard` records the ties while they hold.
import copy

import torch
import torch.nn.functional as F

import weightshare
from weightshare.models import GPT, GPTConfig

torch.manual_seed(0)
config = GPTConfig(vocab_size=16, context=8, n_layer=1, n_head=2, d_model=8)
source = GPT(config)
checkpoint = source.state_dict()
with torch.device("meta"):
    model = GPT(config)
guard = weightshare.TieGuard(model)

# %%
# >>> model.wte.weight.device
# device(type='meta')
# >>> guard.groups
# [['wte.weight', 'lm_head.weight']]

# %%
# ``to_empty()`` unties, and loading hides it
# -------------------------------------------
# :meth:`~torch.nn.Module.to_empty` allocates fresh memory for every *name*, so the
# two tied names get two tensors. Loading the checkpoint copies equal values into
# both, and PyTorch reports success.
model.to_empty(device="cpu")
print(model.load_state_dict(checkpoint))

# %%
# Equal values, two objects:
#
# >>> torch.equal(model.wte.weight, model.lm_head.weight)
# True
# >>> weightshare.shared_groups(model)
# []
# >>> len(list(model.parameters())) - len(list(source.parameters()))
# 1
#
# The guard recorded the tie while it held; :meth:`~weightshare.TieGuard.check` says
# which group broke, the likely cause and the fix:
try:
    guard.check()
except weightshare.BrokenTieError as err:
    print(f"BrokenTieError: {err}")

# %%
# One step later
# --------------
# One Adam step on the same batch, for the broken model and for a correctly tied
# copy of the source. In the tied model the shared weight's gradient is the sum of
# its two uses; in the broken one each tensor gets the gradient of its own use only.
tokens = torch.randint(config.vocab_size, (4, config.context + 1))


def train_step(net: GPT) -> None:
    """One Adam step (lr 0.01) on next-token prediction over ``tokens``."""
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    logits = net(tokens[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    optimizer.step()


reference = copy.deepcopy(source)  # a deep copy of the whole model keeps the tie
head_before = model.lm_head.weight.detach().clone()
train_step(reference)
train_step(model)
drift = (model.wte.weight - model.lm_head.weight).abs().max().item()

# %%
# The two halves add up to the tied model's gradient, but each copy was stepped with
# its own half:
#
# >>> tied_grad = reference.wte.weight.grad
# >>> torch.allclose(model.wte.weight.grad + model.lm_head.weight.grad, tied_grad)
# True
#
# Adam's first step moves every element by about the learning rate, *against* the
# sign of its gradient:
#
# >>> step = model.lm_head.weight - head_before
# >>> torch.equal(step.sign(), -model.lm_head.weight.grad.sign())
# True
#
# Where the two halves disagree in sign, the copies move in opposite directions:
# after one step they are twice the learning rate apart.
#
# >>> round(drift, 4)
# 0.02

# %%
# ``assign=True``: two parameters over one memory
# -----------------------------------------------
# ``load_state_dict(state, assign=True)`` makes each name a new
# :class:`~torch.nn.Parameter` around the state dict's tensor. A state dict read with
# :func:`torch.load` holds the two tied names as views of one memory, so the result
# is two parameters that alias: they cannot drift, but Adam steps the memory twice,
# with two states (`pytorch#188346 <https://github.com/pytorch/pytorch/issues/188346>`_).
import io

buffer = io.BytesIO()
torch.save(source.state_dict(), buffer)
buffer.seek(0)
from_disk = torch.load(buffer)
with torch.device("meta"):
    assigned = GPT(config)
assigned.load_state_dict(from_disk, assign=True)
start = assigned.wte.weight.detach().clone()
train_step(assigned)
moved = (assigned.wte.weight - start).abs().max().item()
moved_tied = (reference.wte.weight - source.wte.weight).abs().max().item()

# %%
# >>> weightshare.shared_groups(assigned)
# []
# >>> weightshare.storage_aliases(assigned)
# [['wte.weight', 'lm_head.weight']]
# >>> round(moved_tied, 4), round(moved, 4)
# (0.01, 0.02)
#
# The call also stores the ``assign`` flag in the state dict's metadata, so a later
# *plain* ``load_state_dict`` from the same dict assigns too, and unties a model that
# never asked for it (`pytorch#188166
# <https://github.com/pytorch/pytorch/issues/188166>`_; so in torch 2.13):
#
# >>> from_disk._metadata[""]["assign_to_params_buffers"]
# True
# >>> victim = GPT(config)
# >>> _ = victim.load_state_dict(from_disk)  # no assign=True here
# >>> weightshare.shared_groups(victim)
# []

# %%
# The fix: tie again after materialising
# --------------------------------------
# Call :func:`weightshare.retie` with the recorded groups right after ``to_empty()``
# (or after an ``assign=True`` load), before the first step. It keeps each group's
# first name, ``wte.weight``, and points the others at it. After one step the model
# is exactly the correctly tied one.
import matplotlib.pyplot as plt

with torch.device("meta"):
    fixed = GPT(config)
fixed_guard = weightshare.TieGuard(fixed)
fixed.to_empty(device="cpu")
weightshare.retie(fixed, fixed_guard.groups)
fixed.load_state_dict(checkpoint)
train_step(fixed)


def distance(net: GPT) -> float:
    """Largest difference from the tied reference, over the two tied names."""
    names = ("wte.weight", "lm_head.weight")
    diffs = [net.get_parameter(n) - reference.get_parameter(n) for n in names]
    return max(diff.abs().max().item() for diff in diffs)


routes = {"to_empty + load": model, "assign=True": assigned, "retie": fixed}
fig, ax = plt.subplots(figsize=(5, 3), layout="constrained")
colors = ["tab:red", "tab:red", "tab:green"]
bars = ax.bar(list(routes), [distance(net) for net in routes.values()], color=colors)
ax.bar_label(bars, fmt="{:.2f}")
ax.set_ylabel("max |W − W of tied model|")
ax.set_title("One Adam step after building on the meta device")
plt.show()

# %%
# >>> fixed_guard.broken()
# []
# >>> torch.equal(fixed.lm_head.weight, reference.lm_head.weight)
# True
# >>> fixed.lm_head.weight is fixed.wte.weight
# True
#
# Re-tie before training, not after: once the copies have drifted, ``retie`` keeps
# ``wte.weight`` and drops what ``lm_head.weight`` learnt.

# %%
# Hugging Face models and accelerate's ``init_empty_weights``
# -----------------------------------------------------------
# accelerate builds on the meta device another way: inside ``init_empty_weights()``
# every parameter a module registers is replaced by a new meta
# :class:`~torch.nn.Parameter`. A tie made by assignment, as
# :class:`weightshare.models.GPT` makes it in ``__init__`` and a Hugging Face model
# in ``post_init``, is such a registration, so the model leaves the context manager
# already untied, with nothing left for a guard to record.
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from accelerate import init_empty_weights
from transformers import GPT2Config, GPT2LMHeadModel

sizes = dict(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2)
with init_empty_weights():
    empty = GPT(config)
    empty_gpt2 = GPT2LMHeadModel(GPT2Config(**sizes, bos_token_id=0, eos_token_id=0))

# %%
# >>> empty.wte.weight.device.type, empty.lm_head.weight is empty.wte.weight
# ('meta', False)
# >>> weightshare.shared_groups(empty), weightshare.shared_groups(empty_gpt2)
# ([], [])
#
# A Hugging Face model ties itself again with ``tie_weights()`` (as its config's
# ``tie_word_embeddings`` says), any model with :func:`weightshare.retie` and groups
# recorded on a build that kept the tie, here ``guard.groups``. Both belong *after*
# ``to_empty()``: a tie made on the meta device is a tie made before ``to_empty()``,
# and the first section showed what ``to_empty()`` does to those.
#
# >>> weightshare.retie(empty, guard.groups)  # on the meta device: too early
# >>> _ = empty.to_empty(device="cpu")
# >>> weightshare.shared_groups(empty)
# []
# >>> weightshare.retie(empty, guard.groups)  # after to_empty(): it holds
# >>> _ = empty_gpt2.to_empty(device="cpu")
# >>> empty_gpt2.tie_weights()
# >>> weightshare.shared_groups(empty), weightshare.shared_groups(empty_gpt2)
# ([['wte.weight', 'lm_head.weight']], [['transformer.wte.weight', 'lm_head.weight']])

# %%
# Conclusion
# ----------
# ``to_empty()``, ``load_state_dict(..., assign=True)`` and ``init_empty_weights()``
# work name by name, so they cannot keep two names on one tensor. Nothing fails; the
# model trains as an untied model whose two halves started equal. Users have met this
# in accelerate (`accelerate#3668
# <https://github.com/huggingface/accelerate/issues/3668>`_, `accelerate#1204
# <https://github.com/huggingface/accelerate/pull/1204>`_) and in FSDP recipes that
# build on the meta device
# (`torchtune#616 <https://github.com/meta-pytorch/torchtune/issues/616>`_,
# `verl#7834 <https://github.com/verl-project/verl/issues/7834>`_). Record the ties
# with :class:`weightshare.TieGuard` before materialising, call
# :func:`weightshare.retie` (or ``tie_weights()``) *after* ``to_empty()``, and check
# the guard before training. Which accelerate releases untie: the
# :ref:`version table <version-table>`.
#
# Next: :doc:`plot_module_conversion` (moving or converting a built model unties it
# too), and the :doc:`symptom index </symptoms>`, which lists every Fix page.
