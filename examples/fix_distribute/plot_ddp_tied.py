"""
DDP with a tied model
=====================

``RuntimeError: Expected to mark a variable ready only once`` is what
:class:`~torch.nn.parallel.DistributedDataParallel` (DDP) raises when one layer is
applied twice under reentrant activation checkpointing. A tied *weight*, on the other
hand, needs nothing: it is one :class:`~torch.nn.Parameter`, so DDP registers it once,
all-reduces it once per step, and every rank keeps the tie. This page starts two real
processes on this machine and checks both: a tied GPT trains on two ranks exactly as
one process trains on the whole batch, and the shared layer raises that error until
one of two fixes is applied, after which it too matches one process.
"""

# %%
# A tied GPT and its data
# -----------------------
# The model is :class:`weightshare.models.GPT`, whose output projection ``lm_head``
# holds the token embedding ``wte``'s weight. Each step takes a global batch of four
# sequences; with two ranks, each rank trains on its half. Everything is seeded, so
# every process builds the same model and the same batches.
import torch
from torch import nn

import weightshare as ws
import weightshare.distributed as wsd
from weightshare.models import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=64, context=8, n_layer=1, n_head=2, d_model=16)
STEPS, BATCH, LR = 3, 4, 0.5


def make_model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG)


def batches() -> torch.Tensor:
    """STEPS global batches of BATCH token sequences."""
    generator = torch.Generator().manual_seed(1)
    shape = (STEPS, BATCH, CONFIG.context)
    return torch.randint(0, CONFIG.vocab_size, shape, generator=generator)


def next_token_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


count = ws.count_parameters(make_model())  # unique parameters, and every name

# %%
# The worker: what each rank runs
# -------------------------------
# :func:`weightshare.distributed.run` forks two processes, joins them in a gloo
# process group and calls ``train_ddp`` in each. A communication hook records what
# DDP all-reduces: the size of every bucket (DDP packs gradients into buckets and
# all-reduces each bucket as one tensor) and the tensors in it. Each rank returns
# plain values to this page: whether its tie holds, the largest difference between
# the ranks' weights (:func:`weightshare.distributed.rank_spread`, 0.0 when
# identical), and its trained weights.
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel as DDP


def record_then_allreduce(log: list[tuple[int, int]], bucket):
    """A DDP comm hook: note (elements, tensors) of a GradBucket, then all-reduce it."""
    log.append((bucket.buffer().numel(), len(bucket.parameters())))
    return allreduce_hook(None, bucket)  # the default: sum, divide by world size


def train_ddp() -> dict[str, object]:
    rank, world = dist.get_rank(), dist.get_world_size()
    device = wsd.device()  # the CPU here; a GPU per rank under torchrun with NCCL
    model = make_model().to(device)
    ddp = DDP(model, device_ids=[device] if device.type == "cuda" else None)
    buckets: list[tuple[int, int]] = []
    ddp.register_comm_hook(buckets, record_then_allreduce)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=LR)
    for tokens in batches():
        local = tokens.chunk(world)[rank].to(device)  # this rank's half
        optimizer.zero_grad()
        next_token_loss(ddp, local).backward()  # DDP averages the gradients here
        optimizer.step()
    return {
        "tied": model.lm_head.weight is model.wte.weight,
        "spread": wsd.rank_spread(model),
        "buckets": buckets,
        "weights": {k: v.cpu() for k, v in model.state_dict().items()},
    }


results = wsd.run(train_ddp, nprocs=2, timeout=60)

# %%
# The tie holds on both ranks, and the ranks hold the same values to the last bit:
#
# >>> [r["tied"] for r in results]
# [True, True]
# >>> [r["spread"] for r in results]
# [0.0, 0.0]

# %%
# The shared weight is all-reduced once
# -------------------------------------
# DDP builds its buckets from ``model.parameters()``, which yields the tied weight
# once. Every step all-reduced one bucket of 16 tensors holding 4464 elements: the
# model's unique parameters, not the 17 names and 5488 elements of its state dict.
#
# >>> results[0]["buckets"]  # (elements, tensors) of each bucket, step by step
# [(4464, 16), (4464, 16), (4464, 16)]
# >>> (count.unique, count.unique_tensors), (count.state_dict, count.names)
# ((4464, 16), (5488, 17))
import matplotlib.pyplot as plt

labels = ["state dict\n(per name)", "unique\nparameters", "all-reduced\nper step"]
all_reduced = sum(elements for elements, _ in results[0]["buckets"]) / STEPS
values = [count.state_dict, count.unique, all_reduced]
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.bar(labels, values, color=["#bbbbbb", "#4c72b0", "#dd8452"])
ax.set(ylabel="elements", title="DDP all-reduces the tied weight once")
fig.tight_layout()

# %%
# Two ranks equal one process
# ---------------------------
# Averaging the gradients of two half batches gives the gradient of the whole batch,
# so one process trained on the whole batches must end where the ranks ended, up to
# float32 rounding (the halves are summed in a different order). The reference runs
# here, in the page's own process.
reference = make_model()
optimizer = torch.optim.SGD(reference.parameters(), lr=LR)
for tokens in batches():
    optimizer.zero_grad()
    next_token_loss(reference, tokens).backward()
    optimizer.step()


def largest_gap(weights: dict[str, torch.Tensor], reference: nn.Module) -> float:
    """The largest difference between trained weights and a reference model's."""
    pairs = ((weights[k], v) for k, v in reference.state_dict().items())
    return max((a - b).abs().max().item() for a, b in pairs)


gap = largest_gap(results[0]["weights"], reference)
# float32 rounding differs with the thread count: print the bound, not the digits
print("largest difference from the single process:", "< 1e-6" if gap < 1e-6 else gap)

# %%
# The ranks ended within 1e-6 of the single process:
#
# >>> gap < 1e-6
# True


# %%
# A layer used twice under activation checkpointing
# -------------------------------------------------
# Weight sharing also means applying one layer twice. Wrap each application in
# :func:`torch.utils.checkpoint.checkpoint` with ``use_reentrant=True`` and DDP
# breaks: every reentrant checkpoint runs its own backward pass, so the autograd hook
# that tells DDP "this parameter's gradient is ready" fires once per use, and DDP
# counts the second firing as an error (reported with layer-wise parameter sharing in
# `pytorch#46166 <https://github.com/pytorch/pytorch/issues/46166>`_ and
# `Lightning#4033 <https://github.com/Lightning-AI/pytorch-lightning/issues/4033>`_).
# As above, each step's global batch of eight inputs is split between the ranks.
from torch.utils.checkpoint import checkpoint


class SharedTwice(nn.Module):
    """``head(shared(shared(inp(x))))``, each ``shared`` call checkpointed."""

    def __init__(self, use_reentrant: bool) -> None:
        super().__init__()
        self.use_reentrant = use_reentrant
        self.inp = nn.Linear(8, 8)
        self.shared = nn.Linear(8, 8)  # applied twice
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for _ in range(2):
            x = checkpoint(self.shared, x, use_reentrant=self.use_reentrant)
        return self.head(x)


def make_shared_twice(use_reentrant: bool) -> SharedTwice:
    torch.manual_seed(0)
    return SharedTwice(use_reentrant)


def inputs() -> torch.Tensor:
    """Two steps of a global batch of eight inputs."""
    return torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(2))


def train_checkpointed(use_reentrant: bool, static_graph: bool) -> dict[str, object]:
    rank, world, device = dist.get_rank(), dist.get_world_size(), wsd.device()
    model = make_shared_twice(use_reentrant).to(device)
    device_ids = [device] if device.type == "cuda" else None
    ddp = DDP(model, device_ids=device_ids, static_graph=static_graph)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    try:
        for x in inputs():
            local = x.chunk(world)[rank].to(device)  # this rank's half
            optimizer.zero_grad()
            ddp(local).square().mean().backward()
            optimizer.step()
    except RuntimeError as err:
        return {"error": str(err)}
    weights = {k: v.cpu() for k, v in model.state_dict().items()}
    return {"error": None, "spread": wsd.rank_spread(model), "weights": weights}


failed = wsd.run(train_checkpointed, args=(True, False))
for line in str(failed[0]["error"]).splitlines()[:2]:
    print(line.split(". ")[0] + ".")  # the first sentence of each of two lines

# %%
# Both ranks stop with that error:
#
# >>> {str(r["error"]).split(". ")[0] for r in failed}
# {'Expected to mark a variable ready only once'}

# %%
# Two fixes, each equal to one process
# ------------------------------------
# ``use_reentrant=False`` (PyTorch's recommended checkpointing) recomputes inside the
# one backward pass, so each parameter becomes ready once. ``static_graph=True`` tells
# DDP that the graph is the same every step; it then learns on the first step how
# often each hook fires. Each rank saw only its half of every batch, so the ranks can
# agree with one process trained on the whole batches only if DDP averaged their
# gradients.
non_reentrant = wsd.run(train_checkpointed, args=(False, False))
static_graph = wsd.run(train_checkpointed, args=(True, True))

whole = make_shared_twice(use_reentrant=False)
optimizer = torch.optim.SGD(whole.parameters(), lr=0.1)
for x in inputs():
    optimizer.zero_grad()
    whole(x).square().mean().backward()
    optimizer.step()

# %%
# Both fixes train, the ranks hold identical weights, and those are the single
# process's within float32 rounding:
#
# >>> [(r["error"], r["spread"]) for r in non_reentrant + static_graph]
# [(None, 0.0), (None, 0.0), (None, 0.0), (None, 0.0)]
# >>> largest_gap(non_reentrant[0]["weights"], whole) < 1e-6
# True
# >>> largest_gap(static_graph[0]["weights"], whole) < 1e-6
# True

# %%
# Conclusion
# ----------
# DDP needs nothing special for a tied weight: it sees one parameter, reduces it
# once, and the ranks stay identical and equal to a single process. The trap is a
# shared layer under *reentrant* checkpointing; use ``use_reentrant=False`` (why, hook
# by hook: :doc:`/auto_examples/fix_train/plot_hooks_checkpointing`). Under
# ``torchrun`` the same file runs the worker in each launched process, with NCCL on
# GPUs (a path this site's build does not run; its numbers are gloo's, on the CPU).
# Next: :doc:`plot_fsdp2_tied`, where sharding the tied weight needs care, and
# :func:`weightshare.distributed.run` in the :doc:`API reference </api>`.
