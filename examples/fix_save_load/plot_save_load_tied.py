"""
Saving and loading a tied model
===============================

``safetensors.torch.save_file(model.state_dict(), path)`` on a model with tied weights
fails with ``RuntimeError: Some tensors share memory, this will lead to duplicate
memory on disk and potential differences when loading them again``. The reverse trap
makes no noise at all: a checkpoint whose two tied keys hold *different* values (an
untied fine-tune) loads into a tied model with ``<All keys matched successfully>``,
and one of the two values is silently dropped. This page runs both on a tiny GPT,
then the fixes: store one tensor per tie (``safetensors.torch.save_model`` or
:func:`weightshare.save`), and load with :func:`weightshare.load`, which refuses tied
keys that disagree. Hugging Face's ``save_pretrained`` and ``from_pretrained`` close
the page: what they write for a tied head, and what ``tie_word_embeddings`` decides.
"""

# %%
# The error
# ---------
# :class:`weightshare.models.GPT` ties its output projection ``lm_head`` to the token
# embedding ``wte``, as GPT-2 does. Saving its state dict with safetensors fails.
# The message lists the tied names as a Python set, whose order changes from run to
# run, so the page prints ``[...]`` in its place.
import os
import tempfile

import safetensors.torch
import torch

import weightshare
from weightshare.models import GPT, GPTConfig

torch.manual_seed(0)
config = GPTConfig(vocab_size=16, context=8, n_layer=1, n_head=2, d_model=8)
model = GPT(config)
workdir = tempfile.TemporaryDirectory()
folder = workdir.name
path = os.path.join(folder, "model.safetensors")
try:
    safetensors.torch.save_file(model.state_dict(), path)
except RuntimeError as err:
    lines = [line.strip() for line in str(err).strip().splitlines()]
    print(f"RuntimeError: {lines[0].split(': [')[0]}: [...]", *lines[1:], sep="\n")

# %%
# The cause: two names, one storage
# ---------------------------------
# ``state_dict()`` lists a tied parameter under each of its names, and both entries
# point at the same memory. :func:`torch.save` stores that memory once and restores
# the sharing on load; the safetensors format has no way to say "this name is that
# tensor", so ``save_file`` refuses rather than write two copies that could later
# disagree. Users have met this on fine-tuned GPT-2 and Llama models
# (`safetensors#98 <https://github.com/safetensors/safetensors/issues/98>`_,
# `#202 <https://github.com/safetensors/safetensors/issues/202>`_,
# `#304 <https://github.com/safetensors/safetensors/issues/304>`_), and Hugging Face
# changed ``save_pretrained`` to drop the duplicate keys
# (`transformers#22437 <https://github.com/huggingface/transformers/pull/22437>`_).
#
# >>> state = model.state_dict()
# >>> state["wte.weight"].data_ptr() == state["lm_head.weight"].data_ptr()
# True
# >>> weightshare.shared_groups(model)
# [['wte.weight', 'lm_head.weight']]

# %%
# The fix: one tensor per tie
# ---------------------------
# ``safetensors.torch.save_model`` keeps one name of each tie (the first in
# alphabetical order) and notes in the file's metadata which name the others stand
# for; ``load_model`` reads the file back into a model built the same way
# (`"Torch shared tensors"
# <https://huggingface.co/docs/safetensors/torch_shared_tensors>`_ in the safetensors
# documentation). :func:`weightshare.save` does the same and records the tie groups;
# :func:`weightshare.load` copies the values in place, so the tie survives.
from safetensors import safe_open

safetensors.torch.save_model(model, path)
with safe_open(path, framework="pt") as f:
    stored_keys, stored_metadata = list(f.keys()), f.metadata()
restored = GPT(config)
missing_unexpected = safetensors.torch.load_model(restored, path)

ws_path = os.path.join(folder, "model-ws.safetensors")
weightshare.save(model, ws_path)
restored_ws = GPT(config)
weightshare.load(restored_ws, ws_path)

# %%
# Of the tied pair, the file holds ``lm_head.weight`` only; the metadata maps
# ``wte.weight`` to it, and the reloaded model is tied and equal to the saved one:
#
# >>> [key for key in stored_keys if key in ("wte.weight", "lm_head.weight")]
# ['lm_head.weight']
# >>> stored_metadata["wte.weight"]
# 'lm_head.weight'
# >>> missing_unexpected
# (set(), [])
# >>> restored.lm_head.weight is restored.wte.weight
# True
# >>> torch.equal(restored.lm_head.weight, model.lm_head.weight)
# True
#
# The weightshare file records the group, and loading keeps the tie:
#
# >>> weightshare.checkpoint_groups(ws_path)
# [['wte.weight', 'lm_head.weight']]
# >>> weightshare.shared_groups(restored_ws)
# [['wte.weight', 'lm_head.weight']]
# >>> torch.equal(restored_ws.wte.weight, model.wte.weight)
# True

# %%
# The silent trap: tied keys that disagree
# ----------------------------------------
# A model fine-tuned *untied* (``tie_embeddings=False``) saves two different tensors
# under the two names. Loaded into the tied model, both are copied, one after the
# other, into the one shared tensor. PyTorch reports success.
import dataclasses

import matplotlib.pyplot as plt

finetuned = GPT(dataclasses.replace(config, tie_embeddings=False)).state_dict()
tied = GPT(config)
print(tied.load_state_dict(finetuned))

names = ["wte.weight", "lm_head.weight"]
lost = [(tied.wte.weight - finetuned[name]).abs().max().item() for name in names]
fig, ax = plt.subplots(figsize=(5, 3), layout="constrained")
bars = ax.bar(names, lost, color=["tab:red", "tab:green"])
ax.bar_label(bars, fmt="{:.3f}")
ax.set_xlabel("key in the checkpoint")
ax.set_ylabel("max |loaded − saved|")
ax.set_title("load_state_dict: lm_head.weight silently wins")
plt.show()

# %%
# The shared tensor now holds the checkpoint's ``lm_head.weight``; the fine-tuned
# embedding is gone. The winner is not the later key in the file but the later
# *module* in the model: ``load_state_dict`` walks the model, and ``lm_head`` comes
# after ``wte``. Reversing the file's order changes nothing:
#
# >>> torch.equal(tied.wte.weight, finetuned["lm_head.weight"])
# True
# >>> torch.equal(tied.wte.weight, finetuned["wte.weight"])
# False
# >>> _ = tied.load_state_dict(dict(reversed(finetuned.items())))
# >>> torch.equal(tied.wte.weight, finetuned["lm_head.weight"])
# True

# %%
# Refusing instead of guessing
# ----------------------------
# Saved as a plain safetensors file, the same checkpoint is refused by both loaders.
# ``safetensors.torch.load_model`` expects one key per tie and calls the other one
# unexpected; :func:`weightshare.load` says which tied keys disagree, by how much,
# and that the model was not changed.
ft_path = os.path.join(folder, "finetuned.safetensors")
safetensors.torch.save_file(finetuned, ft_path)
loaders = {
    "safetensors.torch.load_model": safetensors.torch.load_model,
    "weightshare.load": weightshare.load,
}
targets = {label: GPT(config) for label in loaders}
before = {label: target.wte.weight.clone() for label, target in targets.items()}
for label, load in loaders.items():
    try:
        load(targets[label], ft_path)
    except (RuntimeError, ValueError) as err:
        print(f"{label}: {type(err).__name__}: {str(err).replace(folder, '<tmp>')}")

# %%
# ``load_model`` raises only after loading: the model it was given already holds the
# file's ``lm_head.weight`` in its shared tensor. :func:`weightshare.load` checks the
# whole file first and leaves its model as it was:
#
# >>> label = "safetensors.torch.load_model"
# >>> torch.equal(targets[label].wte.weight, finetuned["lm_head.weight"])
# True
# >>> torch.equal(targets["weightshare.load"].wte.weight, before["weightshare.load"])
# True
#
# The fix depends on what you want. If the fine-tune untied the two on purpose, untie
# them in the model too (:func:`weightshare.untie`) and both values load:
#
# >>> _ = weightshare.untie(tied, "lm_head.weight")
# >>> weightshare.load(tied, ft_path)
# >>> torch.equal(tied.wte.weight, finetuned["wte.weight"])
# True
# >>> torch.equal(tied.lm_head.weight, finetuned["lm_head.weight"])
# True

# %%
# Hugging Face: what ``save_pretrained`` writes
# ---------------------------------------------
# A tiny GPT-2 from a local config (no download). Its config says
# ``tie_word_embeddings=True``, so ``save_pretrained`` writes the embedding and no
# ``lm_head.weight``, and ``from_pretrained`` ties the head to it again. Transformers
# logs through Python's ``logging``; the page keeps those messages in a buffer and
# prints the ones it discusses.
import logging.handlers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()
hf_logging.disable_default_handler()
hf_log = logging.handlers.BufferingHandler(capacity=100)
hf_logging.get_logger().addHandler(hf_log)

sizes = dict(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2)
# Special token ids inside the 16-token vocabulary, or the config warns.
gpt2 = GPT2LMHeadModel(GPT2Config(**sizes, bos_token_id=0, eos_token_id=0))
gpt2_dir = os.path.join(folder, "gpt2")
gpt2.save_pretrained(gpt2_dir)
with safe_open(os.path.join(gpt2_dir, "model.safetensors"), framework="pt") as f:
    gpt2_keys = list(f.keys())
reloaded = GPT2LMHeadModel.from_pretrained(gpt2_dir)

# %%
# >>> gpt2.config.tie_word_embeddings
# True
# >>> "transformer.wte.weight" in gpt2_keys, "lm_head.weight" in gpt2_keys
# (True, False)
# >>> weightshare.shared_groups(reloaded)
# [['transformer.wte.weight', 'lm_head.weight']]
# >>> torch.equal(reloaded.lm_head.weight, gpt2.lm_head.weight)
# True

# %%
# What ``tie_word_embeddings`` decides
# ------------------------------------
# The flag, not the file, decides where the head comes from. Load the same files with
# ``tie_word_embeddings=False`` and ``lm_head.weight`` is missing: transformers
# initialises it at random and says so only in its load report. The model runs, with
# a random output layer: a Ministral checkpoint whose flag was not set generated
# gibberish this way
# (`transformers#43429 <https://github.com/huggingface/transformers/pull/43429>`_).
hf_log.flush()
headless, info = GPT2LMHeadModel.from_pretrained(
    gpt2_dir, tie_word_embeddings=False, output_loading_info=True
)
report = next(r.getMessage() for r in hf_log.buffer if "LOAD REPORT" in r.getMessage())
print(*[line.rstrip() for line in report.splitlines()[1:] if line.strip()], sep="\n")

# %%
# >>> info["missing_keys"]
# {'lm_head.weight'}
# >>> weightshare.shared_groups(headless)
# []
# >>> torch.equal(headless.lm_head.weight, gpt2.lm_head.weight)
# False
#
# The other way round, an untied fine-tune loaded with ``tie_word_embeddings=True``:
# from transformers 4.54, ``tie_weights()`` tied the two anyway and so overwrote the
# saved head, as reported in
# `transformers#42612 <https://github.com/huggingface/transformers/pull/42612>`_.
# The pinned transformers 5.23 compares the two tensors, keeps both and warns:
gpt2_untied = GPT2LMHeadModel(
    GPT2Config(**sizes, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
)
untied_dir = os.path.join(folder, "gpt2-untied")
gpt2_untied.save_pretrained(untied_dir)
hf_log.flush()
kept = GPT2LMHeadModel.from_pretrained(untied_dir, tie_word_embeddings=True)
print(*[r.getMessage() for r in hf_log.buffer], sep="\n")
workdir.cleanup()

# %%
# >>> weightshare.shared_groups(kept)
# []
# >>> torch.equal(kept.lm_head.weight, gpt2_untied.lm_head.weight)
# True

# %%
# Conclusion
# ----------
# A checkpoint should hold one tensor per tie, and loading should copy values into the
# model's existing parameters, never guess between two disagreeing copies.
# ``safetensors.torch.save_model``/``load_model`` and :func:`weightshare.save`/
# :func:`weightshare.load` both do that; :func:`weightshare.load` also refuses a file
# whose tied keys disagree, where ``load_state_dict`` keeps whichever module it
# visits last. With Hugging Face models, ``tie_word_embeddings`` must match how the
# checkpoint was trained. Which transformers and safetensors releases behave as
# shown here: the :ref:`version table <version-table>`.
#
# Next: :doc:`/auto_examples/fix_build/plot_meta_device_init` (ties lost before the
# first step, when a model is built on the meta device), the
# :doc:`symptom index </symptoms>`, and
# :func:`weightshare.checkpoint_groups` in the :doc:`API reference </api>`.
