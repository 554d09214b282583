"""
2. The tied-embedding Transformer
=================================

An "Attention Is All You Need" implementation ties three matrices in one line,
``encoder_embedding.weight = decoder_embedding.weight = generator.weight``, and the
question that started this project is why training does not pull the three apart.
The short answer, and this page's claim: the line makes three names for **one**
:class:`~torch.nn.Parameter`, which gets **one** ``.grad`` (the sum of the three
uses' gradients) and **one** optimizer state entry, so every step moves all three
names at once, through 200 steps of training that reverse held-out sequences.
"""

# %%
# The model: three uses, one line
# -------------------------------
# :class:`~torch.nn.Transformer` supplies the encoder and decoder stacks; around it
# sit the three layers that touch the vocabulary of ``V`` tokens: two embeddings and
# the generator that scores every token at every output position. As in Vaswani et
# al. (2017, §3.4), the embeddings are multiplied by √d_model and the three matrices
# are one parameter (the generator's initial values survive). No transpose is needed:
# ``Embedding(V, d).weight`` is V × d, one row per token, and so is
# ``Linear(d, V).weight``, which PyTorch stores as (out features, in features).
import math

import torch
from torch import nn

SEED = 0  # the models' initialisation (the data below has its own, fixed seed)
VOCAB, LENGTH, BOS = 16, 8, 0
D_MODEL, HEADS, LAYERS, D_FF = 32, 4, 1, 64
V, d = VOCAB, D_MODEL


class Seq2SeqTransformer(nn.Module):
    """Encoder–decoder Transformer whose vocabulary matrices are one parameter."""

    def __init__(self, vocab, d_model, heads, layers, d_ff, tie=True, max_len=64):
        super().__init__()
        self.scale = math.sqrt(d_model)
        self.encoder_embedding = nn.Embedding(vocab, d_model)
        self.decoder_embedding = nn.Embedding(vocab, d_model)
        self.generator = nn.Linear(d_model, vocab, bias=False)  # pre-softmax layer
        for layer in (self.encoder_embedding, self.decoder_embedding, self.generator):
            nn.init.normal_(layer.weight, std=d_model**-0.5)
        if tie:
            shared = self.generator.weight
            self.encoder_embedding.weight = self.decoder_embedding.weight = shared
        self.transformer = nn.Transformer(
            d_model, heads, layers, layers, d_ff, dropout=0.0, batch_first=True
        )
        angle = torch.arange(max_len)[:, None] / 10000 ** (
            torch.arange(0, d_model, 2) / d_model
        )
        sinusoid = torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)
        self.register_buffer("positions", sinusoid, persistent=False)

    def embed(self, embedding, tokens):
        return embedding(tokens) * self.scale + self.positions[: tokens.shape[1]]

    def forward(self, src, tgt_in):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1])
        hidden = self.transformer(
            self.embed(self.encoder_embedding, src),
            self.embed(self.decoder_embedding, tgt_in),
            tgt_mask=mask,
            tgt_is_causal=True,
        )
        return self.generator(hidden)  # scores of shape (batch, time, vocab)


def build(tie):
    """A fresh model; the tied and untied ones start from the same numbers."""
    torch.manual_seed(SEED)
    return Seq2SeqTransformer(VOCAB, D_MODEL, HEADS, LAYERS, D_FF, tie=tie)


tied, untied = build(tie=True), build(tie=False)
shared = tied.generator.weight
uses = [tied.encoder_embedding, tied.decoder_embedding, tied.generator]

# %%
# >>> tied.encoder_embedding.weight.shape == tied.generator.weight.shape == (V, d)
# True
# >>> all(layer.weight is shared for layer in uses)
# True

# %%
# The task: reverse a sequence
# ----------------------------
# A source is 8 random symbols (tokens 1 to 15); its target is the same symbols
# reversed, read by the decoder shifted right behind ``BOS`` (token 0). The 200
# training batches of 128 are drawn up front, so both models see the same data; of
# 1000 test sequences, any that occurs in training is dropped.
import torch.nn.functional as F

STEPS, BATCH = 200, 128
gen = torch.Generator().manual_seed(0)
train_src = torch.randint(1, VOCAB, (STEPS, BATCH, LENGTH), generator=gen)
candidates = torch.randint(1, VOCAB, (1000, LENGTH), generator=gen)
seen = set(map(tuple, train_src.flatten(0, 1).tolist()))
test_src = candidates[torch.tensor([tuple(s) not in seen for s in candidates.tolist()])]


def decoder_input(target):
    """``BOS`` followed by the target without its last token."""
    return torch.cat([torch.full((len(target), 1), BOS), target[:, :-1]], dim=1)


def loss_on(model, src):
    """Cross-entropy of predicting the reversed ``src`` with teacher forcing."""
    target = src.flip(1)
    scores = model(src, decoder_input(target))
    return F.cross_entropy(scores.flatten(0, 1), target.flatten())


# %%
# >>> len(test_src), any(tuple(seq) in seen for seq in test_src.tolist())
# (1000, False)
#
# One gradient, three contributions
# ---------------------------------
# Why one ``.grad`` holds the sum of the uses' gradients is the subject of
# :doc:`/auto_examples/learn/plot_1_two_layers_one_weight`; here are the three terms.
# :func:`weightshare.grad_contributions` returns each use's part of the shared
# matrix's gradient for one sequence, the first digits of π; an ordinary
# ``backward()`` then fills ``shared.grad``.
import weightshare

pi_src = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
contributions = weightshare.grad_contributions(
    tied, shared, lambda: loss_on(tied, pi_src)
)
loss_on(tied, pi_src).backward()
entry = (1, 0)  # row of token 1, read by both embeddings and scored by the generator
terms = {use: grad[entry].item() for use, grad in contributions.items()}
print(" + ".join(f"{term:.6f} ({use})" for use, term in terms.items()))
print(
    f"= {sum(terms.values()):.6f}; shared.grad{list(entry)} = {shared.grad[entry]:.6f}"
)

# %%
# Entry by entry, the three terms add up to the stored gradient:
#
# >>> list(contributions)
# ['encoder_embedding', 'decoder_embedding', 'generator']
# >>> torch.allclose(shared.grad, sum(contributions.values()), atol=1e-7)
# True
# >>> all(term != 0 for term in terms.values())
# True
#
# Their *norms* do not add (the norm of a sum is at most the sum of the norms), so
# compare gradients entry by entry, never by their lengths.


# %%
# Training side by side
# ---------------------
# Both models train on the same batches with Adam, learning rate 10⁻² decaying
# linearly to zero; nothing in a step is random, so each run is fixed by its start.
# The decoder then generates greedily from ``BOS``; accuracy is the share of
# held-out tokens put in the right place.
def train(model):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / STEPS)
    losses = []
    for src in train_src:
        loss = loss_on(model, src)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay.step()
        losses.append(loss.item())
    return optimizer, losses


@torch.no_grad()
def greedy_decode(model, src):
    out = torch.full((len(src), 1), BOS)
    for _ in range(src.shape[1]):
        next_token = model(src, out)[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, next_token], dim=1)
    return out[:, 1:]


def accuracy(model):
    return (greedy_decode(model, test_src) == test_src.flip(1)).float().mean().item()


tied_optimizer, tied_losses = train(tied)
untied_optimizer, untied_losses = train(untied)
tied_accuracy, untied_accuracy = accuracy(tied), accuracy(untied)
first_below = {  # the first step whose batch loss fell under 0.05
    name: next(step for step, loss in enumerate(losses) if loss < 0.05)
    for name, losses in [("tied", tied_losses), ("untied", untied_losses)]
}
print(f"accuracy: tied {tied_accuracy:.2%}, untied {untied_accuracy:.2%}")
print(f"loss first under 0.05 at step: {first_below}")

# %%
# Both models reverse at least 99% of the held-out tokens correctly:
#
# >>> tied_accuracy >= 0.99, untied_accuracy >= 0.99
# (True, True)
#
# The short answer, drawn from the trained models
# -----------------------------------------------
# After 200 steps, each box below is one live object, found by ``id()``: the
# parameter each name holds, its ``.grad``, and the optimizer's state entry for it.
# The tied model's three names meet in one Parameter, with one gradient and one
# entry (one pair of Adam moments); the untied model has three of each.
import itertools

import graphviz


def draw(models):
    """Names -> Parameter -> .grad -> optimizer state entry, one box per object."""
    graph = graphviz.Digraph(graph_attr={"rankdir": "LR"}, node_attr={"shape": "box"})
    for title, (net, optimizer) in models.items():
        with graph.subgraph(name=f"cluster_{title}") as box:
            box.attr(label=title)
            edges = {}  # each arrow once: the tied names share the boxes after theirs
            for name in ("encoder_embedding", "decoder_embedding", "generator"):
                param = net.get_submodule(name).weight
                labels = [
                    f"Parameter\nid {id(param):#x}",
                    f".grad\nid {id(param.grad):#x}",
                    f"Adam state\nid {id(optimizer.state[param]):#x}",
                ]
                box.node(f"{title}/{name}", f"{name}.weight", shape="plaintext")
                for label in labels:
                    box.node(f"{title}/{label}", label)
                keys = [f"{title}/{name}", *(f"{title}/{label}" for label in labels)]
                edges.update(dict.fromkeys(itertools.pairwise(keys)))
            box.edges(list(edges))
    return graph


draw({"untied": (untied, untied_optimizer), "tied": (tied, tied_optimizer)})

# %%
# >>> all(layer.weight is shared for layer in uses)
# True
# >>> shared.grad is tied.encoder_embedding.weight.grad
# True
# >>> weightshare.shared_groups(tied)
# [['encoder_embedding.weight', 'decoder_embedding.weight', 'generator.weight']]
# >>> sum(param is shared for param in tied_optimizer.state)
# 1
# >>> len(untied_optimizer.state) - len(tied_optimizer.state)
# 2

# %%
# What the tie saves
# ------------------
# :func:`weightshare.count_parameters` counts each parameter object once, and what
# a naive sum over ``state_dict()`` reports (the tied matrix under all three names).
count_tied = weightshare.count_parameters(tied)
count_untied = weightshare.count_parameters(untied)

# %%
# >>> count_untied.unique - count_tied.unique == 2 * V * d
# True
# >>> count_tied.state_dict == count_untied.unique
# True
#
# With 16 tokens that is 1024 parameters, and this small task gains nothing from the
# tie: the untied model's loss falls under 0.05 sooner, here and at the other seeds
# the project's tests try.
#
# >>> first_below["untied"] < first_below["tied"] < STEPS
# True
#
# The published gains come from large vocabularies of rare words, whose output rows
# learn from every softmax: Press & Wolf (2017, "Using the Output Embedding to
# Improve Language Models", arXiv:1608.05859) report lower Penn Treebank perplexity
# with the tie for their LSTM language models.
#
# Conclusion
# ----------
# ``a.weight = b.weight = c.weight`` makes one :class:`~torch.nn.Parameter` with three
# names. Autograd adds the three uses' gradients into its one ``.grad``, and the
# optimizer holds it once and updates it in place: there are never three matrices to
# pull apart.
#
# Next: :doc:`/auto_examples/learn/plot_3_siamese`, where a whole encoder is shared
# by two inputs. The Fix pages that follow from this one:
# :doc:`/auto_examples/fix_build/plot_copies_not_ties` (a copy drifts after one
# step), :doc:`/auto_examples/fix_save_load/plot_save_load_tied` (saving the tied
# matrix once) and :doc:`/auto_examples/fix_train/plot_optimizer_groups_clipping`.
