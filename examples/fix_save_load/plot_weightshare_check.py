"""
Check a checkpoint before loading it
====================================

"Both are present in the checkpoints with different values, so we will NOT tie
them": ``from_pretrained`` warns so, and loads untied a model whose config ties the
output layer to the embedding; other checkpoints stop it with a size-mismatch error,
or give it a head of random values. ``weightshare check PATH`` says which before
anything is loaded: it reads the safetensors header, compares tensor bytes through a
memory map, and asks transformers what the architecture ties (on the meta device,
never running a folder's own code). This page makes four tiny checkpoints (a healthy
tied GPT-2, the tied matrix stored twice, a saved head that differs, a truncated
file), checks each, loads them to prove the report right, and times the command: on
a safetensors file it needs neither torch nor transformers.
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
# The tie comes from the model transformers builds from ``config.json`` on the meta
# device, and the file's keys are renamed by transformers' own loading rules; without
# transformers the report falls back to the flag ``tie_word_embeddings``. The file
# holds one of the two tied names; ``from_pretrained`` fills the other from it. The
# "constant" line counts a fresh model's zero biases and unit norms, not reported.
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
# A truncated file, and how fast the command starts
# -------------------------------------------------
# An interrupted upload leaves a file shorter than its header says. The command names
# the file and the problem on one line and exits with status 2. It runs here as a
# real process, with ``-X importtime`` listing every module it imports, and is timed
# on the healthy file against a process that only imports torch (best of two each):
import subprocess
import sys
import time

data = (workdir / "gpt2-tied" / "model.safetensors").read_bytes()
(workdir / "truncated.safetensors").write_bytes(data[: len(data) // 2])


def run(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """A Python process in the temporary folder, and its wall time in seconds."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], cwd=workdir, capture_output=True, text=True
    )
    return done, time.perf_counter() - start


check_args = ["-m", "weightshare", "check"]
truncated, _ = run("-X", "importtime", *check_args, "truncated.safetensors")
lines = truncated.stderr.splitlines()
imported = {line.rsplit("|", 1)[-1].strip() for line in lines if "import time:" in line}
print("\n".join(line for line in lines if "import time:" not in line))
healthy_file = "gpt2-tied/model.safetensors"
seconds = min(run(*check_args, healthy_file)[1] for _ in range(2))
torch_seconds = min(run("-c", "import torch")[1] for _ in range(2))
print(f"weightshare check {healthy_file}: {seconds:.2f} s (wall clock)")
print(f"python -c 'import torch': {torch_seconds:.2f} s (wall clock)")

# %%
# >>> truncated.returncode, truncated.stdout
# (2, '')
# >>> sorted(imported & {"torch", "numpy", "transformers", "safetensors"})
# []
# >>> seconds < torch_seconds / 5
# True
#
# Reading a header needs the standard library alone (NumPy, when installed, compares
# bytes faster); torch is imported for a torch checkpoint or to measure how much
# tied tensors differ, and transformers for a folder's architecture.
# ``benchmarks/check_speed.py`` records the same comparison, with memory
# (:doc:`benchmarks </benchmarks>`).

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
# command then needs no transformers, and no torch unless tied tensors differ. Three
# of the checkpoints, as such a job would see them:
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
# built, by a command that starts in a fraction of torch's import time. It predicts
# what ``from_pretrained`` does, and the loads above confirm it: a stored-twice tie
# costs only space, but a config that ties a head saved with other values loads
# untied, and the next ``tie_weights()`` throws the head away. The fix is in the
# report. The check also reports the reverse case, an untied config whose file lacks
# the head, which ``from_pretrained`` fills with random values: the "gibberish
# output" reports, such as
# `transformers#43429 <https://github.com/huggingface/transformers/pull/43429>`_.
#
# Next: :func:`weightshare.save` and :func:`weightshare.load`, which write and read
# checkpoints that keep ties, in the :doc:`API reference </api>`, and the other pages
# of the :ref:`gallery <gallery>`.
