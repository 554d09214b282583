"""
Pipeline stages that share an embedding
=======================================

Split a tied language model into pipeline stages and nothing fails, but the two
copies of the embedding drift apart; sum their gradients, and the global gradient
norm reads too large, so clipping shrinks the step too much. The first stage holds
the token embedding and the last the output layer, each with its own copy of the tied
V×d matrix. Megatron-LM all-reduces the two copies' gradients after every backward
pass (its "embedding group") and counts the tied gradient once in the norm. This page
runs two real stages in two processes and shows that, done both ways, the pipeline
trains exactly the tied model, and what each omission costs.
"""

# %%
# A tied GPT cut in two
# ---------------------
# The model is :class:`weightshare.models.GPT` with two blocks. Stage 0 (rank 0)
# holds the embeddings and the first block; stage 1 (rank 1) holds the second block,
# the final norm and the output layer ``lm_head``, whose weight is the tied matrix.
# Both processes build the model from the same seed, so the two copies start equal
# (Megatron-LM instead zeroes the last stage's copy and all-reduces the copies once).
import torch
import torch.distributed as dist
from torch import nn

import weightshare.distributed as wsd
from weightshare.models import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=64, context=8, n_layer=2, n_head=2, d_model=16)
STEPS, BATCH, LR = 3, 4, 0.5


def make_model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG)


def batches() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    shape = (STEPS, BATCH, CONFIG.context)
    return torch.randint(0, CONFIG.vocab_size, shape, generator=generator)


def stage_of(model: GPT, rank: int) -> nn.ModuleDict:
    """The modules that pipeline stage ``rank`` holds."""
    if rank == 0:
        return nn.ModuleDict(
            {"wte": model.wte, "wpe": model.wpe, "block": model.blocks[0]}
        )
    return nn.ModuleDict(
        {"block": model.blocks[1], "ln_f": model.ln_f, "lm_head": model.lm_head}
    )


def first_stage(stage: nn.ModuleDict, tokens: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    return stage.block(stage.wte(tokens) + stage.wpe(positions))


def last_stage(stage: nn.ModuleDict, hidden: torch.Tensor) -> torch.Tensor:
    return stage.lm_head(stage.ln_f(stage.block(hidden)))


model = make_model()
tokens = batches()[0]
piped = last_stage(stage_of(model, 1), first_stage(stage_of(model, 0), tokens))

# %%
# Run one after the other in one process, the two stages compute the whole model:
#
# >>> torch.equal(piped, model(tokens))
# True


# %%
# The worker: one training step across two processes
# ---------------------------------------------------
# Stage 0 runs its half and sends the activations to stage 1 with
# :func:`torch.distributed.send`; stage 1 computes the loss, runs backward and sends
# the activations' gradient back, and stage 0 finishes the backward pass with it
# (PyTorch's ``torch.distributed.pipelining`` schedules such stages over
# micro-batches; plain ``send`` and ``recv`` keep every transfer in view). Now each
# copy of the tied matrix has only its own stage's part of the gradient: the
# embedding's on rank 0, the output layer's on rank 1.
# :func:`weightshare.distributed.all_reduce_tied_grads` sums them over the ranks that
# hold a copy (here both; with more stages, a ``dist.new_group([0, last])``), so both
# copies take the full tied gradient. ``sync`` switches that all-reduce on or off;
# ``max_norm`` clips by the global gradient norm (used further down).
def global_grad_norm(stage: nn.Module, skip: torch.Tensor | None) -> torch.Tensor:
    """The gradient norm of the whole model: each stage's squares, summed over both."""
    squares = sum(p.grad.square().sum() for p in stage.parameters() if p is not skip)
    dist.all_reduce(squares)  # add the other stage's part
    return squares.sqrt()


def train_pipeline(
    sync: bool, max_norm: float | None = None, count_once: bool = True
) -> dict[str, object]:
    rank, device = dist.get_rank(), wsd.device()
    if dist.get_world_size() != 2:
        raise ValueError("this pipeline has two stages: run it with 2 processes")
    stage = stage_of(make_model(), rank).to(device)
    copy = stage.wte.weight if rank == 0 else stage.lm_head.weight  # the tied matrix
    optimizer = torch.optim.SGD(stage.parameters(), lr=LR)
    shape = (BATCH, CONFIG.context - 1, CONFIG.d_model)
    losses, drift, norms = [], [wsd.rank_spread([copy])], []
    for tokens in batches().to(device):
        optimizer.zero_grad()
        if rank == 0:
            hidden = first_stage(stage, tokens[:, :-1])
            dist.send(hidden.detach(), dst=1)  # activations forward
            grad = torch.empty(shape, device=device)
            dist.recv(grad, src=1)  # their gradient back
            hidden.backward(grad)
        else:
            hidden = torch.empty(shape, device=device)
            dist.recv(hidden, src=0)
            hidden.requires_grad_()
            logits = last_stage(stage, hidden)
            loss = nn.functional.cross_entropy(
                logits.flatten(0, 1), tokens[:, 1:].flatten()
            )
            loss.backward()
            dist.send(hidden.grad, dst=0)
            losses.append(loss.item())
        if sync:
            wsd.all_reduce_tied_grads([copy])  # the embedding group's all-reduce
        if max_norm is not None:
            skip = copy if count_once and rank == 1 else None  # the last stage's copy
            norm = global_grad_norm(stage, skip)
            torch.nn.utils.clip_grads_with_norm_(stage.parameters(), max_norm, norm)
            norms.append(norm.item())
        optimizer.step()
        drift.append(wsd.rank_spread([copy]))  # largest difference between copies
    state = stage.cpu().state_dict()
    return {"losses": losses, "drift": drift, "norms": norms, "state": state}


synced = wsd.run(train_pipeline, nprocs=2, args=(True,), timeout=60)
unsynced = wsd.run(train_pipeline, nprocs=2, args=(False,), timeout=60)
drift = [f"{d:.1e}" for d in unsynced[0]["drift"]]
print(f"difference between the copies without the all-reduce: {drift}")

# %%
# Each run recorded the largest difference between the two copies before training and
# after each step. With the all-reduce the copies are equal to the last bit after every
# step; without it they differ after the first:
#
# >>> synced[0]["drift"]
# [0.0, 0.0, 0.0, 0.0]
# >>> unsynced[0]["drift"][0] == 0.0 and all(d > 0.0 for d in unsynced[0]["drift"][1:])
# True


# %%
# The pipeline equals the tied model
# ----------------------------------
# The same steps in this page's own process, on the whole tied model, give the losses
# stage 1 saw and the weights both stages hold (each stage is compared with the same
# modules of the reference), up to float32 rounding. Without the all-reduce, each
# copy misses part of the gradient and the result is a different model.
def train_reference(
    max_norm: float | None = None,
) -> tuple[GPT, list[float], list[float]]:
    """The tied model trained in one process: the model, its losses and grad norms."""
    reference = make_model()
    optimizer = torch.optim.SGD(reference.parameters(), lr=LR)
    losses, norms = [], []
    for tokens in batches():
        logits = reference(tokens[:, :-1])
        loss = nn.functional.cross_entropy(
            logits.flatten(0, 1), tokens[:, 1:].flatten()
        )
        optimizer.zero_grad()
        loss.backward()
        if max_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm)
            norms.append(norm.item())
        optimizer.step()
        losses.append(loss.item())
    return reference, losses, norms


def gap_to(reference: GPT, results: list[dict[str, object]]) -> float:
    """Largest difference between the stages' weights and the reference's."""
    return max(
        (results[rank]["state"][name] - value).abs().max().item()
        for rank in (0, 1)
        for name, value in stage_of(reference, rank).state_dict().items()
    )


reference, reference_losses, _ = train_reference()
loss_gap = max(
    abs(a - b) for a, b in zip(synced[1]["losses"], reference_losses, strict=True)
)
# Float32 rounding differs with the thread count: a gap at rounding level is printed
# as its bound, not its digits.
for label, results in [("with the all-reduce", synced), ("without it", unsynced)]:
    gap = gap_to(reference, results)
    shown = "< 1e-6" if gap < 1e-6 else f"{gap:.1e}"
    print(f"{label}: the weights are {shown} from the tied model")

# %%
# The losses agree within 1e-5 and the weights within 1e-6 with the all-reduce; without
# it, the weights are far off:
#
# >>> loss_gap < 1e-5, gap_to(reference, synced) < 1e-6
# (True, True)
# >>> gap_to(reference, unsynced) > 1e-3
# True

# %%
# Clipping counts the tied gradient twice
# ---------------------------------------
# After the all-reduce both copies hold the full tied gradient, so a global norm that
# adds every stage's squares counts it twice: too large, and the step it clips comes
# out too small. Megatron-LM marks the last stage's copy ``shared`` (in
# ``LanguageModule.setup_embeddings_and_output_layer``) and its optimizer leaves
# shared parameters out of the norm (``param_is_not_shared`` in `optimizer.py
# <https://github.com/NVIDIA/Megatron-LM/blob/d98e8a64ddf34856e74b24714e3bedb2f5a39553/megatron/core/optimizer/optimizer.py>`_);
# `Megatron-LM#7228 <https://github.com/NVIDIA/Megatron-LM/pull/7228>`_ (closed)
# proposed the same filter for the Megatron-FSDP v2 optimizer, whose norm would read
# √2 too large without it once that optimizer allows pipeline stages (it rejects them
# today). ``count_once`` does the same here: stage 1 skips its copy. One process
# clips the tied model with :func:`torch.nn.utils.clip_grad_norm_` at ``MAX_NORM``.
MAX_NORM = 1.0
counted_twice = wsd.run(train_pipeline, nprocs=2, args=(True, MAX_NORM, False))
counted_once = wsd.run(train_pipeline, nprocs=2, args=(True, MAX_NORM, True))
clipped, _, true_norms = train_reference(MAX_NORM)
print(f"first step's norm, one process:         {true_norms[0]:.3f}")
print(f"summed over the stages, copy twice:     {counted_twice[0]['norms'][0]:.3f}")
print(f"summed over the stages, copy once:      {counted_once[0]['norms'][0]:.3f}")

# %%
# Counted once, the norm is the tied model's at every step and so is the clipped
# result; counted twice, the first norm is already larger and the weights end
# elsewhere:
#
# >>> max(abs(a - b) for a, b in zip(counted_once[0]["norms"], true_norms)) < 1e-5
# True
# >>> gap_to(clipped, counted_once) < 1e-6, gap_to(clipped, counted_twice) > 1e-3
# (True, True)
# >>> counted_twice[0]["norms"][0] > true_norms[0] + 0.1
# True
#
# Left, the copies without the all-reduce; right, the norm each run clipped by:
import matplotlib.pyplot as plt

fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
left.plot(unsynced[0]["drift"], "o-", color="#c44e52", label="no all-reduce")
left.plot(synced[0]["drift"], "s-", color="#4c72b0", label="all-reduced")
left.set(xticks=range(STEPS + 1), xlabel="optimizer steps", title="The two copies")
left.set_ylabel("max |copy on rank 0 − copy on rank 1|")
steps = range(1, STEPS + 1)
right.plot(steps, true_norms, "-", color="#999999", lw=4, label="one process")
right.plot(steps, counted_twice[0]["norms"], "o-", color="#c44e52", label="copy twice")
right.plot(steps, counted_once[0]["norms"], "s", color="#4c72b0", label="copy once")
right.set(xticks=steps, xlabel="step", ylabel="gradient norm", title="Clipped by")
left.legend(fontsize=8)
right.legend(fontsize=8)
fig.tight_layout()

# %%
# Conclusion
# ----------
# Across pipeline stages a tie is no longer one object: it is two copies that the
# training loop must keep equal. Summing their gradients between the first and the
# last stage after each backward pass does it, as Megatron-LM's embedding group does
# (`Megatron-LM#299 <https://github.com/NVIDIA/Megatron-LM/issues/299>`_ explains
# it), and anything that adds up over the parameters, such as the gradient norm, must
# then count the two copies as one. Forget the all-reduce and nothing fails: the two
# matrices quietly become two different weights. Next:
# :doc:`plot_tensor_parallel_tied`, which splits the tied matrix itself across ranks;
# and :func:`weightshare.distributed.all_reduce_tied_grads` in the
# :doc:`API reference </api>`.
