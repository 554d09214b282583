"""
Upgrading to transformers 5: the tie rules changed
==================================================

``AttributeError: 'list' object has no attribute 'keys'`` when building your own
model class after upgrading to transformers 5, or a model that loads without error
and is no longer tied, or the warning *"both are present in the checkpoints with
different values, so we will NOT tie them"*. In transformers 5 a model is tied
only when its class declares the tie as a ``{target: source}`` dict, its config
says ``tie_word_embeddings=True``, and the checkpoint does not hold two different
matrices for the pair; neither declaration has the default it had in version 4.
This page shows each change on tiny models (transformers 5.23), and the fixes:
declare the dict, write the flag, check the saved folder with ``weightshare check``.
"""

# %%
# The error: a v4 list of tied keys
# ---------------------------------
# In transformers 4 a model class listed the names to tie to the input embedding:
# ``_tied_weights_keys = ["lm_head.weight"]``. Version 5 reads the attribute as a
# mapping from each tied name to the name it takes its tensor from, and a class that
# still declares the list fails in ``post_init()``, before a weight exists.
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

import weightshare

hf_logging.disable_progress_bar()
torch.manual_seed(0)


class TinyConfig(PretrainedConfig):
    model_type = "tiny-lm"

    def __init__(self, vocab_size: int = 16, width: int = 8, **kwargs: object) -> None:
        self.vocab_size, self.width = vocab_size, width
        super().__init__(**kwargs)


class TinyLM(PreTrainedModel):
    config_class = TinyConfig
    _tied_weights_keys = ["lm_head.weight"]  # noqa: RUF012 (the v4 form)

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.width)
        self.lm_head = nn.Linear(config.width, config.vocab_size, bias=False)
        self.post_init()


try:
    TinyLM(TinyConfig(tie_word_embeddings=True))
except AttributeError as err:
    print(f"AttributeError: {err}")

# %%
# Fix 1: declare the dict
# -----------------------
# The key is the name that gets tied, the value the name whose tensor it takes. The
# same class with the dict builds and ties; projects upgrading to version 5 made
# exactly this one-line change to their own models
# (`prime-rl#1998 <https://github.com/PrimeIntellect-ai/prime-rl/pull/1998>`_).
TinyLM._tied_weights_keys = {"lm_head.weight": "embed.weight"}
model = TinyLM(TinyConfig(tie_word_embeddings=True))

# %%
# >>> model.lm_head.weight is model.embed.weight
# True

# %%
# Fix 2: write the flag, because its default is gone
# --------------------------------------------------
# In version 4 every config had ``tie_word_embeddings=True`` unless it said
# otherwise. In version 5 a config class that never sets it has no such attribute,
# transformers reads it as ``False``, and the declared tie is silently skipped:
silent = TinyLM(TinyConfig())

# %%
# >>> hasattr(TinyConfig(), "tie_word_embeddings")
# False
# >>> weightshare.shared_groups(silent)
# []
#
# Nothing warns: the model trains two matrices where it had one. Give the config
# class the flag with the default you mean, or pass it, as ``model`` above did:
#
# >>> weightshare.shared_groups(model)
# [['embed.weight', 'lm_head.weight']]

# %%
# Loading: the file decides, in both directions
# ---------------------------------------------
# A Hugging Face GPT-2 ties ``lm_head.weight`` to ``transformer.wte.weight``. Tying
# is now symmetric
# (`transformers#42507 <https://github.com/huggingface/transformers/pull/42507>`_):
# whichever of the two names the checkpoint holds fills the other. When it holds
# both with different values, the two are *not* tied, and transformers warns. The
# helper ``save`` writes a state dict as a model folder; the page keeps the log
# records and prints the warnings it discusses.
import json
import logging.handlers
import tempfile
from pathlib import Path

from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

buffer = logging.handlers.BufferingHandler(capacity=100)
hf_logging.disable_default_handler()
hf_logging.get_logger().addHandler(buffer)
workdir = tempfile.TemporaryDirectory()
sizes = dict(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2)
config = GPT2Config(**sizes, bos_token_id=0, eos_token_id=0)
tied = GPT2LMHeadModel(config)
WTE, HEAD = "transformer.wte.weight", "lm_head.weight"
FLAG = "tie_word_embeddings"


def save(state: dict[str, torch.Tensor], name: str, flag: bool | None) -> str:
    """Write ``state`` and a GPT-2 config with the flag (None: no flag) to a folder."""
    folder = os.path.join(workdir.name, name)
    GPT2LMHeadModel(config).save_pretrained(folder)  # config.json and the layout
    state = {key: value.clone().contiguous() for key, value in state.items()}
    save_file(state, os.path.join(folder, "model.safetensors"), {"format": "pt"})
    config_file = Path(folder, "config.json")
    settings = json.loads(config_file.read_text())
    del settings[FLAG]
    written = {} if flag is None else {FLAG: flag}
    config_file.write_text(json.dumps(settings | written))
    return folder


def load(folder: str) -> GPT2LMHeadModel:
    """``from_pretrained``, printing the first sentence of each warning it logs."""
    buffer.flush()
    loaded = GPT2LMHeadModel.from_pretrained(folder)
    for record in buffer.buffer:
        if record.levelno >= logging.WARNING:
            print(f"warning: {record.getMessage().split('. You')[0]}")
    return loaded


state = tied.state_dict()
only_head = load(save({k: v for k, v in state.items() if k != WTE}, "head", True))
untied_state = {**state, HEAD: torch.randn_like(state[HEAD])}
both = load(save(untied_state, "both", True))

# %%
# A file with ``lm_head.weight`` alone loads as a tied model; a file whose two
# names differ loads untied and keeps both, with the warning above:
#
# >>> only_head.lm_head.weight is only_head.transformer.wte.weight
# True
# >>> torch.equal(only_head.transformer.wte.weight, tied.lm_head.weight)
# True
# >>> weightshare.shared_groups(both)
# []
# >>> torch.equal(both.lm_head.weight, untied_state[HEAD])
# True

# %%
# A config without the flag
# -------------------------
# A ``config.json`` that omits ``tie_word_embeddings`` gets the class default, and
# GPT-2's is ``True``. Step-Audio-EditX shipped such a config over a checkpoint with
# two different matrices; its users found the head tied to the embedding and its
# saved values lost, which the report dates to transformers 4.54
# (`Step-Audio-EditX#38 <https://github.com/stepfun-ai/Step-Audio-EditX/issues/38>`_;
# the version table finds the same on 4.45 to 4.57).
# On 5.23 the values survive, with the same warning, but the config still says tied:
# ``save_pretrained`` writes that back, and every tool that trusts the flag (a
# converter, a quantizer) ties the two again. ``weightshare check`` reads the folder
# without loading it and names the problem:
no_flag = save(untied_state, "no-flag", None)
loaded = load(no_flag)
report = weightshare.check(no_flag)
print(report.format().replace(workdir.name, "<tmp>"))

# %%
# >>> loaded.config.tie_word_embeddings, weightshare.shared_groups(loaded)
# (True, [])
# >>> report.status
# 1
#
# The fix is one line of ``config.json``: write ``"tie_word_embeddings": false``.
# Then the load is silent, the report is clean, and any version loads both matrices:
explicit = save(untied_state, "explicit", False)

# %%
# >>> weightshare.check(explicit).status
# 0
# >>> torch.equal(load(explicit).lm_head.weight, untied_state[HEAD])
# True

# %%
# Vision-language models: ``text_config`` decides
# -----------------------------------------------
# In a model that wraps a language model (Llava here), the flag that counts is the
# one in ``text_config``. A ``tie_word_embeddings=False`` given at the top level is
# ignored when the text config says ``True``:
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
from transformers import LlavaForConditionalGeneration as Llava

layers = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1)
text = dict(vocab_size=32, num_attention_heads=2, num_key_value_heads=2, **layers)
vision = CLIPVisionConfig(num_attention_heads=2, image_size=8, patch_size=4, **layers)


def llava(text_flag: bool, **top: bool) -> Llava:
    language = LlamaConfig(**text, tie_word_embeddings=text_flag)
    return Llava(LlavaConfig(vision_config=vision, text_config=language, **top))


ignored = llava(True, tie_word_embeddings=False)
obeyed = llava(False)
workdir.cleanup()
hf_logging.get_logger().removeHandler(buffer)  # logging as it was
hf_logging.enable_default_handler()

# %%
# >>> ignored.lm_head.weight is ignored.get_input_embeddings().weight
# True
# >>> obeyed.lm_head.weight is obeyed.get_input_embeddings().weight
# False

# %%
# Conclusion
# ----------
# In transformers 5, declare the tie as a dict, write ``tie_word_embeddings`` in
# every config you own (in ``text_config`` for a vision-language model), and check a
# folder with ``weightshare check`` before publishing it: a config that says "tied"
# over two different matrices is the one the library now only warns about. Which of
# these bite on your version (4.45 to 5.23, measured) is in the
# :ref:`version table <version-table>` of the symptom index.
#
# Next: :doc:`/auto_examples/fix_save_load/plot_weightshare_check` (what the check
# reports), then :doc:`/auto_examples/fix_adapt/plot_resize_vocabulary` (resizing the
# vocabulary of a tied model).
