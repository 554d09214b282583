"""
Resizing the vocabulary of a tied model
=======================================

*"After adding tokens, the model generates only the new tokens"*, a head that no
longer matches its embedding after you grew the vocabulary by hand, or
``size mismatch for ...embed_tokens...`` when loading a LoRA adapter. In a tied
model the output layer *is* the input embedding, so every row added to the
vocabulary is also a new output score. This page shows, on a tiny GPT-2 and Llama
(transformers 5.23, peft 0.21.2), that ``resize_token_embeddings`` keeps the tie
and initialises new rows so that they cannot take over the softmax, and what each
way around it breaks: random rows, hand-made embeddings, an adapter on the old size.
"""

# %%
# The symptom: every prediction is a new token
# --------------------------------------------
# A trained GPT-2 scores every token of its vocabulary far below zero, and the
# softmax does not care, because it ignores an offset shared by all scores
# (`transformers#8472 <https://github.com/huggingface/transformers/issues/8472>`_).
# The tiny model gets that property without changing one prediction: a bias in its
# final LayerNorm, and all embedding rows shifted by the same amount. The LayerNorms
# remove the shift from the inputs and the softmax removes it from the outputs.
import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging

import weightshare

logging.disable_progress_bar()
verbosity = logging.get_verbosity()  # restored at the end of the page
logging.set_verbosity_error()
SEED = 0  # the comparison below holds at other seeds too (tested)
torch.manual_seed(SEED)
sizes = dict(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2)
gpt2 = GPT2LMHeadModel(GPT2Config(**sizes, bos_token_id=0, eos_token_id=0)).eval()
ids = torch.arange(8).unsqueeze(0)
with torch.no_grad():
    gpt2.transformer.ln_f.bias.fill_(1.0)
    before = gpt2(ids).logits.softmax(-1)
    gpt2.transformer.wte.weight.sub_(3.0)  # every row, the same shift
    shifted = gpt2(ids).logits


def new_token_mass(mean_resizing: bool) -> torch.Tensor:
    """Probability given to 4 added tokens at each position, after resizing."""
    model = copy.deepcopy(gpt2)
    model.resize_token_embeddings(20, mean_resizing=mean_resizing)
    with torch.no_grad():
        return model(ids).logits.softmax(-1)[0, :, 16:].sum(-1)


random_rows = new_token_mass(mean_resizing=False)
print(f"old tokens' scores: {shifted.min():.1f} to {shifted.max():.1f}")

# %%
# The predictions are those of the unshifted model, and with four new rows drawn at
# random (``mean_resizing=False``, the only way before transformers 4.46) the new
# tokens take almost all the probability at every position:
#
# >>> torch.allclose(shifted.softmax(-1), before, atol=1e-5)
# True
# >>> bool(random_rows.min() > 0.99)
# True
#
# A random row is small, so its score ``h · e`` is near zero, far above the old
# tokens' scores. Through the tie, that row is the new token's output weight.

# %%
# The fix: new rows at the mean of the old ones
# ---------------------------------------------
# ``resize_token_embeddings`` draws new rows from a normal distribution with the old
# rows' mean and a tiny fraction of their covariance (``mean_resizing=True``, the
# default since transformers 4.46,
# `transformers#33325 <https://github.com/huggingface/transformers/pull/33325>`_).
# A new token's score is then the average of the old scores, and the exponential of
# an average is at most the average of the exponentials: each new token gets at most
# the probability of an average old token, so four get at most 4/16 together.
mean_rows = new_token_mass(mean_resizing=True)

# %%
# >>> bool(mean_rows.max() < 4 / 16)
# True

# %%
# Tied and untied heads
# ---------------------
# With the tie, the head follows the embedding: one tensor, resized once. An untied
# head is resized separately, to the same number of rows, and stays its own tensor.
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(tie: bool, vocab: int = 32) -> LlamaForCausalLM:
    torch.manual_seed(0)
    layer = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1)
    heads = dict(num_attention_heads=2, num_key_value_heads=2)
    config = LlamaConfig(vocab_size=vocab, **layer, **heads, tie_word_embeddings=tie)
    return LlamaForCausalLM(config)


tied, untied = tiny_llama(tie=True), tiny_llama(tie=False)
for model in (tied, untied):
    model.resize_token_embeddings(40)
padded = tiny_llama(tie=True)  # 33 tokens, rounded up to a multiple of 8
padded.resize_token_embeddings(33, pad_to_multiple_of=8)

# %%
# >>> tied.lm_head.weight is tied.model.embed_tokens.weight
# True
# >>> tuple(tied.lm_head.weight.shape)
# (40, 8)
# >>> weightshare.shared_groups(untied), tuple(untied.lm_head.weight.shape)
# ([], (40, 8))
#
# ``pad_to_multiple_of`` rounds the size up (to use the GPU's tensor cores well).
# The extra rows are vocabulary entries no tokenizer produces, but through a tied
# head they are output scores too, initialised like the other new rows:
#
# >>> padded.config.vocab_size
# 40
# >>> padded.lm_head.weight is padded.model.embed_tokens.weight
# True

# %%
# Resizing by hand unties, silently
# ---------------------------------
# Code that grows the embedding itself, a new ``nn.Embedding`` with the old rows
# copied in, leaves the head holding the old tensor: the two are no longer one
# matrix, and the head still has 32 rows. Nothing fails until the first forward pass
# produces 32 scores for a 40-token vocabulary.
from torch import nn

by_hand = tiny_llama(tie=True)
grown = nn.Embedding(40, 8)
with torch.no_grad():
    grown.weight[:32] = by_hand.model.embed_tokens.weight
by_hand.model.embed_tokens = grown
ties_after_hand = weightshare.shared_groups(by_hand)

# %%
# >>> ties_after_hand
# []
# >>> by_hand.lm_head.weight.shape[0]
# 32
#
# The fix is to tie again after replacing the module: ``set_input_embeddings`` and
# then ``tie_weights()``, which makes the head use the new tensor (or call
# ``resize_token_embeddings``, which does both):
by_hand.config.vocab_size = 40
by_hand.set_input_embeddings(grown)
by_hand.tie_weights()

# %%
# >>> by_hand.lm_head.weight is grown.weight
# True

# %%
# An adapter trained on the resized vocabulary
# --------------------------------------------
# A LoRA adapter that trains the embedding (``modules_to_save``) saves it at the size
# it was trained on, 40 rows. Loaded onto the base model at 32 rows, it fails, as
# users met it after adding special tokens
# (`peft#1457 <https://github.com/huggingface/peft/issues/1457>`_):
# ``ensure_weight_tying=True`` keeps the trained copy tied to the head (see the LoRA
# page); the fix below is the same without it.
import tempfile
import warnings

from peft import LoraConfig, PeftModel, get_peft_model

quiet = dict(action="ignore", category=FutureWarning)  # a peft deprecation notice
save = dict(modules_to_save=["embed_tokens"], ensure_weight_tying=True)
lora = LoraConfig(r=2, target_modules=["q_proj"], **save)
adapter_dir = tempfile.TemporaryDirectory()
with warnings.catch_warnings(**quiet):
    adapted = get_peft_model(copy.deepcopy(tied), lora)  # tied: resized to 40 above
    adapted.save_pretrained(adapter_dir.name)
try:
    with warnings.catch_warnings(**quiet):
        PeftModel.from_pretrained(tiny_llama(tie=True), adapter_dir.name)
except RuntimeError as err:
    print(*[line.strip() for line in str(err).splitlines()], sep="\n")

# %%
# The fix: resize the base model to the adapter's vocabulary first, then load.
base = tiny_llama(tie=True)
base.resize_token_embeddings(40)
with warnings.catch_warnings(**quiet):
    restored = PeftModel.from_pretrained(base, adapter_dir.name)
embedding = restored.get_input_embeddings().weight
adapter_dir.cleanup()
logging.set_verbosity(verbosity)

# %%
# >>> tuple(embedding.shape)
# (40, 8)
# >>> torch.equal(embedding, tied.model.embed_tokens.weight)
# True

# %%
# Conclusion
# ----------
# Grow a tied vocabulary with ``resize_token_embeddings``: it keeps one matrix for
# embedding and head, and its mean initialisation keeps new tokens from taking over
# the softmax. Code that replaces the embedding must tie again, and an adapter must
# be loaded onto a model resized to the vocabulary it was trained on. Which
# transformers and peft releases behave as shown here is in the
# :ref:`version table <version-table>` of the symptom index.
#
# Next: :doc:`/auto_examples/fix_adapt/plot_quantize_tied` (quantizing a tied
# embedding and head), and :doc:`/auto_examples/fix_adapt/plot_lora_tied_head` for
# adapters on the tied head itself.
