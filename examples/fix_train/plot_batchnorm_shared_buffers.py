"""
BatchNorm in a shared encoder: one step, two updates
====================================================

*"num_batches_tracked is 2 after one training step"*, or *"the Siamese network does
well in training and falls apart after model.eval()"*. A module called twice in a
step shares its *buffers* as well as its parameters. BatchNorm keeps its running
statistics in buffers, so an encoder reused for both branches of a pair updates them
twice per step, and in evaluation mode normalises each branch with a mix of both.
This page shows each effect on a small encoder, and which remedy fits which case:
one call on the two branches stacked, a tower per branch with tied parameters and
statistics of its own, or a norm without batch statistics.
"""

# %%
# Two calls, two updates
# ----------------------
# The encoder maps 8 features to a 4-dimensional embedding, with a
# ``BatchNorm1d`` after the hidden layer; ``Siamese`` calls it once
# per branch, the usual way. ``pairs`` draws a batch of 256 pairs, the second branch
# from ``shift + scale·N(0, 1)``.
import copy

import torch
from torch import nn

SEED = 0  # the page's one seed: weights and data
torch.manual_seed(SEED)
gen = torch.Generator().manual_seed(SEED)


def make_encoder(norm: type[nn.Module] = nn.BatchNorm1d) -> nn.Sequential:
    """8 features → 16 → a 4-dimensional embedding, normalised in the middle."""
    return nn.Sequential(nn.Linear(8, 16), norm(16), nn.ReLU(), nn.Linear(16, 4))


class Siamese(nn.Module):
    """One encoder, called once per branch."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.encoder(a), self.encoder(b)


def pairs(shift: float = 0.0, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """256 pairs: branch a from N(0, 1), branch b from shift + scale·N(0, 1)."""
    a = torch.randn(256, 8, generator=gen)
    return a, shift + scale * torch.randn(256, 8, generator=gen)


encoder = make_encoder()
a, b = pairs()
model = Siamese(copy.deepcopy(encoder))
za, zb = model(a, b)  # the forward pass of one training step
bn = model.encoder[1]
mean_a, mean_b = (model.encoder[0](x).mean(0).detach() for x in (a, b))

# %%
# The running mean starts at 0 and moves by ``momentum = 0.1`` towards each batch's
# mean. After branch ``a`` it is 0.1·mean(a); branch ``b`` then leaves
# 0.9·0.1·mean(a) + 0.1·mean(b). The step counts as two batches, and the later
# branch weighs more:
#
# >>> bn.num_batches_tracked.item()
# 2
# >>> torch.allclose(bn.running_mean, 0.09 * mean_a + 0.1 * mean_b)
# True
#
# When both branches draw from one source that costs little: the estimates converge
# to the same values, only faster. When they do not, it costs more.

# %%
# Two sources: training and evaluation disagree
# ----------------------------------------------
# Often the two inputs of a pair come from different sources: a photo and a sketch,
# a query and a document. Here branch ``b`` is shifted by 2 and scaled by 0.5. In
# training mode BatchNorm normalises each call by *its own* batch, so each branch is
# centred on its own mean. The running estimates, which evaluation uses, average the
# two branches and fit neither. ``train_eval_gap`` runs 50 training-mode forwards
# over fresh pairs (no backward is needed: the statistics move in the forward pass),
# then measures how far branch ``b``'s embeddings move when the model switches to
# evaluation mode.
ONE_SOURCE, TWO_SOURCES = {}, {"shift": 2.0, "scale": 0.5}


def train_eval_gap(model: nn.Module, source: dict[str, float]) -> float:
    """Mean |z_train − z_eval| / |z_train| of branch b, after 50 training forwards."""
    with torch.no_grad():
        for _ in range(50):
            model(*pairs(**source))
        a, b = pairs(**source)
        in_training = model(a, b)[1]
        model.eval()
        in_evaluation = model(a, b)[1]
    model.train()
    change = (in_training - in_evaluation).norm(dim=1) / in_training.norm(dim=1)
    return change.mean().item()


per_branch = [
    train_eval_gap(Siamese(copy.deepcopy(encoder)), source)
    for source in (ONE_SOURCE, TWO_SOURCES)
]

# %%
# With one source the embeddings move a little between the two modes (a batch's
# statistics are not the population's); with two sources they move by a good part
# of their own length, many times as much:
#
# >>> per_branch[1] > 0.5, per_branch[1] > 5 * per_branch[0]
# (True, True)


# %%
# One call on both branches: one update, and the branches leak
# ------------------------------------------------------------
# Calling the encoder once on ``torch.cat([a, b])`` and splitting the output updates
# the statistics once per step, from the whole batch, and normalises in training
# with the same mix of both branches that the running estimates hold in evaluation
# (close, not equal: they average many batches). The price: in training mode
# each embedding now depends on the *other* branch's inputs, since both are
# normalised by one batch's statistics. The same ``a`` paired with other ``b`` inputs
# gets other embeddings; in evaluation mode it does not.
class OneCall(Siamese):
    """One encoder, called once on both branches stacked."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.encoder(torch.cat([a, b])).split([len(a), len(b)])


once = OneCall(copy.deepcopy(encoder))
other_b = pairs()[1]
with torch.no_grad():
    za_with_b = once(a, b)[0]
    updates = once.encoder[1].num_batches_tracked.item()
    za_with_other_b = once(a, other_b)[0]
    once.eval()
    za_eval_b, za_eval_other_b = once(a, b)[0], once(a, other_b)[0]
    once.train()

# %%
# >>> updates, torch.equal(za_with_b, za_with_other_b)
# (1, False)
# >>> torch.equal(za_eval_b, za_eval_other_b)
# True
#
# This channel between the samples of a batch matters when the loss compares them
# with each other: with in-batch negatives, He et al. ("Momentum Contrast for
# Unsupervised Visual Representation Learning", arXiv 1911.05722, "Shuffling BN")
# found that a model can use BatchNorm's batch statistics to cheat its task.

# %%
# A tower per branch: shared parameters, statistics of their own
# --------------------------------------------------------------
# :func:`weightshare.tie` makes every parameter of ``tower_b`` the very
# :class:`~torch.nn.Parameter` of ``tower_a``. A tie covers parameters, not buffers,
# so each tower keeps running statistics of its own branch only: right when the
# branches differ and each input is evaluated by its own branch's tower.
import weightshare


class Towers(nn.Module):
    """A copy of ``encoder`` per branch, every parameter tied to tower_a's."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.tower_a, self.tower_b = copy.deepcopy(encoder), copy.deepcopy(encoder)
        for name, _ in encoder.named_parameters():
            weightshare.tie(self, f"tower_b.{name}", f"tower_a.{name}")

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.tower_a(a), self.tower_b(b)


towers = Towers(encoder)

# %%
# Six parameters tied, and two running means:
#
# >>> len(weightshare.shared_groups(towers))
# 6
# >>> towers.tower_a[1].running_mean is towers.tower_b[1].running_mean
# False

# %%
# Four arrangements side by side
# ------------------------------
# The same measurement for the four ways to place the norm, with one source and with
# two. The last one replaces BatchNorm by :class:`~torch.nn.LayerNorm`, which
# normalises each sample by itself and keeps no statistics.
import matplotlib.pyplot as plt

arrangements = {
    "one encoder,\ncalled per branch": lambda: Siamese(copy.deepcopy(encoder)),
    "one call on\ncat([a, b])": lambda: OneCall(copy.deepcopy(encoder)),
    "towers, tied\nparameters": lambda: Towers(encoder),
    "LayerNorm,\ncalled per branch": lambda: Siamese(make_encoder(nn.LayerNorm)),
}
gaps = {
    label: [train_eval_gap(make(), source) for source in (ONE_SOURCE, TWO_SOURCES)]
    for label, make in arrangements.items()
}
fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
positions = torch.arange(len(gaps))
for offset, column, kind in ((-0.2, 0, "one source"), (0.2, 1, "two sources")):
    heights = [gap[column] for gap in gaps.values()]
    bars = ax.bar(positions + offset, heights, width=0.4, label=kind)
    ax.bar_label(bars, fmt="{:.2f}", fontsize=8)
ax.set_xticks(positions, list(gaps))
ax.set_ylabel("|z_train − z_eval| / |z_train|")
ax.set_title("Branch b's embeddings, training mode vs evaluation mode")
ax.legend()
plt.show()

# %%
# Only the reused encoder called per branch fails with two sources; the one call
# and the towers stay close, and LayerNorm has no modes to disagree:
#
# >>> per_branch_gap, one_call_gap, towers_gap, layer_norm_gap = gaps.values()
# >>> per_branch_gap[1] > 5 * max(one_call_gap[1], towers_gap[1])
# True
# >>> layer_norm_gap
# [0.0, 0.0]

# %%
# Conclusion
# ----------
# A module reused for two branches shares its buffers, so BatchNorm counts a step
# twice and, when the branches differ, evaluates with statistics that fit neither.
# No single call pattern is right everywhere:
#
# - Both branches from one source (two digits, two signatures): call the encoder
#   once on ``torch.cat([a, b])``; one update per step, and training normalises as
#   evaluation will. Called per branch it works too, counting each step twice.
# - Branches from different sources, each input evaluated by its own branch: towers
#   with tied parameters and BatchNorm statistics of their own.
# - A loss that compares the samples of a batch with each other (in-batch
#   negatives): a per-sample norm such as :class:`~torch.nn.LayerNorm` or
#   :class:`~torch.nn.GroupNorm`, so that no sample sees another.
#
# Next: :doc:`plot_hooks_checkpointing` (hooks on a shared weight under activation
# checkpointing), :doc:`plot_optimizer_groups_clipping` (a tied weight handed to the
# optimizer twice), and the Siamese network of the Learn path,
# :doc:`/auto_examples/learn/plot_3_siamese`.
