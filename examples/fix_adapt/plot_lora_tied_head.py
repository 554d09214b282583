"""
LoRA on a tied head
===================

*"The merged model's outputs differ from the adapter's"*, *"garbage after
merge_and_unload"*, or peft's warning *"Model has `tie_word_embeddings=True` and a
tied layer is part of the adapter"*. In a model whose output layer (``lm_head``) is
its input embedding, one matrix has two names. An adapter that treats the names as
two layers trains two different matrices, and merging writes them back into the
one. This page measures the damage on a tiny Llama with peft 0.21.2 and
transformers 5.23, shows what no longer reproduces there, and proves two fixes:
``ensure_weight_tying=True`` for a fully trained embedding, and an explicit untie,
with ``tie_word_embeddings=False``, before a LoRA on the head.
"""

# %%
# A tiny tied Llama, trained, merged, saved and reloaded
# ------------------------------------------------------
# No download: the model is built from a small config with
# ``tie_word_embeddings=True``. ``finetune`` wraps it with peft and trains the
# adapter for 8 AdamW steps on one sequence; ``merge_and_reload`` merges with
# ``merge_and_unload()``, saves and loads back, as a deployment would. Both print
# the first sentence of each warning peft gives about ties.
import os
import tempfile
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib.pyplot as plt
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging

import weightshare

logging.disable_progress_bar()
ids = torch.arange(16).unsqueeze(0)  # the training sequence: tokens 0..15


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    sizes = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    heads = dict(num_attention_heads=2, num_key_value_heads=2)
    config = LlamaConfig(vocab_size=64, **sizes, **heads, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def first_sentences(caught: list[warnings.WarningMessage]) -> None:
    """Print the first sentence of each warning about ties."""
    for message in dict.fromkeys(str(w.message).split(". ")[0] for w in caught):
        if "tie" in message:
            print(f"warning: {message}")


def finetune(model: LlamaForCausalLM, **lora: object) -> tuple[PeftModel, torch.Tensor]:
    """The adapted model after 8 steps, and its logits on ``ids``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = get_peft_model(model, LoraConfig(r=2, **lora))
    first_sentences(caught)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=0.1)
    for _ in range(8):
        peft_model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        return peft_model, peft_model(ids).logits


def merge_and_reload(peft_model: PeftModel) -> tuple[LlamaForCausalLM, torch.Tensor]:
    """The merged model, and the logits of its saved and reloaded copy."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = peft_model.merge_and_unload()
    first_sentences(caught)
    with tempfile.TemporaryDirectory() as folder:
        merged.save_pretrained(folder)
        reloaded = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        return merged, reloaded(ids).logits


def change(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest absolute difference, rounded for the page."""
    return round((a - b).abs().max().item(), 3)


base = tiny_llama()

# %%
# >>> weightshare.shared_groups(base)
# [['model.embed_tokens.weight', 'lm_head.weight']]

# %%
# LoRA on ``lm_head`` alone: the merge changes the embedding too
# ---------------------------------------------------------------
# ``target_modules=["lm_head"]`` puts a low-rank update ``ΔW`` on the head only. In
# the adapted model the head computes with ``W + ΔW`` while the embedding still
# looks up rows of ``W``: two different matrices. ``merge_and_unload()`` then adds
# ``ΔW`` to the head's weight, which is the one shared tensor, so the embedding
# receives the head's update as well and the merged model is not the trained one.
original = base.lm_head.weight.detach().clone()
lora_head, trained = finetune(base, target_modules=["lm_head"])
delta = lora_head.get_output_embeddings().get_delta_weight("default").detach()
merged, reloaded = merge_and_reload(lora_head)
embedding = merged.model.embed_tokens.weight.detach()
agree = (reloaded.argmax(-1) == trained.argmax(-1)).float().mean().item()

# %%
# The merged embedding is ``W + ΔW``; the logits move by tens, and the reloaded
# model agrees with the trained one on the next token at fewer than a quarter of
# the positions of its own training sequence. Saving and loading keeps this wrong
# model: the config still says tied.
#
# >>> torch.allclose(embedding, original + delta)
# True
# >>> change(reloaded, trained) > 10, agree < 0.25
# (True, True)
#
# This is `peft#2018 <https://github.com/huggingface/peft/issues/2018>`_ (Gemma 2,
# ``target_modules=["lm_head"]``), still so on the pinned versions; peft warns at
# wrapping time and again at merging time.

# %%
# ``ensure_weight_tying=True`` with LoRA: one update, merged twice
# -----------------------------------------------------------------
# peft 0.21.2 has ``ensure_weight_tying``
# (`peft#2864 <https://github.com/huggingface/peft/issues/2864>`_). With a LoRA
# target it gives the head the embedding's low-rank factors, transposed, so both
# layers compute with the same ``W + ΔW`` during training. But
# ``merge_and_unload()`` merges that update once per layer into the one shared
# tensor, which ends at ``W + 2·ΔW``:
tied_lora, trained_tied = finetune(
    tiny_llama(), target_modules=["embed_tokens"], ensure_weight_tying=True
)
delta = tied_lora.get_input_embeddings().get_delta_weight("default").detach()
merged, reloaded_tied = merge_and_reload(tied_lora)
doubled = merged.model.embed_tokens.weight.detach() - original

# %%
# >>> torch.allclose(doubled, 2 * delta, atol=1e-6)
# True
# >>> change(reloaded_tied, trained_tied) > 1
# True
#
# So on these versions, merging a LoRA on tied layers changes the model, with or
# without the flag; to merge, untie first (the last fix below).

# %%
# ``modules_to_save`` copies: two matrices, and the reload overwrite is history
# ------------------------------------------------------------------------------
# ``modules_to_save=["embed_tokens", "lm_head"]`` gives each layer *its own*
# trainable copy (`peft#1750 <https://github.com/huggingface/peft/issues/1750>`_):
# the two drift apart in training. Users then found the trained head overwritten by
# the embedding after merging, saving and reloading, because the config still said
# tied (`peft#2777 <https://github.com/huggingface/peft/issues/2777>`_). On peft
# 0.21.2 the merge notices that the two differ and clears the flag:
copies, trained_copies = finetune(
    tiny_llama(), modules_to_save=["embed_tokens", "lm_head"], target_modules=["q_proj"]
)
merged, reloaded_copies = merge_and_reload(copies)
drift = change(merged.lm_head.weight, merged.model.embed_tokens.weight)

# %%
# >>> drift > 0.5, merged.config.tie_word_embeddings
# (True, False)
# >>> change(reloaded_copies, trained_copies) < 1e-4
# True
#
# The merged model is the trained one, but it is no longer a tied model: it carries
# two vocabulary matrices where the original had one.

# %%
# Fix 1: ``ensure_weight_tying=True`` for a fully trained embedding
# ------------------------------------------------------------------
# To train the embedding itself and keep the tie, name either layer in
# ``modules_to_save`` with ``ensure_weight_tying=True``: peft makes one trainable
# copy and gives it to both layers. The merge keeps one tensor, and the reloaded
# model is the trained one.
tied_copy, trained_fix1 = finetune(
    tiny_llama(),
    modules_to_save=["embed_tokens"],
    target_modules=["q_proj"],
    ensure_weight_tying=True,
)
merged, reloaded_fix1 = merge_and_reload(tied_copy)

# %%
# >>> weightshare.shared_groups(merged)
# [['model.embed_tokens.weight', 'lm_head.weight']]
# >>> change(reloaded_fix1, trained_fix1) < 1e-4
# True

# %%
# Fix 2: untie explicitly, then adapt the head
# --------------------------------------------
# To adapt the head alone, make it a separate matrix first:
# :func:`weightshare.untie` gives ``lm_head.weight`` its own copy, and
# ``tie_word_embeddings=False`` makes the config say so (peft 0.21.2 would clear the
# flag at merge time, after warning that a tied layer is adapted). The LoRA update
# then lands in the head only, and the merged, reloaded model is the trained one.
# The price is a second vocabulary matrix, here 64 × 16 = 1024 elements.
untied = tiny_llama()
weightshare.untie(untied, "lm_head.weight")
untied.config.tie_word_embeddings = False
lora_untied, trained_fix2 = finetune(untied, target_modules=["lm_head"])
merged, reloaded_fix2 = merge_and_reload(lora_untied)

# %%
# >>> torch.equal(merged.model.embed_tokens.weight, original)
# True
# >>> change(reloaded_fix2, trained_fix2) < 1e-4
# True
# >>> weightshare.count_parameters(tiny_llama()).saved_by_sharing
# 1024

# %%
# The damage in one chart
# -----------------------
# The largest logit change between the trained adapter and its merged, saved and
# reloaded model, for each way of adapting the tied pair:
labels = ["LoRA\nhead", "LoRA\ntied", "copies", "fix 1", "fix 2"]
pairs = [
    (reloaded, trained),
    (reloaded_tied, trained_tied),
    (reloaded_copies, trained_copies),
    (reloaded_fix1, trained_fix1),
    (reloaded_fix2, trained_fix2),
]
values = [max(change(a, b), 1e-3) for a, b in pairs]  # 1e-3: below the rounding
fig, ax = plt.subplots(figsize=(4.5, 3))
colors = ["tab:red", "tab:red", "tab:orange", "tab:green", "tab:green"]
ax.bar(labels, values, color=colors)
ax.set_yscale("log")
ax.set_ylabel("max |logit change|")
ax.set_title("merged and reloaded vs trained")
fig.tight_layout()

# %%
# Conclusion
# ----------
# A tied pair is one matrix; an adapter must treat it as one. On peft 0.21.2 with
# transformers 5.23, a LoRA on ``lm_head`` of a tied model merges into the embedding
# as well, and ``ensure_weight_tying=True`` with a LoRA target merges the update
# twice: both change the model at merge time. Separate ``modules_to_save`` copies
# now survive the reload but leave two matrices. What is right: one shared trainable
# copy (``modules_to_save`` with ``ensure_weight_tying=True``), or an explicit untie
# with ``tie_word_embeddings=False`` before adapting the head. After a merge, compare
# the reloaded model's logits with the adapter's, as this page does. Which peft
# releases behave as shown here: the :ref:`version table <version-table>`.
#
# Next: :doc:`/auto_examples/fix_distribute/plot_ddp_tied` (a tied model trained
# in several processes), and :func:`weightshare.untie` in the
# :doc:`API reference </api>`.
