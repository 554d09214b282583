"""
Tensor parallelism unties a tied embedding
==========================================

After ``parallelize_module``, ``model.lm_head.weight is model.wte.weight`` is
``False`` and ``model.parameters()`` yields one tensor more than before. Nothing
raises, the first forward pass is right, and from the first optimizer step the token
embedding and the output layer are two different matrices. This page shards a tied
GPT over its vocabulary, as torchtitan and Megatron-LM do, on a real mesh of two
processes, and shows that drift and its one-line fix: assign the output layer's weight
back to the embedding's after parallelizing. The two ranks then train exactly as one
process does. Last, the two errors of an output layer whose split does not match the
embedding's.
"""

# %%
# A tied GPT and one process to compare with
# ------------------------------------------
# The model is :class:`weightshare.models.GPT`, whose output layer ``lm_head`` holds
# the token embedding ``wte``'s weight: one 64 × 16 matrix, one parameter. Tensor
# parallelism splits matrices, not batches, so both ranks see every batch, and the
# reference is one process that trains the whole model on the same batches.
import torch
from torch import nn

import weightshare.distributed as wsd
from weightshare.models import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=64, context=8, n_layer=1, n_head=2, d_model=16)
STEPS, BATCH, LR = 3, 4, 0.5


def make_model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG)


def batches() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    shape = (STEPS, BATCH, CONFIG.context)
    return torch.randint(0, CONFIG.vocab_size, shape, generator=generator)


reference = make_model()
first_logits = reference(batches()[0][:, :-1]).detach()
optimizer = torch.optim.SGD(reference.parameters(), lr=LR)
reference_losses = []
for tokens in batches():
    logits = reference(tokens[:, :-1])
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    reference_losses.append(loss.item())

# %%
# The tied pair counts once among the model's parameters:
#
# >>> len(list(reference.parameters()))
# 16

# %%
# Splitting the vocabulary
# ------------------------
# Both uses of a V × d tied matrix can split it the same way: by rows, that is by
# token. Megatron-LM's ``VocabParallelEmbedding`` (in `tensor_parallel/layers.py
# <https://github.com/NVIDIA/Megatron-LM/blob/d98e8a64ddf34856e74b24714e3bedb2f5a39553/megatron/core/tensor_parallel/layers.py>`_)
# gives each rank a range of rows, looks up only the tokens in that range (zeros for
# the others) and sums the ranks' lookups; its GPT model passes that weight to a
# column-parallel output layer, whose logits stay split over the vocabulary for a
# vocabulary-parallel cross-entropy. With PyTorch's DTensor the same plan is two
# styles, which torchtitan's Qwen3 `parallelize
# <https://github.com/pytorch/torchtitan/blob/057fedda0ceec552757c451a13e0952a4c0ec200/torchtitan/models/qwen3/infra/parallelize.py>`_
# applies to ``tok_embeddings`` and ``output``: ``RowwiseParallel`` on an embedding and
# ``ColwiseParallel`` on a linear layer both shard the weight's dimension 0, and
# ``loss_parallel`` computes the loss on the split logits. The other layers stay
# whole on every rank.
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    loss_parallel,
    parallelize_module,
)

#: The output layer's style: weight rows split, logits left split over the vocabulary.
SPLIT_LOGITS = ColwiseParallel(output_layouts=Shard(-1), use_local_output=False)


def shard_vocabulary(model: GPT, head: ParallelStyle | None) -> None:
    """Split ``wte`` by rows over all ranks, and ``lm_head`` with ``head``."""
    plan: dict[str, ParallelStyle] = {"wte": RowwiseParallel(input_layouts=Replicate())}
    if head is not None:
        plan["lm_head"] = head
    mesh = init_device_mesh(wsd.device().type, (dist.get_world_size(),))
    parallelize_module(model, mesh, plan)


def step_loss(model: GPT, tokens: torch.Tensor) -> float:
    """Forward and backward on one batch; the loss, the same on every rank."""
    logits = model(tokens[:, :-1])  # a DTensor: each rank holds V/2 of the logits
    with loss_parallel():  # the backward pass must run inside it too
        loss = nn.functional.cross_entropy(
            logits.flatten(0, 1), tokens[:, 1:].flatten()
        )
        loss.backward()
    return loss.full_tensor().item()


# %%
# The worker: shard, then train
# -----------------------------
# :func:`weightshare.distributed.run` forks two processes, joins them in a process
# group (gloo on CPU) and calls ``train_tp`` in each. ``retie`` switches the fix on.
# Each rank returns whether the tie holds, how many tensors the model has, the shapes
# of its shards, the first logits (gathered whole), the loss of each step and the
# largest difference between the embedding and the output layer after each step.
def train_tp(retie: bool) -> dict[str, object]:
    device = wsd.device()
    model = make_model().to(device)
    shard_vocabulary(model, SPLIT_LOGITS)
    if retie:
        model.lm_head.weight = model.wte.weight  # the fix: one DTensor for both uses
    wte, head = model.wte.weight, model.lm_head.weight
    first = model(batches()[0][:, :-1].to(device)).full_tensor()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    losses, drift = [], []
    for tokens in batches().to(device):
        optimizer.zero_grad()
        losses.append(step_loss(model, tokens))
        optimizer.step()
        drift.append((wte.full_tensor() - head.full_tensor()).abs().max().item())
    return {
        "tied": head is wte,
        "tensors": len(list(model.parameters())),
        "shards": [tuple(w.to_local().shape) for w in (wte, head)],
        "first": first.detach().cpu(),
        "losses": losses,
        "drift": drift,
    }


untied = wsd.run(train_tp, nprocs=2, args=(False,), timeout=60)
print("difference between the pair after each step:", end=" ")
print([f"{d:.1e}" for d in untied[0]["drift"]])  # digits that rounding cannot move

# %%
# ``parallelize_module`` replaced each module's weight with its own DTensor, so both
# ranks hold two parameters where the model had one, each split into two halves of
# 32 rows:
#
# >>> [(r["tied"], r["tensors"]) for r in untied]
# [(False, 17), (False, 17)]
# >>> untied[0]["shards"]
# [(32, 16), (32, 16)]
#
# Both copies start from the same values, so the first forward pass equals the
# single process's. The first step then moves the embedding by its lookup gradient
# alone and the output layer by its own gradient alone, where the tied weight takes
# their sum; from then on the two differ, and so do the losses:
#
# >>> float((untied[0]["first"] - first_logits).abs().max()) < 1e-6
# True
# >>> all(d > 1e-3 for d in untied[0]["drift"])
# True
# >>> abs(untied[0]["losses"][-1] - reference_losses[-1]) > 1e-3
# True

# %%
# The fix: tie again after parallelizing
# --------------------------------------
# Assigning the output layer's weight back to the embedding's makes the two names one
# DTensor again, with the embedding's split for both uses, as torchtitan does "after
# applying parallelisms". Tie before ``parallelize_module`` and the call unties it.
retied = wsd.run(train_tp, nprocs=2, args=(True,), timeout=60)
loss_gap = max(
    abs(a - b) for a, b in zip(retied[0]["losses"], reference_losses, strict=True)
)
# float32 rounding differs with the thread count: print the bound, not the digits
print("loss gap to the single process:", "< 1e-5" if loss_gap < 1e-5 else loss_gap)

# %%
# One parameter again on each rank, the pair equal after every step, and the losses
# of the single process within float32 rounding:
#
# >>> [(r["tied"], r["tensors"]) for r in retied]
# [(True, 16), (True, 16)]
# >>> retied[0]["drift"]
# [0.0, 0.0, 0.0]
# >>> loss_gap < 1e-5
# True
import matplotlib.pyplot as plt

steps = range(1, STEPS + 1)
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(steps, untied[0]["drift"], "o-", color="#c44e52", label="after parallelize")
ax.plot(steps, retied[0]["drift"], "s-", color="#4c72b0", label="tied again")
ax.set(xticks=list(steps), xlabel="optimizer steps", title="A tied pair split by TP")
ax.set_ylabel("max |wte.weight − lm_head.weight|")
ax.legend()
fig.tight_layout()


# %%
# An output layer that does not match the embedding's split
# ---------------------------------------------------------
# Two plans go wrong loudly. Leave ``lm_head`` out of the plan, trusting the tie to
# carry the split over, and the re-tie hands a plain ``nn.Linear`` a DTensor weight
# and a plain input. Or split it with ``ColwiseParallel()``'s defaults, whose output
# is each rank's local block of logits: 32 columns of the 64, for a loss that expects
# all of them. The worker runs one forward pass and the loss, and returns the logits'
# shape and the error.
def first_loss(head: ParallelStyle | None) -> dict[str, object]:
    model = make_model().to(wsd.device())
    shard_vocabulary(model, head)
    model.lm_head.weight = model.wte.weight
    tokens = batches()[0].to(wsd.device())
    shape = None
    try:
        logits = model(tokens[:, :-1])
        shape = tuple(logits.shape)
        nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    except (RuntimeError, IndexError) as err:
        return {"logits": shape, "error": f"{type(err).__name__}: {err}"}
    return {"logits": shape, "error": None}


no_head = wsd.run(first_loss, nprocs=2, args=(None,), timeout=60)
local = wsd.run(first_loss, nprocs=2, args=(ColwiseParallel(),), timeout=60)
print(no_head[0]["error"])
print(local[0]["error"])

# %%
# Without ``lm_head`` in the plan the forward pass stops at the output layer; with
# local logits each rank gets a third dimension of 32, not 64, and the loss stops at
# the first target beyond its half:
#
# >>> [r["logits"] for r in no_head]
# [None, None]
# >>> "got mixed torch.Tensor and DTensor" in no_head[0]["error"]
# True
# >>> [r["logits"] for r in local]
# [(4, 7, 32), (4, 7, 32)]

# %%
# Conclusion
# ----------
# ``parallelize_module`` shards module by module, so it splits a tied weight into one
# DTensor per module; the first forward pass cannot tell. Re-tie after parallelizing
# (``model.lm_head.weight = model.wte.weight``), split both uses over the vocabulary,
# and keep the logits split for ``loss_parallel`` (or gather them with
# ``output_layouts=Replicate()``). With FSDP2 on top, shard the re-tied pair in one
# ``fully_shard`` group, as :doc:`plot_fsdp2_tied` shows (`torchtitan#2495
# <https://github.com/pytorch/torchtitan/issues/2495>`_). This is the last of the
# distributed pages: back to the :doc:`symptom index </symptoms>` for the other ways a
# tie breaks.
