"""
Scaling a tied embedding
========================

Log-likelihoods around −1000, yes/no scores of exactly 1 and 0, a loss many times
too high, while greedy generation picks the same tokens as before: what a Gemma
port met (`tensai#248 <https://github.com/mattn/tensai/pull/248>`_: logits about 34
times too large on Gemma 3's 1B model) after folding Gemma's √d embedding scale
into the embedding table. A tied matrix has two uses, and a factor that belongs to
one use has to be applied at that use: multiplied into the shared matrix, it
reaches the other use too. This page builds tiny Gemma and T5 models with
transformers 5.23 (nothing downloaded), folds each one's factor into the shared
matrix, and measures the other side: every Gemma logit √1152 ≈ 33.9 times too
large with the greedy tokens unchanged, and T5's input embeddings √512 ≈ 22.6
times too small with most predictions changed. Then the fix.
"""

# %%
# Gemma scales the embedding's output, not its table
# --------------------------------------------------
# In transformers 5.23 (``models/gemma/modeling_gemma.py``) the embedding is a
# ``GemmaTextScaledWordEmbedding``: a plain lookup whose ``forward`` multiplies the
# rows it returns by ``embed_scale``, a buffer that ``GemmaModel`` sets to
# ``hidden_size ** 0.5``. The output layer ``lm_head`` is tied to the table, so
# the logits use the table unscaled. The tiny model below has Gemma's code and a
# width of d = 1152, with one layer and a vocabulary of 64.
import copy
import inspect
import textwrap

import torch
from transformers import GemmaConfig, GemmaForCausalLM

import weightshare

torch.manual_seed(0)
config = GemmaConfig(
    vocab_size=64,
    hidden_size=1152,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    initializer_range=0.002,  # small weights, so an untrained softmax is not saturated
)
gemma = GemmaForCausalLM(config).eval()
embed = gemma.model.embed_tokens
print(textwrap.dedent(inspect.getsource(type(embed).forward)))

# %%
# >>> weightshare.shared_groups(gemma)
# [['model.embed_tokens.weight', 'lm_head.weight']]
# >>> round(embed.embed_scale.item(), 2)
# 33.94

# %%
# Folding √d into the table
# -------------------------
# A converter that wants one multiply less per token scales the table once and
# sets the per-token factor to 1. The embedding's output does not change, so the
# layers see the same inputs; but the tied head now reads the scaled table, and
# every logit is √d times too large.
tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))


def next_token_loss(logits: torch.Tensor) -> float:
    """Cross-entropy of predicting each next token of ``tokens``."""
    flat = logits[:, :-1].flatten(0, 1)
    return torch.nn.functional.cross_entropy(flat, tokens[:, 1:].flatten()).item()


folded = copy.deepcopy(gemma)
with torch.no_grad():
    folded.model.embed_tokens.weight.mul_(folded.model.embed_tokens.embed_scale)
    folded.model.embed_tokens.embed_scale.fill_(1.0)
    logits, folded_logits = gemma(tokens).logits, folded(tokens).logits
    same_inputs = torch.allclose(folded.model.embed_tokens(tokens), embed(tokens))
    greedy = gemma.generate(tokens[:1, :4], max_new_tokens=8, do_sample=False)
    folded_greedy = folded.generate(tokens[:1, :4], max_new_tokens=8, do_sample=False)

# %%
# The inputs to the layers are unchanged, the logits 33.94 times larger:
#
# >>> same_inputs, round((folded_logits.norm() / logits.norm()).item(), 2)
# (True, 33.94)
#
# A scale of all logits keeps their order, so greedy decoding and any check that
# compares argmaxes pass, while the loss (and every probability) is wrong:
#
# >>> torch.equal(folded_greedy, greedy)
# True
# >>> round(next_token_loss(logits), 1), round(next_token_loss(folded_logits), 1)
# (4.3, 75.1)
#
# The tie itself is intact, so a check of the ties finds nothing either:
#
# >>> weightshare.shared_groups(folded)
# [['model.embed_tokens.weight', 'lm_head.weight']]

# %%
# Probabilities pushed to 1 and 0
# -------------------------------
# The next-token probabilities at one position: the correct model spreads them
# over the vocabulary; the folded one, with the same ranking, puts nearly all of
# the mass on its top token.
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
for values, label in ((logits, "table unscaled (correct)"), (folded_logits, "folded")):
    ax.plot(values[0, -1].softmax(-1), marker=".", label=label)
ax.set_xlabel("token id")
ax.set_ylabel("probability")
ax.set_title("Gemma, d = 1152: next-token probabilities at one position")
ax.legend()
plt.show()

# %%
# T5 scales the head's input, not the table
# -----------------------------------------
# T5 goes the other way. Its one table ``shared`` is the encoder's and the
# decoder's embedding and the output layer's weight, and the decoder's output is
# multiplied by d^-1/2 before the head (when the configuration says so, as it does
# by default). Printed from the installed source:
from transformers import T5Config, T5ForConditionalGeneration

t5 = T5ForConditionalGeneration(
    T5Config(vocab_size=64, d_model=512, d_kv=16, d_ff=64, num_layers=1, num_heads=2)
).eval()
source = inspect.getsource(T5ForConditionalGeneration.forward).splitlines()
at = next(i for i, line in enumerate(source) if "scale_decoder_outputs" in line)
print(textwrap.dedent("\n".join(source[at : at + 2])))

# %%
# >>> for name in weightshare.shared_groups(t5)[0]:
# ...     print(name)
# shared.weight
# encoder.embed_tokens.weight
# decoder.embed_tokens.weight
# lm_head.weight

# %%
# Folding d^-1/2 into the table leaves the head's product as it was for a given
# decoder output, but both embeddings now return rows √512 ≈ 22.6 times too small.
# T5's layers add their outputs to the embedding (a residual stream), so a smaller
# embedding is outweighed, and the predictions change. (T5 ports have got this
# factor wrong before: `mlx-examples#591
# <https://github.com/ml-explore/mlx-examples/pull/591>`_ fixed one that scaled
# when the embeddings were untied instead of when tied.)
decoder_tokens = tokens[:, :6]
t5_folded = copy.deepcopy(t5)
with torch.no_grad():
    t5_folded.shared.weight.mul_(512**-0.5)
    t5_folded.config.scale_decoder_outputs = False
    t5_logits = t5(input_ids=tokens, decoder_input_ids=decoder_tokens).logits
    t5_folded_logits = t5_folded(
        input_ids=tokens, decoder_input_ids=decoder_tokens
    ).logits
    shrink = t5.shared(tokens).norm() / t5_folded.shared(tokens).norm()
    encoded = t5_folded.encoder(input_ids=tokens).last_hidden_state
    decoded = t5_folded.decoder(
        input_ids=decoder_tokens, encoder_hidden_states=encoded
    ).last_hidden_state  # the decoder's output, before any scale
    as_before = t5.lm_head(decoded * 512**-0.5)
    head_as_before = torch.allclose(t5_folded_logits, as_before, atol=1e-5)
agree = (t5_folded_logits.argmax(-1) == t5_logits.argmax(-1)).sum().item()

# %%
# For the decoder output it gets, the folded head computes what T5's head computes
# after the d^-1/2; the embeddings are what shrank:
#
# >>> head_as_before
# True
# >>> round(shrink.item(), 2), round(512**0.5, 2)
# (22.63, 22.63)
# >>> agree, t5_logits.argmax(-1).numel()
# (0, 12)

# %%
# The fix: scale the use
# ----------------------
# Keep the factor in the forward of the use it belongs to, where transformers keeps
# it. A table that was folded (a converted checkpoint, say) is repaired by dividing
# the factor back out and restoring the per-token multiply. A runtime that can only
# take a pre-scaled table needs that use to have a table of its own: untie first
# (:func:`weightshare.untie`), then scale the embedding's copy only; the head keeps
# the unscaled matrix, at the price of a second 64 × 1152 matrix.
scale = config.hidden_size**0.5
repaired = copy.deepcopy(folded)
untied = copy.deepcopy(gemma)
weightshare.untie(untied, "model.embed_tokens.weight")
with torch.no_grad():
    repaired.model.embed_tokens.weight.div_(scale)
    repaired.model.embed_tokens.embed_scale.fill_(scale)
    untied.model.embed_tokens.weight.mul_(scale)
    untied.model.embed_tokens.embed_scale.fill_(1.0)
    repaired_logits, untied_logits = repaired(tokens).logits, untied(tokens).logits
extra = (
    weightshare.count_parameters(untied).unique
    - weightshare.count_parameters(gemma).unique
)

# %%
# Both give the correct logits again (the repaired one to rounding: ×√d then ÷√d
# is not exact in float32), the untied one from the pre-scaled table the runtime
# wanted (the folded table, with no per-token factor) while its head keeps the
# unscaled matrix; it costs V·d parameters more:
#
# >>> (repaired_logits - logits).abs().max() < 1e-5
# tensor(True)
# >>> torch.allclose(untied_logits, logits)
# True
# >>> torch.equal(untied.model.embed_tokens.weight, folded.model.embed_tokens.weight)
# True
# >>> torch.equal(untied.lm_head.weight, gemma.lm_head.weight)
# True
# >>> weightshare.shared_groups(untied), extra == 64 * 1152
# ([], True)

# %%
# Conclusion
# ----------
# A factor in front of one use of a tied matrix (Gemma's √d on the embedding, T5's
# d^-1/2 on the head's input) is part of that use, not of the matrix. Folded into
# the shared matrix it scales the other use as well: Gemma's logits grow by √d
# (33.9 at d = 1152) and only the probabilities show it, T5's embeddings shrink by
# √d and the predictions change. Compare logits or log-probabilities, not argmaxes
# or generated text, when checking a conversion; to fold a factor, untie first.
#
# Next: :doc:`/auto_examples/fix_train/plot_hooks_checkpointing` (the training loop:
# hooks on a shared weight under activation checkpointing), and the
# :doc:`symptom index </symptoms>`.
