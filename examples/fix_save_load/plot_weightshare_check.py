"""
Check a checkpoint before loading it
====================================

Many tied-weight failures start in a file on disk, long before training: a Hugging
Face folder whose config ties the output layer to the embedding while its saved
``lm_head.weight`` holds other values, or a save that wrote the tied matrix twice.
``weightshare check PATH`` says what loading the file will do to the tie, without
loading the model: it reads the safetensors header, compares tensor bytes through a
memory map, and builds the architecture from ``config.json`` on the meta device. This
page makes four tiny checkpoints locally (a healthy tied GPT-2, the tied matrix stored
twice, a config that ties while the saved head differs, a truncated file), checks each
one, and then loads them with ``from_pretrained`` to prove what the report predicts.
"""

# %%
# A healthy tied GPT-2
# --------------------
# A two-layer GPT-2 with a vocabulary of 1000 and width 32, saved by
# ``save_pretrained`` into a temporary folder. GPT-2 ties ``lm_head.weight`` to the
# token embedding ``transformer.wte.weight``, so the file holds the matrix once. The
# helper ``check`` runs :func:`weightshare.check` from inside the temporary folder, so
# that the report names the folder as a reader would type it; ``report.format()`` is
# what the command line ``weightshare check gpt2-tied`` prints.
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
import torch
import transformers
from safetensors.torch import save_file

import weightshare

torch.manual_seed(0)
transformers.logging.disable_progress_bar()
workdir = Path(tempfile.mkdtemp())
config = transformers.GPT2Config(
    n_layer=2,
    n_head=2,
    n_embd=32,
    vocab_size=1000,
    n_positions=64,
    bos_token_id=0,
    eos_token_id=0,
)
transformers.GPT2LMHeadModel(config).save_pretrained(workdir / "gpt2-tied")
WTE, HEAD = "transformer.wte.weight", "lm_head.weight"


def check(name: str) -> weightshare.CheckReport:
    """:func:`weightshare.check` on a folder of the temporary directory."""
    with contextlib.chdir(workdir):
        return weightshare.check(name)


healthy = check("gpt2-tied")
print(healthy.format())

# %%
# The tie comes from the model that transformers builds from ``config.json`` on the
# meta device (no memory, no weights read), so any architecture it knows works;
# without transformers the report falls back to the flag ``tie_word_embeddings`` and
# says which names it assumed. The file holds one of the two tied names, and
# ``from_pretrained`` fills the other from it. The "constant" line counts the zero
# biases and unit norm weights of a fresh model: equal by construction, so not
# reported as copies.
#
# >>> healthy.status
# 0
# >>> [(tie.source, tie.saved) for tie in healthy.ties]
# [('architecture', ('transformer.wte.weight',))]

# %%
# The tied matrix stored twice
# ----------------------------
# ``safetensors.torch.save_file`` refuses a state dict in which two names share
# memory, as the state dict of every tied model does:
model = transformers.GPT2LMHeadModel.from_pretrained(workdir / "gpt2-tied")
state = model.state_dict()
try:
    save_file(state, workdir / "refused.safetensors")
except RuntimeError as err:
    print(str(err).strip().split(":")[0])

# %%
# The message goes on to suggest ``safetensors.torch.save_model``, which stores the
# tied matrix once. A conversion script that clones every tensor instead gets past
# the refusal, and stores the matrix under both names:
clones = {name: tensor.clone() for name, tensor in state.items()}
shutil.copytree(workdir / "gpt2-tied", workdir / "gpt2-twice")
save_file(clones, workdir / "gpt2-twice" / "model.safetensors")
twice = check("gpt2-twice")
print(twice.format())

# %%
# One finding, exit status 1: the copy wastes 1000 × 32 float32 values.
#
# >>> twice.status, [(f.kind, f.names, f.bytes) for f in twice.findings]
# (1, [('duplicate', ('transformer.wte.weight', 'lm_head.weight'), 128000)])
#
# The report says that ``from_pretrained`` ties the two names, since the copies
# agree (transformers does so since
# `transformers#44497 <https://github.com/huggingface/transformers/pull/44497>`_);
# loading the folder shows it:
#
# >>> model = transformers.GPT2LMHeadModel.from_pretrained(workdir / "gpt2-twice")
# >>> model.lm_head.weight is model.transformer.wte.weight
# True

# %%
# A config that ties, a saved head that differs
# ---------------------------------------------
# Now the saved head holds values of its own, as after fine-tuning a copy of the
# head, while ``config.json`` still says ``tie_word_embeddings: true``. Which matrix
# does the loaded model use?
embedding = state[WTE]
head = embedding + 0.01 * torch.randn(embedding.shape)
shutil.copytree(workdir / "gpt2-tied", workdir / "gpt2-differs")
save_file({**clones, HEAD: head}, workdir / "gpt2-differs" / "model.safetensors")
differs = check("gpt2-differs")
print(differs.format())

# %%
# >>> [(f.kind, round(f.max_abs_diff, 4), f.differing) for f in differs.findings]
# [('tie-differs', 0.0383, 32000)]
#
# The prediction, checked. transformers 4.54 tied the two anyway, so the embedding
# silently replaced the saved head
# (`transformers#42612 <https://github.com/huggingface/transformers/pull/42612>`_);
# since `transformers#42507 <https://github.com/huggingface/transformers/pull/42507>`_
# transformers logs a warning (caught here from its logger) and loads both matrices
# as saved, untied, although the config ties them:
import logging
import textwrap
from logging.handlers import BufferingHandler

caught = BufferingHandler(capacity=100)
logging.getLogger("transformers").addHandler(caught)
transformers.logging.disable_default_handler()  # printed below instead
loaded = transformers.GPT2LMHeadModel.from_pretrained(workdir / "gpt2-differs")
transformers.logging.enable_default_handler()
logging.getLogger("transformers").removeHandler(caught)
for record in caught.buffer:
    print(textwrap.fill(record.getMessage(), width=88))

# %%
# >>> loaded.lm_head.weight is loaded.transformer.wte.weight
# False
# >>> torch.equal(loaded.lm_head.weight, head)
# True
#
# The model's config still asks for the tie, so the next ``tie_weights()`` (which
# ``resize_token_embeddings`` calls, for one) replaces the fine-tuned head by the
# embedding, silently:
#
# >>> loaded.tie_weights()
# >>> torch.equal(loaded.lm_head.weight, embedding)
# True

# %%
# A truncated file
# ----------------
# An interrupted upload or copy leaves a file shorter than its header says. The
# command line names the file and the problem on one line and exits with status 2.
# It runs here as a real process; a lone safetensors file needs neither torch nor
# transformers, so it starts in a fraction of a second.
import subprocess
import sys

data = (workdir / "gpt2-tied" / "model.safetensors").read_bytes()
(workdir / "truncated.safetensors").write_bytes(data[: len(data) // 2])
command = [sys.executable, "-m", "weightshare", "check", "truncated.safetensors"]
truncated = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
print(truncated.stderr)

# %%
# >>> truncated.returncode, truncated.stdout
# (2, '')

# %%
# In CI, before publishing a checkpoint
# -------------------------------------
# Exit status 0 means clean, 1 findings, 2 unreadable, so one line in a CI job stops
# a bad checkpoint before it is uploaded. In a GitHub Actions job with weightshare
# (and transformers, for the architecture's ties) installed, for example:
#
# .. code-block:: yaml
#
#    - name: Check the checkpoint before publishing it
#      run: weightshare check ./my-model    # exit status 1 or 2 fails the step
#
# ``python -m weightshare check`` works the same, and ``--json`` prints one
# machine-readable report for all the paths given. With ``--no-transformers`` a
# folder's ties come from the config flag alone, with the usual names assumed; the
# command then needs neither transformers nor, unless tied tensors differ, torch, and
# starts at once. Three of the checkpoints, as such a job would see them:
import json

command = [sys.executable, "-m", "weightshare", "check", "--json", "--no-transformers"]
names = ["gpt2-tied", "gpt2-twice", "truncated.safetensors"]
job = subprocess.run(command + names, cwd=workdir, capture_output=True, text=True)
document = json.loads(job.stdout)
shutil.rmtree(workdir)  # the checkpoints are no longer needed

# %%
# >>> job.returncode, document["status"]
# (2, 2)
# >>> [(r["path"], r["status"], r["method"][:11]) for r in document["reports"]]
# [('gpt2-tied', 0, 'config flag'), ('gpt2-twice', 1, 'config flag')]
# >>> [e["path"] for e in document["errors"]]
# ['truncated.safetensors']

# %%
# What the check saw
# ------------------
# The tensor data of each folder, split three ways: what the tied model needs, an
# identical second copy of the tied matrix, and a second matrix under a tied name
# that differs from the first (the one the config's tie would throw away).
import matplotlib.pyplot as plt


def extra(report: weightshare.CheckReport, kind: str) -> float:
    """kB stored under the later names of the findings of one kind."""
    size = {tensor.name: tensor.nbytes for tensor in report.tensors}
    names = [n for f in report.findings if f.kind == kind for n in f.names[1:]]
    return sum(size[name] for name in names) / 1e3


reports = {"healthy": healthy, "stored twice": twice, "head differs": differs}
copies = [extra(report, "duplicate") for report in reports.values()]
conflicts = [extra(report, "tie-differs") for report in reports.values()]
totals = [report.stored_bytes / 1e3 for report in reports.values()]
needed = [t - a - b for t, a, b in zip(totals, copies, conflicts, strict=True)]
fig, ax = plt.subplots(figsize=(6, 3))
ax.barh(list(reports), needed, label="needed by the tied model")
ax.barh(list(reports), copies, left=needed, label="identical copy")
ax.barh(list(reports), conflicts, left=needed, label="differing copy")
for row, report in enumerate(reports.values()):
    ax.text(totals[row] + 5, row, f"exit {report.status}", va="center")
ax.set_xlabel("tensor data (kB)")
ax.set_xlim(0, max(totals) * 1.2)
ax.set_title("weightshare check on three GPT-2 folders")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, fontsize="small")
fig.tight_layout()

# %%
# Conclusion
# ----------
# A checkpoint's ties can be checked where they break: on disk, before any model is
# built. :func:`weightshare.check` (the command ``weightshare check``) reads headers
# and compares bytes only between tensors of equal dtype and shape, through a memory
# map a chunk at a time, so its memory stays a small part of the file's size (see the
# :doc:`benchmarks </benchmarks>`). It predicts what ``from_pretrained`` does, and the
# loads above confirm it: a stored-twice tie costs only space, but a config that ties
# a head saved with other values loads untied, and the next ``tie_weights()`` throws
# the head away. The fix is in the report: store the tied matrix once, or set
# ``tie_word_embeddings`` to false when the model is meant to be untied. The check
# also reports the reverse case, an untied config whose file lacks the head, which
# ``from_pretrained`` fills with random values: the "gibberish output" reports, such
# as `transformers#43429 <https://github.com/huggingface/transformers/pull/43429>`_.
#
# Next: :func:`weightshare.save` and :func:`weightshare.load`, which write and read
# checkpoints that keep ties, in the :doc:`API reference </api>`, and the other pages
# of the :ref:`gallery <gallery>`.
