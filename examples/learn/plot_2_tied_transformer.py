"""
The tied-embedding Transformer
==============================

This project began with one line from an "Attention Is All You Need" implementation,
``encoder_input_embedding.weight = decoder_input_embedding.weight =
decoder_output_embedding.weight``, and one question: why does training not pull the
three apart? This page builds such a model, with the three-way tie of Vaswani et al.
(2017, §3.4), proves that the three names stay one tensor, splits its gradient into
the three uses, counts what the tie saves, and trains the tied and an untied copy side
by side on a small task until both reverse held-out sequences almost perfectly.
"""

# %%
# The task: reverse a sequence
# ----------------------------
# Source and target share one vocabulary of 16 tokens: token 0 is ``BOS``, which
# starts every decoder input, and tokens 1 to 15 are the symbols. A source is 8 random
# symbols; its target is the same symbols reversed. During training the decoder reads
# the target shifted right by one place behind ``BOS`` (teacher forcing). All 300
# training batches of 128 sequences are drawn up front, so both models below see
# exactly the same data. 1000 more sequences are drawn for testing, and any of them
# that also occurs among the training sequences is dropped.
import torch

SEED = 0  # the models' initialisation (the data below has its own, fixed seed)
torch.manual_seed(SEED)
VOCAB, LENGTH, BOS = 16, 8, 0
STEPS, BATCH = 300, 128
gen = torch.Generator().manual_seed(0)
train_src = torch.randint(1, VOCAB, (STEPS, BATCH, LENGTH), generator=gen)
candidates = torch.randint(1, VOCAB, (1000, LENGTH), generator=gen)
seen = set(map(tuple, train_src.flatten(0, 1).tolist()))
test_src = candidates[torch.tensor([tuple(s) not in seen for s in candidates.tolist()])]


def decoder_input(target):
    """``BOS`` followed by the target without its last token."""
    return torch.cat([torch.full((len(target), 1), BOS), target[:, :-1]], dim=1)


example = train_src[0, :1]
print(f"{example = }\n{example.flip(1) = }\n{decoder_input(example.flip(1)) = }")

# %%
# There are 15⁸, about 2.6 billion, possible sources, yet one of the 1000 test draws
# is also a training sequence; 999 remain, none of them seen in training:
#
# >>> len(seen), len(test_src)
# (38400, 999)
# >>> any(tuple(seq) in seen for seq in test_src.tolist())
# False

# %%
# The model: three uses, one line
# -------------------------------
# :class:`~torch.nn.Transformer` supplies the encoder and decoder stacks; around it sit
# the three layers that touch the vocabulary. The encoder embedding maps source tokens
# to vectors, the decoder embedding maps decoder-input tokens to vectors, and the
# generator maps each decoder output back to one score per token. Following §3.4 of the
# paper, the embeddings are multiplied by √d_model and the three matrices are one
# parameter. The chained assignment under ``if tie:`` is the tie; the generator's
# initial values survive. The sinusoidal position signal is a non-persistent buffer, so
# it is neither trained nor saved. ``build`` reseeds, so the tied and the untied model
# start from the same numbers, except the untied model's two embeddings.
import math

from torch import nn

D_MODEL, HEADS, LAYERS, D_FF = 32, 4, 1, 64


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
    torch.manual_seed(SEED)
    return Seq2SeqTransformer(VOCAB, D_MODEL, HEADS, LAYERS, D_FF, tie=tie)


import weightshare

tied = build(tie=True)
shared = tied.generator.weight
uses = [tied.encoder_embedding, tied.decoder_embedding, tied.generator]
address = shared.data_ptr()

# %%
# The three names are one object at one address, and
# :func:`weightshare.shared_groups` reports one group of three names:
#
# >>> all(layer.weight is shared for layer in uses)
# True
# >>> {layer.weight.data_ptr() for layer in uses} == {address}
# True
# >>> weightshare.shared_groups(tied)
# [['encoder_embedding.weight', 'decoder_embedding.weight', 'generator.weight']]

# %%
# One gradient, three contributions
# ---------------------------------
# One source sequence, the first digits of π, is enough to see where the gradient
# comes from. :func:`weightshare.grad_contributions` runs the loss once more and
# returns each use's part of the shared weight's gradient, keyed by the module that
# made the call; an ordinary ``backward()`` then fills ``shared.grad``.
import torch.nn.functional as F


def loss_on(model, src):
    """Cross-entropy of predicting the reversed ``src`` with teacher forcing."""
    target = src.flip(1)
    scores = model(src, decoder_input(target))
    return F.cross_entropy(scores.flatten(0, 1), target.flatten())


pi_src = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
contributions = weightshare.grad_contributions(
    tied, shared, lambda: loss_on(tied, pi_src)
)
loss_on(tied, pi_src).backward()
touched = {
    use: grad.norm(dim=1).nonzero().flatten().tolist()
    for use, grad in contributions.items()
}
for use, token_ids in touched.items():
    print(f"{use:>17} touched rows {token_ids}")

# %%
# The three contributions add up to the gradient that ``backward()`` stored:
#
# >>> list(contributions)
# ['encoder_embedding', 'decoder_embedding', 'generator']
# >>> torch.allclose(shared.grad, sum(contributions.values()), atol=1e-7)
# True
#
# An embedding lookup only reads the rows of the tokens it is given, so only those
# rows get gradient. The encoder read the source's symbols. The decoder read ``BOS``
# and the reversed source without its last token, 3, which it only had to predict.
# The generator scored every token at every position, so every row gets gradient:
#
# >>> touched["encoder_embedding"] == sorted(set(pi_src.flatten().tolist()))
# True
# >>> touched["encoder_embedding"], touched["decoder_embedding"]
# ([1, 2, 3, 4, 5, 6, 9], [0, 1, 2, 4, 5, 6, 9])
# >>> len(touched["generator"]) == VOCAB
# True

# %%
# The bar chart compares each use's gradient with their sum, and the map on the right
# shows each use's gradient row by row; white rows got none.
import matplotlib.pyplot as plt
from matplotlib.colors import LogNorm

norms = {use: grad.norm().item() for use, grad in contributions.items()}
norms["sum = shared.grad"] = shared.grad.norm().item()
rows = torch.stack([grad.norm(dim=1) for grad in contributions.values()])
fig, (left, right) = plt.subplots(
    1, 2, figsize=(10, 2.6), width_ratios=[2, 3], layout="constrained"
)
left.barh(list(norms), list(norms.values()), color=["C0", "C1", "C2", "0.4"])
left.invert_yaxis()
left.set(xlabel="norm", title="gradient of the shared matrix, per use")
masked = rows.masked_fill(rows == 0, torch.nan)
image = right.imshow(masked, aspect="auto", norm=LogNorm())
right.set_xticks(range(VOCAB), ["BOS", *range(1, VOCAB)], fontsize=8)
right.set_yticks(range(3), list(contributions))
right.set(xlabel="row (token)", title="row norms; white: no gradient")
fig.colorbar(image, ax=right)
plt.show()

# %%
# Parameter counts
# ----------------
# The untied model is the same class with ``tie=False``. The closed formula adds up
# the layers of :class:`~torch.nn.Transformer`: an attention block has four d×d
# projections with biases, a feed-forward block two layers, a LayerNorm a scale and a
# shift, and each stack ends in one more LayerNorm. Untying adds two V×d matrices.
# :func:`weightshare.count_parameters` counts each parameter object once (here all
# of them train) and also what a naive sum over ``state_dict()`` reports, where the
# tied matrix appears under all three of its names.
untied = build(tie=False)
count_tied = weightshare.count_parameters(tied)
count_untied = weightshare.count_parameters(untied)

V, d, f = VOCAB, D_MODEL, D_FF
attention = 4 * d * d + 4 * d
feed_forward = 2 * d * f + f + d
norm = 2 * d
encoder_layer = attention + feed_forward + 2 * norm
decoder_layer = 2 * attention + feed_forward + 3 * norm
formula_tied = V * d + LAYERS * (encoder_layer + decoder_layer) + 2 * norm
formula_untied = formula_tied + 2 * V * d
print("model   parameters  formula  state_dict() sum")
for name, count, formula in [
    ("tied", count_tied, formula_tied),
    ("untied", count_untied, formula_untied),
]:
    print(f"{name:7} {count.unique:10,} {formula:8,} {count.state_dict:17,}")

# %%
# >>> (count_tied.unique, count_untied.unique) == (formula_tied, formula_untied)
# True
# >>> count_untied.unique - count_tied.unique == 2 * V * d
# True
# >>> count_tied.unique, count_tied.state_dict, count_untied.unique
# (22016, 23040, 23040)
#
# The naive ``state_dict()`` count of the tied model is exactly the untied model's
# size: it counts the shared matrix three times.
#
# GPT-2 small ties only two uses, its token embedding ``wte`` and its output layer
# ``lm_head``, but its vocabulary is large. Built on the meta device, the model has
# shapes and no memory, which is all a count needs.
from weightshare.models import GPT, GPTConfig

with torch.device("meta"):
    gpt2 = GPT(GPTConfig())
    gpt2_untied = GPT(GPTConfig(tie_embeddings=False))
gpt2_count = weightshare.count_parameters(gpt2)
gpt2_untied_count = weightshare.count_parameters(gpt2_untied)

# %%
# >>> weightshare.shared_groups(gpt2)
# [['wte.weight', 'lm_head.weight']]
# >>> gpt2_count.unique
# 124439808
# >>> gpt2_untied_count.unique - gpt2_count.unique == 50257 * 768
# True
# >>> gpt2_count.state_dict == gpt2_untied_count.unique
# True
#
# The tie saves 50257 × 768 = 38.6 million parameters, and the naive count reports
# them anyway.

# %%
# Training side by side
# ---------------------
# Both models train on the same 300 batches with Adam, learning rate 5·10⁻³ decaying
# linearly to zero. No step draws random numbers (there is no dropout), so each run
# is fixed by its starting point. The decoder then generates greedily: from ``BOS``
# it appends its most likely token, eight times. Accuracy is the share of held-out
# tokens it puts in the right place.
import time


def train(model):
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / STEPS)
    losses, start = [], time.perf_counter()
    for src in train_src:
        loss = loss_on(model, src)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay.step()
        losses.append(loss.item())
    return optimizer, losses, time.perf_counter() - start


@torch.no_grad()
def greedy_decode(model, src):
    out = torch.full((len(src), 1), BOS)
    for _ in range(src.shape[1]):
        next_token = model(src, out)[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, next_token], dim=1)
    return out[:, 1:]


def accuracy(model):
    return (greedy_decode(model, test_src) == test_src.flip(1)).float().mean().item()


tied_optimizer, tied_losses, tied_seconds = train(tied)
untied_optimizer, untied_losses, untied_seconds = train(untied)
tied_accuracy, untied_accuracy = accuracy(tied), accuracy(untied)
print("model   parameters  final loss  held-out accuracy")
for name, count, losses, acc in [
    ("tied", count_tied, tied_losses, tied_accuracy),
    ("untied", count_untied, untied_losses, untied_accuracy),
]:
    print(f"{name:7} {count.unique:10,} {losses[-1]:11.4f} {acc:18.2%}")
print(f"seconds: {tied_seconds:.1f} tied, {untied_seconds:.1f} untied (wall clock)")
for src, out in zip(test_src[:3], greedy_decode(tied, test_src[:3]), strict=True):
    print(f"{src.tolist()} -> {out.tolist()}")

# %%
# Both models reverse at least 99% of the held-out tokens correctly. (The training
# times are this run's wall clock; they depend on the machine, so no doctest checks
# them.)
#
# >>> tied_accuracy >= 0.99, untied_accuracy >= 0.99
# (True, True)
#
# After 300 optimizer steps the tie is intact: one object at the same address, one
# group, and one optimizer state entry (one pair of Adam moments) for the shared
# matrix, beside one entry per other parameter:
#
# >>> all(layer.weight is shared for layer in uses)
# True
# >>> {layer.weight.data_ptr() for layer in uses} == {address}
# True
# >>> weightshare.shared_groups(tied)
# [['encoder_embedding.weight', 'decoder_embedding.weight', 'generator.weight']]
# >>> sum(param is shared for param in tied_optimizer.state)
# 1
# >>> len(tied_optimizer.state) == count_tied.unique_tensors
# True

# %%
# Loss curves
# -----------
# ``first_below`` records the first step at which each model's batch loss fell
# under 0.05.
fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
for name, losses in [("tied", tied_losses), ("untied", untied_losses)]:
    ax.semilogy(losses, label=name)
ax.set_xlabel("optimizer step")
ax.set_ylabel("training loss (cross-entropy)")
ax.legend()
plt.show()
# sphinx_gallery_thumbnail_number = 2
first_below = {
    name: next(step for step, loss in enumerate(losses) if loss < 0.05)
    for name, losses in [("tied", tied_losses), ("untied", untied_losses)]
}
print(f"{first_below = }")

# %%
# What the papers measured, and what this run shows
# -------------------------------------------------
# Press & Wolf (2017, "Using the Output Embedding to Improve Language Models",
# arXiv:1608.05859) recommend tying the input embedding and the output layer of
# language models, and report lower Penn Treebank perplexity with the tie for the
# LSTM language models they tried. Inan, Khosravi & Socher (2017, "Tying Word Vectors
# and Word Classifiers: A Loss Framework for Language Modeling", arXiv:1611.01462)
# derive the tie from a loss framework; the abstract of their arXiv version reports a
# word-level Penn Treebank test perplexity of 68.5 for their LSTM model, which was
# trained with the tie *and* their augmented loss, so that figure does not isolate
# the tie. Vaswani et al.'s base Transformer has about 65M parameters and a shared
# vocabulary of about 37 000 subword tokens at d_model = 512. One such matrix is a
# large share of the model, and untying all three uses would add two of them:
vaswani_matrix = 37_000 * 512

# %%
# >>> round(vaswani_matrix / 1e6, 1), round(2 * vaswani_matrix / 65e6, 2)
# (18.9, 0.58)
#
# This small run shows less. Both models learn the task before their last step
# (printed above: the step at which each first went below a loss of 0.05), and with
# 16 tokens the tie saves only 2·V·d parameters. The untied model gets there in
# fewer steps, here and at the other seeds the project's tests try: at this size,
# holding one matrix to three roles slows the fit rather than helping it.
#
# >>> count_untied.unique - count_tied.unique
# 1024
# >>> first_below["untied"] < first_below["tied"] < STEPS
# True
#
# The published gains come from large vocabularies full of rare words, whose input
# rows learn only when the word appears, while their output rows learn from every
# softmax. Sixteen equally frequent tokens have no such rows.


# %%
# Why the tie is allowed, and what it costs
# -----------------------------------------
# All three matrices hold one row of d_model numbers per token of one vocabulary. An
# input row places a token among the vectors the network computes with; an output
# row is the direction that vector must point in for the token to be predicted.
# Asking one row to do both says that a token is read and predicted alike, which is a
# sensible constraint. It also trains the matrix densely: as the map above showed,
# the output layer sends gradient to every row at every step, while the embeddings
# only reach the rows in the batch, so rare tokens get useful rows from the output.
#
# The tie costs no arithmetic: every use still does its own lookup or product, only
# the weight is common. It saves memory: V·d parameters for each use beyond the
# first, and with them V·d gradient entries and, for Adam, 2·V·d moment entries.
def adam_entries(optimizer):
    moments = [
        s["exp_avg"].numel() + s["exp_avg_sq"].numel() for s in optimizer.state.values()
    ]
    return sum(moments)


saved = adam_entries(untied_optimizer) - adam_entries(tied_optimizer)

# %%
# >>> saved == 2 * (2 * V * d)
# True

# %%
# The classic mistake: a copy is not a tie
# ----------------------------------------
# ``nn.Parameter(emb.weight.clone())`` makes a second parameter that starts with the
# same values, so nothing looks wrong until training. Each copy then gets only its own
# uses' gradient, and a single step sends them apart.
broken = build(tie=True)
broken.generator.weight = nn.Parameter(broken.encoder_embedding.weight.clone())
equal_before = torch.equal(broken.generator.weight, broken.encoder_embedding.weight)
optimizer = torch.optim.Adam(broken.parameters(), lr=5e-3)
loss_on(broken, train_src[0]).backward()
optimizer.step()
drift = (broken.generator.weight - broken.encoder_embedding.weight).abs().max()

# %%
# >>> broken.generator.weight is broken.encoder_embedding.weight
# False
# >>> weightshare.shared_groups(broken)
# [['encoder_embedding.weight', 'decoder_embedding.weight']]
# >>> equal_before, drift.item() > 0
# (True, True)

# %%
# Conclusion
# ----------
# ``a.weight = b.weight = c.weight`` makes one :class:`~torch.nn.Parameter` with three
# names. Autograd adds the three uses' gradients into its one ``.grad``, and the
# optimizer holds it once and updates it in place: there are never three matrices to
# pull apart. A copy, however equal at the start, is a second matrix and drifts at once.
#
# Next: :func:`weightshare.grad_contributions`, :func:`weightshare.count_parameters`
# and :func:`weightshare.shared_groups` in the :doc:`API reference </api>`, and the
# other pages of the :ref:`gallery <gallery>`.
