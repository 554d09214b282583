"""
Merging and exporting a tied model
==================================

``SafetensorError: File does not contain tensor lm_head.weight`` from a converter or
merge script, or a fine-tune of a 3.2-billion-parameter model that comes out at 3.6
billion. Code that handles a checkpoint name by name meets a tied model's one matrix
under two names: a reader that asks for the name the file does not store fails,
and a fine-tune that trained the two names as two copies saves a second vocabulary
matrix. This page reproduces both on a tiny Llama (transformers 5.23, peft 0.21.2)
and fixes them: resolve a missing name through the tie, and train one copy so the
merged model stays tied and the size of its base.
"""

# %%
# The error: reading ``lm_head.weight`` by name
# ---------------------------------------------
# ``save_pretrained`` stores a tied matrix once, under the embedding's name. A script
# that reads the head by its own name, as converters and merge tools do, fails:
import os
import tempfile
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
import torch
from safetensors import SafetensorError, safe_open
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging

import weightshare

logging.disable_progress_bar()
verbosity = logging.get_verbosity()  # restored at the end of the page
logging.set_verbosity_error()
workdir = tempfile.TemporaryDirectory()


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    layer = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    heads = dict(num_attention_heads=2, num_key_value_heads=2)
    config = LlamaConfig(vocab_size=64, **layer, **heads, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


base = tiny_llama()
base_dir = os.path.join(workdir.name, "base")
base.save_pretrained(base_dir)
weights = os.path.join(base_dir, "model.safetensors")
base_bytes = os.path.getsize(weights)
with safe_open(weights, framework="pt") as f:
    try:
        f.get_tensor("lm_head.weight")
    except SafetensorError as err:
        print(f"SafetensorError: {err}")

# %%
# Loading Llama 3.2 into a framework that expected a separate head failed the same
# way (`keras-hub#1895 <https://github.com/keras-team/keras-hub/pull/1895>`_).

# %%
# Fix: find the stored name through the tie
# -----------------------------------------
# :func:`weightshare.check` reads the folder without loading the model and lists
# each tie with the names it is stored under. A reader asks it where a name lives:
report = weightshare.check(base_dir)


def stored_name(name: str) -> str:
    """The name in the file that holds ``name``'s tensor."""
    for tie in report.ties:
        if name in tie.names and tie.saved:
            return tie.saved[0]
    return name


with safe_open(weights, framework="pt") as f:
    head = f.get_tensor(stored_name("lm_head.weight"))

# %%
# >>> stored_name("lm_head.weight")
# 'model.embed_tokens.weight'
# >>> torch.equal(head, base.lm_head.weight)
# True

# %%
# The 3.6-billion-parameter Llama 3.2 3B
# --------------------------------------
# Llama 3.2 3B ties its head to its embedding, a 128256 × 3072 matrix. Built from
# its published sizes on the meta device (no memory, no download), it counts its
# parameters once; a copy that stores the head separately has 394 million more.
# Such fine-tunes exist, at about 3.6 billion parameters, and merge tools had to learn
# to combine them with the tied ones
# (`mergekit#464 <https://github.com/arcee-ai/mergekit/pull/464>`_).
sizes_3b = dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28)
heads_3b = dict(num_attention_heads=24, num_key_value_heads=8)
with torch.device("meta"):
    llama_3b = LlamaForCausalLM(
        LlamaConfig(vocab_size=128256, **sizes_3b, **heads_3b, tie_word_embeddings=True)
    )
count = weightshare.count_parameters(llama_3b)

# %%
# >>> round(count.unique / 1e9, 2), round(count.with_duplicates / 1e9, 2)
# (3.21, 3.61)

# %%
# How a fine-tune gets there: two trained copies, merged
# ------------------------------------------------------
# With peft, naming both layers in ``modules_to_save`` trains one copy of the matrix
# for each name. After ``merge_and_unload()`` the two differ, peft 0.21.2 clears the
# config's flag (see :doc:`plot_lora_tied_head`), and ``save_pretrained`` writes
# both: the file grows by one vocabulary matrix (4 bytes an element) and its entry
# in the file's header. ``finetune`` trains for 4 steps, merges and saves, and
# returns the merged model and the file's size.
from peft import LoraConfig, get_peft_model

ids = torch.arange(16).unsqueeze(0)


def finetune(name: str, **lora: object) -> tuple[LlamaForCausalLM, int]:
    with warnings.catch_warnings(action="ignore", category=FutureWarning):
        model = get_peft_model(tiny_llama(), LoraConfig(r=2, **lora))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=0.1)
    for _ in range(4):
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    merged = model.merge_and_unload()
    folder = os.path.join(workdir.name, name)
    merged.save_pretrained(folder)
    return merged, os.path.getsize(os.path.join(folder, "model.safetensors"))


with warnings.catch_warnings(action="ignore"):  # peft's warning about the tie
    two_copies, two_copies_bytes = finetune(
        "copies", target_modules=["q_proj"], modules_to_save=["embed_tokens", "lm_head"]
    )

# %%
# >>> weightshare.shared_groups(two_copies)
# []
# >>> 64 * 16 * 4 <= two_copies_bytes - base_bytes < 64 * 16 * 4 + 128  # V·d float32
# True

# %%
# Fix: train one copy, and the merge stays tied
# ---------------------------------------------
# With ``ensure_weight_tying=True`` peft gives both names the same trainable copy;
# the merged model has one matrix, and the saved file is exactly the base model's
# size. If the head really must differ from the embedding, the larger file is the
# price, and the config must say ``tie_word_embeddings=False`` (peft does that).
one_copy, one_copy_bytes = finetune(
    "one",
    target_modules=["q_proj"],
    modules_to_save=["embed_tokens"],
    ensure_weight_tying=True,
)
workdir.cleanup()
logging.set_verbosity(verbosity)

# %%
# >>> weightshare.shared_groups(one_copy)
# [['model.embed_tokens.weight', 'lm_head.weight']]
# >>> one_copy_bytes == base_bytes
# True

# %%
# Conclusion
# ----------
# A tied model is one matrix with two names. Code that reads checkpoints by name
# must resolve a missing name through the tie (``weightshare check`` lists where each
# is stored), and a fine-tune that should stay tied must train one copy, or its
# merged model carries a second vocabulary matrix: 394 million parameters for
# Llama 3.2 3B.
#
# Next: :doc:`/auto_examples/fix_distribute/plot_ddp_tied` (the tie across
# processes), and the :ref:`version table <version-table>` for which peft releases
# have ``ensure_weight_tying``.
