"""
Quantizing a tied embedding and head
====================================

*"My int8 checkpoint is barely smaller than the float one"*, or a quantized model
whose head no longer is its embedding. A tied model has one vocabulary matrix under
two names. PyTorch's dynamic quantization replaces each ``nn.Linear`` by an int8
copy of its weight and leaves ``nn.Embedding`` alone, so quantizing the head unties
it: the file then holds the float embedding *and* an int8 copy of the same matrix.
This page measures that on a tiny GPT (torch 2.13,
``torch.ao.quantization.quantize_dynamic``, CPU), and the two honest fixes: keep the
tie and leave the shared matrix in float, or untie on purpose and quantize both.
"""

# %%
# A tied GPT and its size on disk
# -------------------------------
# :class:`weightshare.models.GPT` ties ``lm_head`` to the token embedding ``wte``.
# With a vocabulary of 2048 and width 64, that matrix is most of the model. ``size``
# is the number of bytes ``torch.save`` writes for a state dict.
import io
import warnings

import torch
from torch import nn

import weightshare
from weightshare.models import GPT, GPTConfig

torch.manual_seed(0)
config = GPTConfig(vocab_size=2048, context=16, n_layer=1, n_head=2, d_model=64)
model = GPT(config).eval()
ids = torch.randint(0, 2048, (1, 16))


def size(module: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


vocabulary = 2048 * 64  # elements of the one shared matrix
float_bytes = size(model)

# %%
# >>> weightshare.shared_groups(model)
# [['wte.weight', 'lm_head.weight']]
# >>> round(4 * vocabulary / float_bytes, 2)  # the share of the float matrix
# 0.71

# %%
# The trap: quantizing every ``nn.Linear``
# ----------------------------------------
# ``quantize_dynamic(model, {nn.Linear})`` copies the model and swaps each linear
# layer for a quantized one that packs its weight as int8, the head included. The
# embedding is not a linear layer and stays float. (``torch.ao.quantization`` warns
# that it is deprecated in favour of torchao; the page silences that warning.)
from torch.ao.quantization import quantize_dynamic

with warnings.catch_warnings(action="ignore"):
    naive = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
print(f"float: {float_bytes:,} bytes, quantized: {size(naive):,} bytes")

# %%
# The head is now an int8 copy, the embedding still the float matrix: no tie is
# left, and the file shrank by about 2%, because it stores the vocabulary twice
# (4 bytes and 1 byte per element) where it stored it once:
#
# >>> type(naive.lm_head).__module__
# 'torch.ao.nn.quantized.dynamic.modules.linear'
# >>> weightshare.shared_groups(naive)
# []
# >>> 0.95 < size(naive) / float_bytes < 1
# True
#
# Other quantizers meet the same question from the other side: in transformers'
# torchao integration, quantizing a tied input embedding quantizes the head the same
# way, and the option ``untie_embedding_weights=True`` breaks the tie on purpose
# (`transformers#37905 <https://github.com/huggingface/transformers/pull/37905>`_);
# llm-compressor ties identically quantized embeddings again before saving, to avoid
# a duplicate ``lm_head``
# (`llm-compressor#2835 <https://github.com/vllm-project/llm-compressor/pull/2835>`_).

# %%
# ``weightshare check`` sees the tie gone
# ---------------------------------------
# Saved, the float model's file records the tie (one storage under two names); the
# quantized one holds ``wte.weight`` and the head's packed int8 weight, unrelated:
import os
import tempfile

folder = tempfile.TemporaryDirectory()
reports = {}
for name, module in {"float": model, "naive": naive}.items():
    path = os.path.join(folder.name, f"{name}.pt")
    torch.save(module.state_dict(), path)
    with warnings.catch_warnings(action="ignore"):  # torch.load's TypedStorage note
        reports[name] = weightshare.check(path)
print(reports["naive"].format().replace(folder.name, "<tmp>"))

# %%
# >>> [tie.names for tie in reports["float"].ties]
# [('wte.weight', 'lm_head.weight')]
# >>> reports["naive"].ties
# ()

# %%
# Fix 1: keep the tie, quantize everything else
# ---------------------------------------------
# Name the layers to quantize and leave the head out. The shared matrix stays one
# float tensor under both names, and the blocks are int8:
blocks = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)} - {"lm_head"}
with warnings.catch_warnings(action="ignore"):
    kept = quantize_dynamic(model, blocks, dtype=torch.qint8)

# %%
# >>> kept.lm_head.weight is kept.wte.weight
# True
# >>> size(kept) < size(naive)
# True

# %%
# Fix 2: untie on purpose, quantize both
# --------------------------------------
# When the vocabulary matrix is what must shrink, quantize the embedding too, with
# the weight-only scheme PyTorch has for embeddings. That is two int8 matrices, no
# longer tied: say so in the config (``tie_word_embeddings=False`` for a Hugging
# Face model) so that nothing ties them again on load. Two int8 copies (2 bytes an
# element) still beat one float copy (4 bytes).
from torch.ao.quantization import (
    default_dynamic_qconfig,
    float_qparams_weight_only_qconfig,
)

spec = {nn.Linear: default_dynamic_qconfig}
spec[nn.Embedding] = float_qparams_weight_only_qconfig  # int8 rows, one scale each
with warnings.catch_warnings(action="ignore"):
    both = quantize_dynamic(model, spec)
with torch.no_grad():
    reference = model(ids)
    pairs = [("kept", kept), ("both", both)]
    error = {n: (q(ids) - reference).abs().max().item() for n, q in pairs}
folder.cleanup()

# %%
# >>> size(both) < size(kept) < size(naive)
# True
# >>> round(size(both) / float_bytes, 2)
# 0.47
# >>> all(value < 0.05 for value in error.values())
# True

# %%
# Conclusion
# ----------
# A layer-by-layer quantizer sees two layers where a tied model has one matrix: it
# quantizes the head into a copy and keeps the float embedding, and the file stores
# the vocabulary twice. Keep the tie by leaving the head out, or untie on purpose
# and quantize both, and check the saved file with ``weightshare check``.
#
# Next: :doc:`/auto_examples/fix_adapt/plot_merge_export_tied` (merging and
# exporting a tied model), and
# :doc:`/auto_examples/fix_train/plot_transforms_functional` for other
# transformations (pruning, ``weight_norm``) that untie.
