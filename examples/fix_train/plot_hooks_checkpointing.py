"""
Hooks and activation checkpointing on a shared weight
=====================================================

*"AssertionError: The parameter 97 has already been reduced. Gradient computed twice
for this partition"* (DeepSpeed ZeRO-2), *"Expected to mark a variable ready only
once"* (DDP), or a gradient hook that logs two gradients per step for one weight.
A gradient hook on a weight used twice fires once per backward pass, with the sum
of both uses, in plain autograd and under ``checkpoint(..., use_reentrant=False)``;
under ``use_reentrant=True`` it fires once per checkpointed use, with that use's
part only, and whatever acts once per weight (a reducer, a clip) acts on a part.
This page counts the calls, lets a clipping hook and DDP go wrong, then fixes both
with ``use_reentrant=False``.
"""

# %%
# One layer applied twice
# -----------------------
# A layer reused at two depths (as ALBERT reuses its layers) is one weight used
# twice, like a tied embedding and output layer. Activation checkpointing
# (:func:`~torch.utils.checkpoint.checkpoint`) around each application drops its
# activations and recomputes them in backward.
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import weightshare


class Repeated(nn.Module):
    """``head(shared(shared(inp(x))))``; ``reentrant=None`` checkpoints nothing."""

    def __init__(self, reentrant: bool | None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.reentrant = reentrant
        self.inp = nn.Linear(8, 8)
        self.shared = nn.Linear(8, 8)  # used twice
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for _ in range(2):
            if self.reentrant is None:
                x = self.shared(x)
            else:  # the layer's activations are recomputed in backward
                x = checkpoint(self.shared, x, use_reentrant=self.reentrant)
        return self.head(x)


x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))


def hooked_backward(model: Repeated) -> tuple[list[torch.Tensor], int]:
    """One backward: what a hook on ``shared.weight`` saw; how often ``.grad`` grew."""
    weight = model.shared.weight
    seen: list[torch.Tensor] = []
    accumulated: list[int] = []
    weight.register_hook(lambda grad: seen.append(grad.clone()))
    weight.register_post_accumulate_grad_hook(lambda p: accumulated.append(1))
    model(x).sum().backward()
    return seen, len(accumulated)


# %%
# Plain autograd: one call, with the sum
# --------------------------------------
# Autograd adds the two uses' gradients before they reach the weight, so the hook
# fires once and sees exactly what ends up in ``.grad``, and ``.grad`` is written
# once (the same for a tied embedding and head:
# :doc:`/auto_examples/fix_train/plot_transforms_functional`).
plain = Repeated(reentrant=None)
plain_seen, plain_accumulated = hooked_backward(plain)

# %%
# >>> len(plain_seen), plain_accumulated
# (1, 1)
# >>> torch.equal(plain_seen[0], plain.shared.weight.grad)
# True

# %%
# Reentrant checkpointing: one call per use
# -----------------------------------------
# With ``use_reentrant=True`` each checkpoint's backward recomputes its segment and
# runs a separate, nested backward pass through it, which writes the segment's
# gradient into ``.grad`` at once. The weight takes part in two such passes, so
# each hook fires twice. :func:`weightshare.grad_contributions` (run with
# ``use_reentrant=False``, since it needs :func:`torch.autograd.grad`) splits the
# gradient into one term per use: the two calls are those two terms, the second
# use first, because backward runs from the output.
reentrant = Repeated(reentrant=True)
seen, accumulated = hooked_backward(reentrant)
reference = Repeated(reentrant=False)
per_use = weightshare.grad_contributions(
    reference, "shared.weight", lambda: reference(x).sum()
)

# %%
# >>> len(seen), accumulated
# (2, 2)
# >>> sorted(per_use)
# ['shared[0]', 'shared[1]']
# >>> [torch.allclose(seen[0], per_use["shared[1]"]),
# ...  torch.allclose(seen[1], per_use["shared[0]"])]
# [True, True]
#
# The final ``.grad`` is still right, since both parts are added into it; only
# code that runs per call sees parts:
#
# >>> torch.allclose(reentrant.shared.weight.grad, plain.shared.weight.grad)
# True

# %%
# A hook that acts per call acts on a part
# ----------------------------------------
# A hook that returns a tensor replaces the gradient; a common way to clip a
# weight's gradient is a hook that clamps it. Clamping two parts and adding them
# is not clamping the sum: reentrant checkpointing lets up to twice the limit by.
LIMIT = 1.0


def clipped_grad_max(reentrant: bool | None) -> float:
    """Largest |entry| of ``shared.weight.grad`` with a clamping hook."""
    model = Repeated(reentrant)
    model.shared.weight.register_hook(lambda grad: grad.clamp(-LIMIT, LIMIT))
    model(x).sum().backward()
    return model.shared.weight.grad.abs().max().item()


clipped = {mode: clipped_grad_max(mode) for mode in (None, True)}

# %%
# >>> clipped[None], clipped[True]
# (1.0, 2.0)

# %%
# A hook that expects one call: DDP's error
# -----------------------------------------
# :class:`~torch.nn.parallel.DistributedDataParallel` marks a parameter "ready" for
# its all-reduce from a hook on its gradient accumulation; a second call in one
# backward is an error. A process group of one rank, made in this process, shows
# it. DeepSpeed's ZeRO-2 and ZeRO-3 reduce from such a hook too, and ZeRO-2 asserts
# with the message at the top of this page (a layer reused six times,
# `DeepSpeed#2103 <https://github.com/deepspeedai/DeepSpeed/issues/2103>`_; a
# Siamese encoder, `DeepSpeed#988
# <https://github.com/deepspeedai/DeepSpeed/issues/988>`_, where a maintainer
# traced it to checkpointing calling the hook once per use of a shared weight).
#
# The model is freed before its process group. Freed after, its reducer drops the
# group's last reference while holding Python's lock, and the group waits for a
# gloo thread that needs that lock: with torch 2.13 this froze the process now and
# then (`pytorch#56297 <https://github.com/pytorch/pytorch/issues/56297>`_ is about
# such blocking destructors). A model that a reference cycle keeps alive (the first
# DDP model of a process can be) is collected before the group goes.
import gc
import weakref

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def ddp_backward(reentrant: bool | None) -> str | None:
    """One DDP forward and backward on one rank; the error's first line, if any."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    model = None
    try:
        model = DDP(Repeated(reentrant))  # kept alive: its reducer holds the hooks
        model(x).sum().backward()
    except RuntimeError as err:
        return str(err).split(". ")[0]
    finally:  # free DDP while the group lives on (see above)
        kept = None if model is None else weakref.ref(model)
        model = None
        if kept is not None and kept() is not None:  # held by a reference cycle
            gc.collect()
        dist.destroy_process_group()
    return None


ddp_error = ddp_backward(reentrant=True)
print(ddp_error)

# %%
# The fix: ``use_reentrant=False``
# --------------------------------
# The non-reentrant checkpoint recomputes a segment's activations inside the one
# backward pass (through hooks on the tensors saved for backward) instead of
# running a pass of its own, so the two uses meet in one graph again, as in plain
# autograd: one call, with the sum, the clip holds, and DDP trains.
fixed = Repeated(reentrant=False)
fixed_seen, fixed_accumulated = hooked_backward(fixed)
clipped[False] = clipped_grad_max(False)
fixed_ddp_error = ddp_backward(reentrant=False)

# %%
# >>> len(fixed_seen), fixed_accumulated, torch.allclose(fixed_seen[0], plain_seen[0])
# (1, 1, True)
# >>> clipped[False], (ddp_error is None, fixed_ddp_error is None)
# (1.0, (False, True))

# %%
# Leaving the argument out is not the fix: torch 2.13 warns and still takes the
# reentrant path.
import warnings

layer, calls = nn.Linear(8, 8), []
layer.weight.register_hook(calls.append)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    h = x.clone().requires_grad_()
    checkpoint(layer, checkpoint(layer, h)).sum().backward()

# %%
# >>> len(calls), "you can pass use_reentrant=True" in str(caught[0].message)
# (2, True)

# %%
# Which uses count
# ----------------
# Each reentrant checkpoint that holds a use runs its own pass, and the uses outside
# any checkpoint share the outer one. A tied embedding and output layer with only
# the block between them checkpointed see one call; with the head inside the
# checkpoint (computed there with the loss, to save the logits' memory), two.
# transformers 5.23 checkpoints only its layer classes (``GradientCheckpointingLayer``),
# not the embedding or the head, and passes ``use_reentrant=False`` unless told
# otherwise.
emb, block = nn.Embedding(16, 8), nn.Linear(8, 8)
head = nn.Linear(8, 16, bias=False)
head.weight = emb.weight  # the tie


def tied_hook_calls(head_inside: bool) -> int:
    calls: list[torch.Tensor] = []
    handle = emb.weight.register_hook(calls.append)
    h = emb(torch.arange(16))
    if head_inside:
        logits = checkpoint(lambda t: head(block(t)), h, use_reentrant=True)
    else:
        logits = head(checkpoint(block, h, use_reentrant=True))
    logits.sum().backward()
    handle.remove()
    return len(calls)


tied_calls = [tied_hook_calls(head_inside) for head_inside in (False, True)]

# %%
# >>> tied_calls
# [1, 2]

# %%
# Conclusion
# ----------
# A gradient hook on a shared weight gets one call with the sum in plain autograd
# and with ``use_reentrant=False``, but one call per checkpointed use under
# reentrant checkpointing: ``.grad`` still adds up, but a clamp lets up to twice
# the limit through and DDP and ZeRO-2 stop (the difference reported in
# `pytorch#81296 <https://github.com/pytorch/pytorch/issues/81296>`_). Pass
# ``use_reentrant=False`` where a shared weight is used inside a checkpoint.
# DDP's error with two processes, and ``static_graph=True`` as a second fix, are
# on :doc:`/auto_examples/fix_distribute/plot_ddp_tied`.
#
# Next: :doc:`/auto_examples/fix_train/plot_optimizer_groups_clipping`, where a tied
# weight handed to the optimizer or the clipping twice goes wrong the other way,
# and :func:`weightshare.grad_contributions` in the :doc:`API reference </api>`.
