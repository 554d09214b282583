"""
Exporting a tied model to ONNX
==============================

An ONNX file exported from a tied model can be much larger than the model: the tied
matrix is written twice, once as the embedding and once transposed for the output
layer, where a search for duplicate initializers does not see it. This page exports a
small tied GPT with both of PyTorch's exporters and counts the vocabulary-sized
initializers: the TorchScript exporter (``dynamo=False``) writes two, the default
exporter one. A file with the transposed copy is repaired by replacing it with a
``Transpose`` of the other, and onnxruntime computes the same logits from it.
"""

# %%
# The symptom: a file larger than the model
# -----------------------------------------
# :class:`weightshare.models.GPT` ties its output layer ``lm_head`` to the token
# embedding ``wte``. Its vocabulary of 512 tokens makes that matrix a large share of
# the parameters, as it is in small language models. The TorchScript exporter still
# runs on the pinned PyTorch and says that it is deprecated.
import math
import os
import tempfile
import warnings

import torch

import weightshare
from weightshare.models import GPT, GPTConfig

torch.manual_seed(0)
config = GPTConfig(vocab_size=512, context=16, n_layer=1, n_head=2, d_model=64)
model = GPT(config).eval()
tokens = torch.randint(0, config.vocab_size, (2, config.context))
param_bytes = 4 * weightshare.count_parameters(model).unique  # float32

folder = tempfile.TemporaryDirectory()
ts_path = os.path.join(folder.name, "torchscript.onnx")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    torch.onnx.export(model, (tokens,), ts_path, dynamo=False)
print(str(caught[0].message).split(". ")[0] + ".")
ts_size = os.path.getsize(ts_path)
print(f"parameters: {param_bytes:,} bytes; ONNX file: {ts_size:,} bytes")

# %%
# The cause: the output layer's weight, transposed
# ------------------------------------------------
# The file is 41 % larger than the parameters it holds:
#
# >>> round(ts_size / param_bytes, 2)
# 1.41
#
# ``lm_head`` computes ``x @ W.T``, which the exporter writes as a ``Transpose`` of
# ``W`` feeding a ``MatMul``. Its constant folding then computes that transpose at
# export time and stores the result as a new initializer. PyTorch's pass that merges
# duplicate initializers relies on the tensors' sizes, and a [d, V] copy of a [V, d]
# matrix does not match (`pytorch#108342
# <https://github.com/pytorch/pytorch/issues/108342>`_, found while exporting
# BLOOM-560m). The helper below lists the initializers with as many values as the
# tied matrix.
import numpy as np
import onnx
from onnx import numpy_helper

V, d = config.vocab_size, config.d_model


def vocab_sized(proto: onnx.ModelProto) -> list[tuple[str, list[int]]]:
    """Name and shape of each initializer with V * d values."""
    inits = proto.graph.initializer
    return [(i.name, list(i.dims)) for i in inits if math.prod(i.dims) == V * d]


def stored(proto: onnx.ModelProto) -> int:
    """Bytes of all the initializers: the weights the file holds."""
    return sum(numpy_helper.to_array(i).nbytes for i in proto.graph.initializer)


ts_model = onnx.load(ts_path)
arrays = {init.name: numpy_helper.to_array(init) for init in ts_model.graph.initializer}
(first, _), (second, _) = vocab_sized(ts_model)

# %%
# Two initializers, and the second is the first transposed, number for number:
#
# >>> [shape for _, shape in vocab_sized(ts_model)]
# [[512, 64], [64, 512]]
# >>> np.array_equal(arrays[second], arrays[first].T)
# True
#
# The same duplication has been reported for real models: optimum found bloom-560m's
# export at 3.0 GiB and brought it to 2.1 GiB by removing the copy after export
# (`optimum#1326 <https://github.com/huggingface/optimum/pull/1326>`_, which notes
# that small models grow by more than 30 %). ALBERT, which shares one layer's weights
# across all its layers, was reported to grow from 210 MB to 4 GB on export
# (`onnx#3278 <https://github.com/onnx/onnx/issues/3278>`_).

# %%
# The default exporter keeps one copy
# -----------------------------------
# Since PyTorch 2.9 ``torch.onnx.export`` captures the model with
# :func:`torch.export.export` (``dynamo=True`` is the default) and translates it with
# onnxscript. The tie reaches it as one parameter, which it stores once, as
# ``lm_head.weight``: the embedding's ``Gather`` and the output layer's ``Transpose``
# both read it. ``external_data=False`` keeps the weights inside the one file.
import logging

logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # optional-op notices
dynamo_path = os.path.join(folder.name, "dynamo.onnx")
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # raised inside torch.export
    torch.onnx.export(model, (tokens,), dynamo_path, external_data=False, verbose=False)
dynamo_model = onnx.load(dynamo_path)
readers = [n.op_type for n in dynamo_model.graph.node if "lm_head.weight" in n.input]

# %%
# One vocabulary matrix, read by both uses. The file's size depends on where the
# model's code is installed (each node records its Python source line); the weights
# it holds do not, and they take fewer bytes than the model's parameters (equal
# vectors, such as the LayerNorms' ones, are merged too):
#
# >>> vocab_sized(dynamo_model)
# [('lm_head.weight', [512, 64])]
# >>> readers
# ['Gather', 'Transpose']
# >>> stored(dynamo_model) < param_bytes
# True

# %%
# The fix for a file with the copy
# --------------------------------
# A file that holds the transposed copy (from the TorchScript exporter, or from any
# tool that folds constants) can be repaired after export, as optimum does; its PR
# calls exporting with ``do_constant_folding=False`` unsatisfying, since that gives
# up folding everywhere. The function below compares each initializer with those
# kept before it: an equal one becomes an ``Identity`` of the kept tensor, one equal
# to its *transpose* a ``Transpose`` of it. The new nodes go first in the graph, so
# their outputs exist before anything reads them.
from onnx import helper


def deduplicate(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Store each tensor once: equal or transposed copies become graph nodes."""
    graph, kept = proto.graph, []
    for init in list(graph.initializer):
        values = numpy_helper.to_array(init)
        for name, other in kept:
            if values.shape == other.shape and np.array_equal(values, other):
                node = helper.make_node("Identity", [name], [init.name])
            elif values.ndim == 2 and np.array_equal(values, other.T):
                node = helper.make_node("Transpose", [name], [init.name], perm=[1, 0])
            else:
                continue
            graph.node.insert(0, node)
            graph.initializer.remove(init)
            break
        else:
            kept.append((init.name, values))
    onnx.checker.check_model(proto)
    return proto


fixed_path = os.path.join(folder.name, "torchscript-dedup.onnx")
fixed = deduplicate(onnx.load(ts_path))
onnx.save(fixed, fixed_path)
fixed_size = os.path.getsize(fixed_path)

# %%
# One vocabulary matrix is left; the weights shrink by exactly one such matrix,
# 512 × 64 × 4 bytes, and the file, 41 % larger than the parameters before, is now
# within a few percent of them (the rest is the graph):
#
# >>> vocab_sized(fixed)
# [('wte.weight', [512, 64])]
# >>> stored(ts_model) - stored(fixed) == V * d * 4
# True
# >>> round(fixed_size / param_bytes, 2)
# 1.02

# %%
# The same logits in onnxruntime
# ------------------------------
# A smaller file is only a fix if it computes the same thing. onnxruntime runs the
# three files on the exported tokens; each result is compared with PyTorch's logits.
import onnxruntime as ort

with torch.no_grad():
    expected = model(tokens).numpy()


def run(path: str, **options: list[str]) -> np.ndarray:
    """The logits onnxruntime computes from the file at ``path`` for ``tokens``."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"], **options)
    (inp,) = session.get_inputs()
    return session.run(None, {inp.name: tokens.numpy()})[0]


paths = (ts_path, dynamo_path, fixed_path)
gaps = [float(np.abs(run(path) - expected).max()) for path in paths]

# %%
# All three agree with PyTorch to float32 rounding:
#
# >>> max(gaps) < 1e-5
# True


# %%
# In memory, onnxruntime transposes again
# ---------------------------------------
# The file holds the matrix once; a running session need not. onnxruntime's constant
# folding, on by default, computes the ``Transpose`` of a constant when it loads the
# file, and the graph it optimised (which it can save) holds both matrices. Turning
# that one optimisation off keeps one copy, at the cost of a transpose per call.
def optimised(path: str, **options: list[str]) -> onnx.ModelProto:
    """The graph onnxruntime runs for the file at ``path``, after its optimisations."""
    settings = ort.SessionOptions()
    settings.optimized_model_filepath = os.path.join(folder.name, "optimised.onnx")
    settings.log_severity_level = 3  # errors only
    ort.InferenceSession(path, settings, providers=["CPUExecutionProvider"], **options)
    return onnx.load(settings.optimized_model_filepath)


folded = optimised(fixed_path)
unfolded = optimised(fixed_path, disabled_optimizers=["ConstantFolding"])
unfolded_logits = run(fixed_path, disabled_optimizers=["ConstantFolding"])
folder.cleanup()

# %%
# >>> [shape for _, shape in vocab_sized(folded)]
# [[512, 64], [64, 512]]
# >>> [shape for _, shape in vocab_sized(unfolded)]
# [[512, 64]]
# >>> float(np.abs(unfolded_logits - expected).max()) < 1e-5
# True

# %%
# Conclusion
# ----------
# Count an exported file's vocabulary-sized initializers: a tied model should have
# one. On the pinned PyTorch the default exporter keeps one; the TorchScript exporter
# writes a second, transposed copy, which ``deduplicate`` above (or optimum's
# post-processing) removes without changing the logits. In memory, onnxruntime's
# constant folding makes the copy again unless it is turned off.
#
# Next: the :doc:`symptom index </symptoms>`, and, for the same matrix on its way to
# llama.cpp, :doc:`/auto_examples/fix_export/plot_gguf_tied`.
