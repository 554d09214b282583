"""
Building big models on the meta device
======================================

Nothing fails. A tied model built on the meta device, materialised with
``to_empty()`` and filled with ``load_state_dict`` runs and trains, but from the first
optimizer step its embedding and output head are two tensors that drift apart. The
embedding gets only its input-side gradient, and the optimizer steps two tensors
where there was one. ``load_state_dict(..., assign=True)`` breaks the tie the same
way, and accelerate's ``init_empty_weights()`` unties such a model before it is even
materialised. This page measures the damage after one step, lets
:class:`weightshare.TieGuard` name the broken group, and repairs the tie with
:func:`weightshare.retie`, or with a Hugging Face model's own ``tie_weights()``.
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

# %%
# One step later
# --------------
# One Adam step on the same batch, for the broken model and for a correctly tied
# copy of the source. In the tied model the shared weight's gradient is the sum of
# its two uses; in the broken one each tensor gets only its own use, and Adam moves
# each by its own half.
tokens = torch.randint(config.vocab_size, (4, config.context + 1))


def train_step(net: GPT) -> None:
    """One Adam step (lr 0.01) on next-token prediction over ``tokens``."""
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    logits = net(tokens[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    optimizer.step()


reference = copy.deepcopy(source)  # a deep copy of the whole model keeps the tie
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
# Adam's first step moves every element by about the learning rate, in the direction
# of its gradient's sign. Where the two halves disagree in sign, the copies move in
# opposite directions: after one step they are twice the learning rate apart.
#
# >>> round(drift, 4)
# 0.02

# %%
# ``assign=True``: two parameters over one memory
# -----------------------------------------------
# ``load_state_dict(state, assign=True)`` skips the copy and makes each name a new
# :class:`~torch.nn.Parameter` around the state dict's tensor. A state dict read with
# :func:`torch.load` (or taken from a live model) holds the two tied names as views of
# one memory, so the result is two parameters that alias: they cannot drift, but the
# optimizer holds two entries and Adam steps the memory twice, with two separate
# states (`pytorch#188346 <https://github.com/pytorch/pytorch/issues/188346>`_).
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
# The call also leaves a mark on the state dict it was given: PyTorch stores the
# ``assign`` flag in the dict's metadata, so a later *plain* ``load_state_dict`` from
# the same dict assigns too, and unties a model that never asked for it
# (`pytorch#188166 <https://github.com/pytorch/pytorch/issues/188166>`_; still so
# in the pinned torch 2.13):
#
# >>> from_disk._metadata[""]["assign_to_params_buffers"]
# True
# >>> victim = GPT(config)
# >>> _ = victim.load_state_dict(from_disk)  # no assign=True here
# >>> weightshare.shared_groups(victim)
# []

# %%
# The guard names the broken group
# --------------------------------
# The guard recorded the tie on the meta device; :meth:`~weightshare.TieGuard.check`
# now says which group broke, the likely cause and the fix.
try:
    guard.check()
except weightshare.BrokenTieError as err:
    print(f"BrokenTieError: {err}")

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
# Hugging Face: ``tie_weights()``
# -------------------------------
# Transformers models tie in ``__init__`` even on the meta device (since
# `transformers#43523 <https://github.com/huggingface/transformers/pull/43523>`_), and
# ``to_empty()`` unties them like any other model. Their ``tie_weights()`` ties again
# according to ``config.tie_word_embeddings``.
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from transformers import GPT2Config, GPT2LMHeadModel

sizes = dict(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2)
hf_config = GPT2Config(**sizes, bos_token_id=0, eos_token_id=0)
with torch.device("meta"):
    gpt2 = GPT2LMHeadModel(hf_config)
hf_guard = weightshare.TieGuard(gpt2)
gpt2.to_empty(device="cpu")
broken_groups = hf_guard.broken()
gpt2.tie_weights()

# %%
# >>> hf_guard.groups
# [['transformer.wte.weight', 'lm_head.weight']]
# >>> broken_groups == hf_guard.groups
# True
# >>> hf_guard.broken()
# []

# %%
# accelerate's ``init_empty_weights`` unties at once
# --------------------------------------------------
# accelerate builds on the meta device another way: inside ``init_empty_weights()``
# every parameter a module registers is replaced by a new meta
# :class:`~torch.nn.Parameter`. A tie made by assignment in ``__init__``, as
# :class:`weightshare.models.GPT` makes it, is such a registration, so the model
# leaves the context manager already untied, with nothing to record for a guard.
# A Hugging Face model does too: the tying that its ``post_init`` does is an
# assignment as well.
from accelerate import init_empty_weights

with init_empty_weights():
    empty = GPT(config)
    empty_gpt2 = GPT2LMHeadModel(hf_config)

# %%
# >>> empty.wte.weight.device.type, empty.lm_head.weight is empty.wte.weight
# ('meta', False)
# >>> weightshare.shared_groups(empty), weightshare.shared_groups(empty_gpt2)
# ([], [])
#
# Outside the context manager, the Hugging Face model's ``tie_weights()`` ties it
# again, and for any model the groups recorded on a build that kept the tie, here
# ``guard.groups`` from the start of the page, do it with :func:`weightshare.retie`,
# before ``to_empty()`` or after:
#
# >>> empty_gpt2.tie_weights()
# >>> weightshare.retie(empty, guard.groups)
# >>> weightshare.shared_groups(empty), weightshare.shared_groups(empty_gpt2)
# ([['wte.weight', 'lm_head.weight']], [['transformer.wte.weight', 'lm_head.weight']])

# %%
# Conclusion
# ----------
# ``to_empty()`` and ``load_state_dict(..., assign=True)`` work name by name, so they
# cannot keep two names on one tensor. Nothing fails; the model trains as an untied
# model whose two halves started equal. Users have met this in accelerate's
# ``init_empty_weights``
# (`accelerate#3668 <https://github.com/huggingface/accelerate/issues/3668>`_), when
# loading into a meta-initialised model
# (`accelerate#1204 <https://github.com/huggingface/accelerate/pull/1204>`_), with
# FSDP recipes that build on the meta device
# (`torchtune#616 <https://github.com/meta-pytorch/torchtune/issues/616>`_,
# `verl#7834 <https://github.com/verl-project/verl/issues/7834>`_), and as a
# first-step loss spike after resuming, once the drifted head was left out of a
# checkpoint (`NVIDIA-NeMo/Automodel#2511
# <https://github.com/NVIDIA-NeMo/Automodel/pull/2511>`_). Record the ties with
# :class:`weightshare.TieGuard` before materialising, call :func:`weightshare.retie`
# (or ``tie_weights()``) right after, and check the guard before training. Which
# accelerate releases untie: the :ref:`version table <version-table>`.
#
# Next: :doc:`plot_copies_not_ties` (ties that were never ties), the
# :doc:`symptom index </symptoms>`, and :func:`weightshare.retie` in the
# :doc:`API reference </api>`.
