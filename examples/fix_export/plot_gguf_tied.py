"""
Converting a tied model to GGUF
===============================

llama.cpp has refused converted models with ``missing tensor 'output.weight'``. In
GGUF, the file format of llama.cpp and the tools around it, a tied model is stored as
its token embedding ``token_embd.weight`` and no output matrix, and nothing in the
file says that the two are one: a reader must know that a missing ``output.weight``
means "use ``token_embd.weight``". This page writes a tied GPT to GGUF with the
``gguf`` package and reads it back with the same package: a reader that requires the
output fails, one that falls back to the embedding restores the tied model and its
logits, and a converter that writes the output anyway stores the vocabulary matrix
twice.
"""

# %%
# The symptom: ``missing tensor 'output.weight'``
# -----------------------------------------------
# The converter below writes each parameter of a :class:`weightshare.models.GPT`
# under the name llama.cpp's GPT-2 loader uses, with the model's sizes as metadata.
# It iterates ``named_parameters()``, which yields the tied weight once, under its
# first name ``wte.weight``, so the file gets ``token_embd.weight`` and no
# ``output.weight``. (A file for llama.cpp would also need a tokenizer and GPT-2's
# layout of the attention weights; this one holds what the tie is about.)
import os
import tempfile
from collections.abc import Iterable

import gguf
import numpy as np
import torch

from weightshare.models import GPT, GPTConfig

torch.manual_seed(0)
config = GPTConfig(vocab_size=512, context=16, n_layer=1, n_head=2, d_model=64)
model = GPT(config).eval()
V, d = config.vocab_size, config.d_model

TOP = {"wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm"}
TOP["lm_head"] = "output"
IN_BLOCK = {"ln_1": "attn_norm", "attn.qkv": "attn_qkv", "attn.proj": "attn_output"}
IN_BLOCK |= {"ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}


def gguf_name(name: str) -> str:
    """GGUF's name of a parameter (``blocks.0.ln_1.bias``: ``blk.0.attn_norm.bias``)."""
    module, kind = name.rsplit(".", 1)
    if module in TOP:
        return f"{TOP[module]}.{kind}"
    _, block, inner = module.split(".", 2)
    return f"blk.{block}.{IN_BLOCK[inner]}.{kind}"


def convert(tensors: Iterable[tuple[str, torch.Tensor]], path: str) -> None:
    """Write ``(name, tensor)`` pairs and the model's sizes to a GGUF file."""
    writer = gguf.GGUFWriter(path, arch="gpt2")
    writer.add_context_length(config.context)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    for name, tensor in tensors:
        writer.add_tensor(gguf_name(name), tensor.detach().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


folder = tempfile.TemporaryDirectory()
tied_path = os.path.join(folder.name, "tied.gguf")
convert(model.named_parameters(), tied_path)

# %%
# This page's own reader (not llama.cpp, which is not installed here) builds a GPT
# from the file's metadata and copies each tensor in by its GGUF name. With
# ``output_fallback=False`` it requires ``output.weight``, as llama.cpp's loader did
# for one architecture after another, and it words its error as llama.cpp does:


def read(path: str, output_fallback: bool) -> GPT:
    """A GPT with the sizes and weights of the GGUF file at ``path``."""
    reader = gguf.GGUFReader(path)
    meta = {key: field.contents() for key, field in reader.fields.items()}
    tensors = {t.name: torch.tensor(np.array(t.data)) for t in reader.tensors}

    def tensor(name: str) -> torch.Tensor:
        if name not in tensors:
            raise KeyError(f"missing tensor {name!r}")
        return tensors[name]

    sizes = GPTConfig(
        vocab_size=len(tensor("token_embd.weight")),
        context=meta["gpt2.context_length"],
        n_layer=meta["gpt2.block_count"],
        n_head=meta["gpt2.attention.head_count"],
        d_model=meta["gpt2.embedding_length"],
        tie_embeddings=False,
    )
    restored = GPT(sizes)
    if output_fallback and "output.weight" not in tensors:
        restored.lm_head.weight = restored.wte.weight  # the fallback is a tie
    with torch.no_grad():
        for name, param in restored.named_parameters():  # a tied weight once
            param.copy_(tensor(gguf_name(name)))
    return restored.eval()


strict_error = None
try:
    read(tied_path, output_fallback=False)
except KeyError as err:
    strict_error = err
    print(f"this page's strict reader: KeyError: {err.args[0]}")

# %%
# The strict read of the tied file failed:
#
# >>> isinstance(strict_error, KeyError)
# True
#
# llama.cpp users met the same message: a GPT-2 converted with llama.cpp's
# ``convert_hf_to_gguf.py`` and loaded through the ``llama_cpp`` Python package
# (`llama.cpp#12567 <https://github.com/ggml-org/llama.cpp/issues/12567>`_, which
# quotes ``llama_model_load: error loading model: missing tensor 'output.weight'``),
# a tied GLM-Edge model (`llama.cpp#13328
# <https://github.com/ggml-org/llama.cpp/pull/13328>`_) and a tied Qwen3 MoE
# (`llama.cpp#13768 <https://github.com/ggml-org/llama.cpp/pull/13768>`_). Each fix
# made ``output.weight`` optional for one architecture and used ``token_embd.weight``
# in its place, as `llama.cpp#5824 <https://github.com/ggml-org/llama.cpp/pull/5824>`_
# had done for Llama.

# %%
# What the file holds
# -------------------
# The ``gguf`` package reads the file back: its metadata and its tensors, each with
# its shape in GGUF's order, the fastest-varying dimension first.
reader = gguf.GGUFReader(tied_path)
names = [t.name for t in reader.tensors]
fields = {key: field.contents() for key, field in reader.fields.items()}
print(names[:3], "...", names[-3:])
print({key: value for key, value in fields.items() if key.startswith("gpt2.")})
embedding = reader.tensors[names.index("token_embd.weight")]

# %%
# No output matrix, and no metadata that mentions a tie: the only sign of it is the
# missing tensor. The embedding is [V, d] = [512, 64], listed as [64, 512];
# llama.cpp's output matrix has the same shape, so the embedding can serve as the
# output without a transpose.
#
# >>> "output.weight" in names
# False
# >>> [key for key in fields if "tie" in key]
# []
# >>> [int(n) for n in embedding.shape]
# [64, 512]

# %%
# The fix in the reader: the embedding is the output
# --------------------------------------------------
# A reader that falls back ties the output layer to the embedding before it copies
# the weights in. It gets one matrix and the model's own logits.
import weightshare

restored = read(tied_path, output_fallback=True)
tokens = torch.randint(0, V, (2, config.context))
with torch.no_grad():
    same_logits = torch.equal(restored(tokens), model(tokens))
restored_groups = weightshare.shared_groups(restored)

# %%
# >>> restored_groups
# [['wte.weight', 'lm_head.weight']]
# >>> same_logits
# True

# %%
# A converter that writes both
# ----------------------------
# A converter that iterates ``state_dict()`` instead sees the tied weight under both
# of its names and writes it twice. Every reader loads that file, and the file
# carries a second vocabulary matrix. llama.cpp's converters for GPT-2, BLOOM and
# CodeShell wrote such a copy until `llama.cpp#12456
# <https://github.com/ggml-org/llama.cpp/pull/12456>`_ removed it and taught the
# loader to fall back; in `llama.cpp#12451
# <https://github.com/ggml-org/llama.cpp/pull/12451>`_ a llama.cpp developer notes
# that copying a tied embedding defeats the point of tying it, saving memory.
both_path = os.path.join(folder.name, "both.gguf")
convert(model.state_dict().items(), both_path)
extra = os.path.getsize(both_path) - os.path.getsize(tied_path)
copied = read(both_path, output_fallback=False)
copied_groups = weightshare.shared_groups(copied)
folder.cleanup()

# %%
# The file grows by one float32 matrix of V × d = 512 × 64 (131,072 bytes, and a
# 64-byte entry in the header), and a reader that follows the file gets two
# matrices, no longer tied:
#
# >>> extra, V * d * 4
# (131136, 131072)
# >>> copied_groups
# []
# >>> torch.equal(copied.lm_head.weight, copied.wte.weight)
# True

# %%
# Conclusion
# ----------
# GGUF has no way to say "tied": a tied model is ``token_embd.weight`` without
# ``output.weight``, and every reader must take the output from the embedding when
# the output is missing. A converter should write the tied matrix once, as
# ``named_parameters()`` yields it; writing both costs a vocabulary matrix on disk
# and in memory. The fallback is right only for a model that was tied: a file of an
# untied model that lost its output would load with the embedding in its place.
#
# Next: :doc:`/auto_examples/fix_export/plot_onnx_tied`, where an exporter writes
# the tied matrix twice, and the :doc:`symptom index </symptoms>`.
