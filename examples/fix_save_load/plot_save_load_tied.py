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
keys that disagree. Hugging Face models close the page: there the config's
``tie_word_embeddings``, not the file, decides where the head comes from.
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
# ``state_dict()`` lists a tied parameter under each of its names, both entries over
# one memory. :func:`torch.save` stores that memory once; the safetensors format
# cannot say "this name is that tensor", so ``save_file`` refuses rather than write
# two copies that could later disagree (users met it on fine-tuned GPT-2 and Llama
# models: `safetensors#98 <https://github.com/safetensors/safetensors/issues/98>`_,
# `#202 <https://github.com/safetensors/safetensors/issues/202>`_,
# `#304 <https://github.com/safetensors/safetensors/issues/304>`_).
#
# >>> state = model.state_dict()
# >>> state["wte.weight"].data_ptr() == state["lm_head.weight"].data_ptr()
# True
# >>> weightshare.shared_groups(model)
# [['wte.weight', 'lm_head.weight']]

# %%
# The fix: one tensor per tie
# ---------------------------
# ``safetensors.torch.save_model`` keeps one name of each tie and notes in the
# file's metadata which name the others stand for; ``load_model`` reads it back into
# a model built the same way (`"Torch shared tensors"
# <https://huggingface.co/docs/safetensors/torch_shared_tensors>`_).
# :func:`weightshare.save` does the same and records the tie groups;
# :func:`weightshare.load` copies the values in place, so the tie survives.
from safetensors import safe_open

safetensors.torch.save_model(model, path)
with safe_open(path, framework="pt") as f:
    stored_keys, stored_metadata = list(f.keys()), f.metadata()
restored = GPT(config)
safetensors.torch.load_model(restored, path)

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

# %%
# The silent trap: tied keys that disagree
# ----------------------------------------
# A model fine-tuned *untied* saves two different tensors under the two names.
# Loaded into the tied model, both are copied, one after the other, into the one
# shared tensor, and PyTorch reports success.
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
# Saved with ``save_file``, the fine-tune is refused by both loaders. So is
# ``cloned``, the tied model saved the usual way round the error above, every tensor
# cloned: its tied keys hold *equal* values in two places.
# ``safetensors.torch.load_model`` wants one key per tie and calls the other one
# unexpected, whatever it holds; :func:`weightshare.load` refuses only keys that
# disagree, says by how much, and leaves the model as it was.
ft_path = os.path.join(folder, "finetuned.safetensors")
safetensors.torch.save_file(finetuned, ft_path)
cloned_path = os.path.join(folder, "cloned.safetensors")
cloned = {key: value.clone() for key, value in model.state_dict().items()}
safetensors.torch.save_file(cloned, cloned_path)
loaders = {
    "safetensors.torch.load_model": safetensors.torch.load_model,
    "weightshare.load": weightshare.load,
}
targets, before, errors = {}, {}, {}
for file in (ft_path, cloned_path):
    for label, load in loaders.items():
        targets[label, file] = target = GPT(config)
        before[label, file] = target.wte.weight.detach().clone()
        try:
            load(target, file)
        except (RuntimeError, ValueError) as err:
            errors[label, file] = str(err).replace(folder, "<tmp>")
            name = f"{label}, {os.path.basename(file)}"
            print(f"{name}: {type(err).__name__}: {errors[label, file]}")

# %%
# ``load_model`` refuses the cloned file although its two keys are equal, and raises
# only after loading: given the fine-tune, its model already holds the file's
# ``lm_head.weight`` in the shared tensor. :func:`weightshare.load` checks the whole
# file first, and loads the cloned one with the tie kept:
#
# >>> torch.equal(cloned["wte.weight"], cloned["lm_head.weight"])
# True
# >>> "Unexpected key(s)" in errors["safetensors.torch.load_model", cloned_path]
# True
# >>> lm = targets["safetensors.torch.load_model", ft_path]
# >>> torch.equal(lm.wte.weight, finetuned["lm_head.weight"])
# True
# >>> key = "weightshare.load", ft_path
# >>> torch.equal(targets[key].wte.weight, before[key])
# True
# >>> weightshare.shared_groups(targets["weightshare.load", cloned_path])
# [['wte.weight', 'lm_head.weight']]
#
# If the fine-tune untied the two on purpose, untie them in the model too
# (:func:`weightshare.untie`) and both values load:
#
# >>> _ = weightshare.untie(tied, "lm_head.weight")
# >>> weightshare.load(tied, ft_path)
# >>> torch.equal(tied.wte.weight, finetuned["wte.weight"])
# True
# >>> torch.equal(tied.lm_head.weight, finetuned["lm_head.weight"])
# True

# %%
# Hugging Face: the config, not the file, decides
# -----------------------------------------------
# A tiny GPT-2 from a local config (no download), tied as its config says
# (``tie_word_embeddings=True``): ``save_pretrained`` writes no ``lm_head.weight``,
# and ``from_pretrained`` ties the head to the embedding again. Loaded with
# ``tie_word_embeddings=False``, the same files leave ``lm_head.weight`` missing:
# transformers initialises it at random and says so only in its load report, which
# the page catches from Python's ``logging`` and prints. The model runs, with a
# random output layer: a Ministral checkpoint whose flag was not set generated
# gibberish this way
# (`transformers#43429 <https://github.com/huggingface/transformers/pull/43429>`_).
import logging.handlers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()
hf_logging.disable_default_handler()
hf_log = logging.handlers.BufferingHandler(capacity=100)
hf_logging.get_logger().addHandler(hf_log)

# Special token ids inside the 16-token vocabulary, or the config warns.
sizes = dict(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2)
gpt2 = GPT2LMHeadModel(GPT2Config(**sizes, bos_token_id=0, eos_token_id=0))
gpt2_dir = os.path.join(folder, "gpt2")
gpt2.save_pretrained(gpt2_dir)
with safe_open(os.path.join(gpt2_dir, "model.safetensors"), framework="pt") as f:
    gpt2_keys = list(f.keys())
reloaded = GPT2LMHeadModel.from_pretrained(gpt2_dir)
hf_log.flush()
headless = GPT2LMHeadModel.from_pretrained(gpt2_dir, tie_word_embeddings=False)
report = next(r.getMessage() for r in hf_log.buffer if "LOAD REPORT" in r.getMessage())
print(*[line.rstrip() for line in report.splitlines()[1:] if line.strip()], sep="\n")

# %%
# >>> "transformer.wte.weight" in gpt2_keys, "lm_head.weight" in gpt2_keys
# (True, False)
# >>> weightshare.shared_groups(reloaded)
# [['transformer.wte.weight', 'lm_head.weight']]
# >>> torch.equal(headless.lm_head.weight, gpt2.lm_head.weight)
# False
#
# The other way round, an untied fine-tune loaded with ``tie_word_embeddings=True``:
# from transformers 4.54, ``tie_weights()`` tied the two anyway and so overwrote the
# saved head (`transformers#42612
# <https://github.com/huggingface/transformers/pull/42612>`_). The pinned
# transformers 5.23 compares the two tensors, keeps both and warns:
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
# A checkpoint should hold one tensor per tie, and loading should copy values into
# the model's existing parameters, never guess between two copies.
# ``safetensors.torch.save_model``/``load_model`` and :func:`weightshare.save`/
# :func:`weightshare.load` both store one tensor per tie; ``load_model`` refuses any
# file that holds a tie twice, and :func:`weightshare.load` refuses one whose tied
# keys disagree, where ``load_state_dict`` keeps whichever module it visits last.
# With Hugging Face models, ``tie_word_embeddings`` must match how the checkpoint was
# trained. Which transformers and safetensors releases behave as shown here: the
# :ref:`version table <version-table>`.
#
# Next: :doc:`plot_weightshare_check` (what loading a checkpoint will do to its ties,
# read from the file before loading it), and the :doc:`symptom index </symptoms>`.
