"""
Copies that look like ties
==========================

*"My tied encoder and decoder weights drift apart"*, *"the parameter count is larger
than the paper's"*, or ``data_ptr()`` says the two weights are different tensors. A
tie is one :class:`~torch.nn.Parameter` object under two names; anything that makes
a second object is not one, even when the values start equal or the memory is
shared. This page builds a tied autoencoder (decoder weight = encoder
weightᵀ) four wrong ways, ``nn.Parameter(w.t())``, assignment through ``.data``,
``clone()`` and a deep copy of one submodule, shows each one come apart after one
optimizer step, then the two right ways: ``F.linear(x, w.t())`` and
``weightshare.tie(..., transpose=True)``. Two side effects of a real tie close it:
the direction of the assignment decides which initial values survive, and freezing
one name freezes all.
"""

# %%
# Four constructions
# ------------------
# The encoder maps 6 features to 3 and the decoder maps them back, so the decoder's
# weight (6 × 3) should be the encoder's (3 × 6) transposed. Each function below
# starts from the same fresh autoencoder and "ties" it one way. The last one ties
# correctly with :func:`weightshare.tie`, then replaces the decoder by a deep copy of
# itself, as code that wraps or re-creates one submodule does.
import copy

import torch
import torch.nn.functional as F
from torch import nn

import weightshare


def autoencoder() -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict(
        {"enc": nn.Linear(6, 3, bias=False), "dec": nn.Linear(3, 6, bias=False)}
    )


def as_new_parameter(model: nn.ModuleDict) -> None:
    model["dec"].weight = nn.Parameter(model["enc"].weight.t())


def through_data(model: nn.ModuleDict) -> None:
    model["dec"].weight.data = model["enc"].weight.data.t()


def as_clone(model: nn.ModuleDict) -> None:
    model["dec"].weight = nn.Parameter(model["enc"].weight.detach().t().clone())


def deep_copied(model: nn.ModuleDict) -> None:
    weightshare.tie(model, "dec.weight", "enc.weight", transpose=True)
    model["dec"] = copy.deepcopy(model["dec"])


constructions = {
    "nn.Parameter(w.t())": as_new_parameter,
    ".data = w.t()": through_data,
    "clone()": as_clone,
    "deepcopy(dec)": deep_copied,
}
built = {}
for label, construct in constructions.items():
    built[label] = autoencoder()
    construct(built[label])

# %%
# None of them is one object under two names; the first two share memory with the
# encoder, the last two do not:
#
# >>> [weightshare.shared_groups(model) for model in built.values()]
# [[], [], [], []]
# >>> [len(weightshare.storage_aliases(model)) for model in built.values()]
# [1, 1, 0, 0]
#
# So ``parameters()`` yields two weights where a tie has one, and a parameter count
# is too large by the decoder's 18 elements
# (`LLMs-from-scratch#822 <https://github.com/rasbt/LLMs-from-scratch/issues/822>`_:
# an output layer that held a copy of the token embedding, counted twice):
#
# >>> [sum(p.numel() for p in model.parameters()) for model in built.values()]
# [36, 36, 36, 36]

# %%
# One step apart
# --------------
# Each model takes one SGD step on a reconstruction loss; the drift is the largest
# difference between the encoder's weightᵀ and the decoder's weight. The two that
# share memory cannot drift while the memory stays shared: each update lands in the
# one storage. But a dtype or device move, ``.to(torch.float64)`` here (the same
# happens with ``.half()`` or ``.to("cuda")``), converts each
# :class:`~torch.nn.Parameter` on its own and so splits the memory. The real tie
# is converted once and stays one tensor.
import matplotlib.pyplot as plt

x = torch.randn(8, 6)


def drift_after_step(model: nn.ModuleDict, dtype: torch.dtype) -> float:
    """Convert to ``dtype``, take one SGD step; return max |encᵀ − dec|."""
    model.to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = x.to(dtype)
    F.mse_loss(model["dec"](model["enc"](batch)), batch).backward()
    optimizer.step()
    return (model["enc"].weight.t() - model["dec"].weight).abs().max().item()


constructions["weightshare.tie"] = lambda model: weightshare.tie(
    model, "dec.weight", "enc.weight", transpose=True
)
drift = {}
for dtype in (torch.float32, torch.float64):
    for label, construct in constructions.items():
        model = autoencoder()
        construct(model)
        drift[label, dtype] = drift_after_step(model, dtype)

fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
positions = torch.arange(len(constructions))
for offset, dtype, kind in (
    (-0.2, torch.float32, "as built"),
    (0.2, torch.float64, "after .to(float64)"),
):
    heights = [drift[label, dtype] for label in constructions]
    bars = ax.bar(positions + offset, heights, width=0.4, label=kind)
    ax.bar_label(bars, fmt="{:.3f}", fontsize=8)
ax.set_xticks(positions, list(constructions), rotation=15)
ax.set_ylabel("max |encᵀ − dec|")
ax.set_title("Drift after one SGD step")
ax.margins(y=0.15)
ax.legend()
plt.show()

# %%
# >>> [round(drift[label, torch.float32], 4) for label in constructions]
# [0.0, 0.0, 0.0059, 0.0059, 0.0]
# >>> [round(drift[label, torch.float64], 4) for label in constructions]
# [0.0059, 0.0059, 0.0059, 0.0059, 0.0]

# %%
# Transposed sharing done right
# -----------------------------
# There are two ways to use one weight as W in one place and Wᵀ in another. Either
# keep one layer and use its weight transposed in ``forward``, with
# :func:`torch.nn.functional.linear` (the advice in the PyTorch forum thread `"How
# to create and train a tied autoencoder?"
# <https://discuss.pytorch.org/t/how-to-create-and-train-a-tied-autoencoder/2585>`_),
# or keep two layers and let :func:`weightshare.tie` register a parametrization whose
# ``original`` *is* the encoder's Parameter, so the decoder computes Wᵀ from it.


class TiedAutoencoder(nn.Module):
    """6 → 3 → 6 with one weight; the decoder uses the encoder's weightᵀ."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(6, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.enc(x), self.enc.weight.t())


parametrized = autoencoder()
weightshare.tie(parametrized, "dec.weight", "enc.weight", transpose=True)
functional = TiedAutoencoder()

# %%
# One Parameter in the functional model; in the parametrized one the decoder's
# ``original`` is the encoder's weight, and the decoder's weight is its transpose:
#
# >>> [name for name, _ in functional.named_parameters()]
# ['enc.weight']
# >>> weightshare.shared_groups(parametrized)
# [['enc.weight', 'dec.parametrizations.weight.original']]
# >>> torch.equal(parametrized["dec"].weight, parametrized["enc"].weight.t())
# True

# %%
# Whose values survive, and freezing
# ----------------------------------
# A tie keeps one of the two Parameters and drops the other, with its initial
# values. In ``a.weight = b.weight`` that is *b*'s; :func:`weightshare.tie` keeps
# the ``source``'s. So tie first and initialise afterwards, or tie towards the side
# whose values you want.
#
# >>> a, b = nn.Linear(3, 3), nn.Linear(3, 3)
# >>> b_values = b.weight.detach().clone()
# >>> a.weight = b.weight
# >>> torch.equal(a.weight, b_values)
# True
# >>> decoder_init = autoencoder()["dec"].weight.detach().clone()
# >>> torch.equal(parametrized["dec"].weight, decoder_init)
# False
#
# And since both names are one object, freezing "the decoder" freezes the encoder's
# weight as well:
#
# >>> for param in parametrized["dec"].parameters():
# ...     _ = param.requires_grad_(False)
# >>> parametrized["enc"].weight.requires_grad
# False

# %%
# Conclusion
# ----------
# Only one :class:`~torch.nn.Parameter` object under two names is a tie.
# ``nn.Parameter(w.t())`` and ``.data`` assignment give a second leaf over the same
# memory, which counts twice and splits at the next dtype or device move;
# ``clone()`` and a deep copy of one submodule give a second tensor at once. Check
# with :func:`weightshare.shared_groups` (real ties) and
# :func:`weightshare.storage_aliases` (second objects over one memory); for Wᵀ use
# ``F.linear(x, w.t())`` or ``weightshare.tie(..., transpose=True)``.
#
# Next: :doc:`plot_meta_device_init` (a real tie lost when a model built on the meta
# device is materialised), then the training loop's traps, and the
# :doc:`symptom index </symptoms>` for every Fix page.
