"""
FSDP2 with a tied GPT
=====================

``ValueError: Parameter 'lm_head.weight' is shared with a parameter already managed
by another FSDP group`` is what PyTorch 2.13 raises at the first forward pass when the
usual FSDP2 recipe, one ``fully_shard`` call for the token embedding, each block and
the output layer, meets tied embeddings: the one weight ends up in two groups.
:func:`weightshare.fsdp_units` merges modules that share a parameter into one group.
This page runs two real processes and shows the error, the fix, that training keeps
the tie and matches a single process, and that a sharded checkpoint saved with
:mod:`torch.distributed.checkpoint` restores the tie and resumes the run bit for bit.
"""

# %%
# A tied GPT, its data and its loss
# ---------------------------------
# The model is :class:`weightshare.models.GPT`, whose output layer ``lm_head`` holds
# the token embedding ``wte``'s weight. Each of the four steps takes a global batch of
# four sequences; each of the two ranks trains on its half. Everything is seeded, so
# every process builds the same model and batches.
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard

import weightshare as ws
import weightshare.distributed as wsd
from weightshare.models import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=64, context=8, n_layer=1, n_head=2, d_model=16)
STEPS, BATCH, LR = 4, 4, 0.5
SAVE_AT = 2  # the checkpoint is taken after this many steps


def make_model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG)


def batches() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    shape = (STEPS, BATCH, CONFIG.context)
    return torch.randint(0, CONFIG.vocab_size, shape, generator=generator)


def next_token_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def mesh() -> DeviceMesh:
    """All ranks in one dimension, on this rank's device type."""
    return init_device_mesh(wsd.device().type, (dist.get_world_size(),))


# %%
# Sharding the tied pair one by one
# ---------------------------------
# Each ``fully_shard`` call replaces its module's parameters by new, sharded
# :class:`~torch.distributed.tensor.DTensor` parameters. Sharding ``wte`` and then
# ``lm_head`` makes two of them out of the one tied weight, so the tie is already
# gone when the calls return. Before PyTorch 2.13 training then went on with two
# separate weights (`lingua#75 <https://github.com/facebookresearch/lingua/pull/75>`_
# found it when reloading without FSDP). PyTorch 2.13 checks for it and refuses at
# the first forward pass, which stopped tied models such as Llama-3.2, Qwen3 and
# Gemma in Hugging Face Accelerate until
# `accelerate#4171 <https://github.com/huggingface/accelerate/pull/4171>`_.
def shard(model: GPT, group_tied: bool) -> None:
    """``fully_shard`` the embedding, each block and the output layer, then the root."""
    modules, ranks = [model.wte, *model.blocks, model.lm_head], mesh()
    for unit in ws.fsdp_units(model, modules) if group_tied else modules:
        fully_shard(unit, mesh=ranks)
    fully_shard(model, mesh=ranks)


def first_forward(group_tied: bool) -> dict[str, object]:
    model = make_model().to(wsd.device())
    shard(model, group_tied)
    tied = model.lm_head.weight is model.wte.weight
    try:
        model(batches()[0].to(wsd.device()))
    except ValueError as err:
        return {"tied": tied, "error": str(err)}
    return {"tied": tied, "error": None}


one_by_one = wsd.run(first_forward, nprocs=2, args=(False,), timeout=60)
print(one_by_one[0]["error"])

# %%
# Both ranks raise it, after the sharding calls had already split the tie:
#
# >>> [(r["tied"], r["error"] == one_by_one[0]["error"]) for r in one_by_one]
# [(False, True), (False, True)]

# %%
# The fix: one group for the tied modules
# ---------------------------------------
# :func:`weightshare.fsdp_units` takes the modules you would shard one by one and
# merges those that hold a common parameter into one list, which ``fully_shard``
# shards as one group. It reads only the model's structure, so it can be tried here,
# without a process group; ``shard(model, group_tied=True)`` above uses it:
model = make_model()
units = ws.fsdp_units(model, [model.wte, *model.blocks, model.lm_head])
grouped = wsd.run(first_forward, nprocs=2, args=(True,), timeout=60)

# %%
# The embedding and the output layer form the first unit, and sharded that way the
# tie holds and the forward pass runs:
#
# >>> units[0] == [model.wte, model.lm_head], units[1] is model.blocks[0]
# (True, True)
# >>> [(r["tied"], r["error"]) for r in grouped]
# [(True, None), (True, None)]


# %%
# Training, and a sharded checkpoint
# ----------------------------------
# The worker shards with those units, trains four steps and, before step 3, saves the
# model and the optimizer with :mod:`torch.distributed.checkpoint`: each rank writes
# its own shards into one folder, made by this page. It returns the mean loss of each
# step, whether the tie held, and the full (gathered) weights.
def sharded_model_and_optimizer() -> tuple[GPT, torch.optim.Optimizer]:
    model = make_model().to(wsd.device())
    shard(model, group_tied=True)
    return model, torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)


def train_steps(
    model: GPT, optimizer: torch.optim.Optimizer, steps: torch.Tensor
) -> list[float]:
    rank, world = dist.get_rank(), dist.get_world_size()
    losses = []
    for tokens in steps:
        loss = next_token_loss(model, tokens.chunk(world)[rank].to(wsd.device()))
        optimizer.zero_grad()
        loss.backward()  # FSDP2 reduce-scatters the averaged gradients
        optimizer.step()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(total.item() / world)  # the mean over the global batch
    return losses


def same_folder(folder: str) -> str:
    """Rank 0's folder (under torchrun each process made its own)."""
    box = [folder]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def train_and_save(folder: str) -> dict[str, object]:
    folder = same_folder(folder)
    model, optimizer = sharded_model_and_optimizer()
    losses = train_steps(model, optimizer, batches()[:SAVE_AT])
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optimizer_state}, checkpoint_id=folder)
    losses += train_steps(model, optimizer, batches()[SAVE_AT:])
    keys = dcp.FileSystemReader(folder).read_metadata().state_dict_metadata
    return {
        "tied": model.lm_head.weight is model.wte.weight,
        "kind": type(model.wte.weight).__name__,
        "losses": losses,
        "keys": sorted(k for k in keys if "wte" in k or "lm_head" in k),
        "weights": {k: v.full_tensor().cpu() for k, v in model.state_dict().items()},
    }


checkpoint = tempfile.TemporaryDirectory()
trained = wsd.run(train_and_save, nprocs=2, args=(checkpoint.name,), timeout=60)

# %%
# After training, ``wte.weight`` and ``lm_head.weight`` are still one object, now a
# DTensor, on both ranks:
#
# >>> [(r["tied"], r["kind"]) for r in trained]
# [(True, 'DTensor'), (True, 'DTensor')]
#
# The checkpoint lists the model's weight under both names, and the optimizer's
# state for it once, under its first name:
#
# >>> trained[0]["keys"]
# ['model.lm_head.weight', 'model.wte.weight', 'optim.state.wte.weight.momentum_buffer']

# %%
# Two sharded ranks equal one process
# -----------------------------------
# The same four steps in this page's own process, on the whole batches, give the same
# losses and weights up to float32 rounding: FSDP2 averages the two halves'
# gradients, which is the whole batch's gradient.
reference = make_model()
optimizer = torch.optim.SGD(reference.parameters(), lr=LR, momentum=0.9)
reference_losses = []
for tokens in batches():
    loss = next_token_loss(reference, tokens)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    reference_losses.append(loss.item())

loss_gap = max(
    abs(a - b) for a, b in zip(trained[0]["losses"], reference_losses, strict=True)
)
weights = trained[0]["weights"]
weight_gap = max(
    (weights[k] - v).abs().max().item() for k, v in reference.state_dict().items()
)
# float32 rounding differs with the thread count: print bounds, not the digits
print("losses:", "< 1e-5" if loss_gap < 1e-5 else loss_gap, "apart;", end=" ")
print("weights:", "< 1e-6" if weight_gap < 1e-6 else weight_gap, "apart")

# %%
# The losses agree within 1e-5 (a few float32 steps of a number near 4), the weights
# within 1e-6:
#
# >>> loss_gap < 1e-5, weight_gap < 1e-6
# (True, True)


# %%
# Resuming from the checkpoint
# ----------------------------
# Two fresh processes build and shard the model again, load the checkpoint in place
# (``dcp.load`` fills the existing DTensors, so the tie is kept), and train the last
# two steps.
def load_and_resume(folder: str) -> dict[str, object]:
    folder = same_folder(folder)
    model, optimizer = sharded_model_and_optimizer()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optimizer_state}
    dcp.load(state, checkpoint_id=folder)
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])  # fmt: skip
    return {
        "tied": model.lm_head.weight is model.wte.weight,
        "losses": train_steps(model, optimizer, batches()[SAVE_AT:]),
    }


resumed = wsd.run(load_and_resume, nprocs=2, args=(checkpoint.name,), timeout=60)
checkpoint.cleanup()

# %%
# The tie holds after loading, and the resumed run repeats the original run's last
# two losses exactly:
#
# >>> [r["tied"] for r in resumed]
# [True, True]
# >>> resumed[0]["losses"] == trained[0]["losses"][SAVE_AT:]
# True
#
# The single process, the two sharded ranks and the resumed run, step by step:
import matplotlib.pyplot as plt

steps = range(1, STEPS + 1)
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(steps, reference_losses, "-", color="#999999", lw=4, label="one process")
ax.plot(steps, trained[0]["losses"], "o", color="#4c72b0", label="FSDP2, 2 ranks")
ax.plot(steps[SAVE_AT:], resumed[0]["losses"], "x", color="#dd8452", ms=10, mew=2,
        label="resumed from checkpoint")  # fmt: skip
ax.set(xticks=list(steps), xlabel="step", ylabel="loss", title="A tied GPT under FSDP2")
ax.set_ylim(top=max(reference_losses) + 0.06)  # room for the legend
ax.legend(loc="upper right", fontsize=8)
fig.tight_layout()

# %%
# Conclusion
# ----------
# FSDP2 shards parameters per ``fully_shard`` call, so a tied weight must be in exactly
# one call: pass the tied modules together, as :func:`weightshare.fsdp_units` does for
# any model. Then the tie holds as one DTensor, training matches a single process and
# a :mod:`torch.distributed.checkpoint` round trip keeps it. Next:
# :doc:`plot_pipeline_tied`, where the two uses of the weight live in different
# processes; :doc:`plot_tensor_parallel_tied` splits the tied matrix itself.
