"""
A GPU training step with tied weights
=====================================

A model whose token embedding ``wte`` is tied to its output layer ``lm_head`` trains on
a GPU with a step like this page's: the move to the device, bf16 autocast, fused AdamW,
gradient clipping, ``zero_grad(set_to_none=True)`` and :func:`torch.compile`. The claim:
none of them breaks the tie. The one Parameter object survives the move, gets one fp32
gradient and one set of optimizer moments, and the loss starts where the tie's
initialisation says it must. What does break a tie at this stage is a parameter created
after the optimizer, shown at the end.

The page runs on CUDA, on Apple's MPS or on the CPU and prints the path it takes. On a
GPU it trains GPT-2 small; elsewhere a small model, so that it runs in seconds. What
the tie costs in step time and saves in memory, measured, is on the
:doc:`benchmarks page </benchmarks>`.
"""

# %%
# The device, and which checks run on it
# --------------------------------------
# Two features of the step depend on the device:
#
# - **bf16 autocast** runs matrix multiplies in bfloat16 where the hardware does them
#   fast: CUDA GPUs from Ampere on (``including_emulation=False`` leaves out older
#   GPUs that only emulate bf16) and MPS from macOS 14 on. CPUs stay in fp32: most
#   have no bf16 matrix units, so autocast would slow the step down there.
# - **torch.compile** fuses the model's kernels. It pays off over many steps on a
#   GPU; on a CPU, compiling takes longer than this whole page, so the page compiles
#   on CUDA only.
#
# The site is built on machines without a GPU, so the build checks this page's claims
# on the CPU path: fp32, and the step uncompiled (a section below compiles a model
# on every path). The project's test suite runs the same step, this page's
# ``make_train_step``, under bf16 autocast and under :func:`torch.compile` on the
# CPU (both work there, slowly) and checks the same claims, and it checks the loss
# at initialisation for GPT-2 small, the configuration the CUDA path builds.
import torch

torch.manual_seed(0)

if torch.cuda.is_available():
    device = torch.device("cuda")
    use_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
elif torch.backends.mps.is_available():
    device = torch.device("mps")
    use_bf16 = torch.backends.mps.is_macos_or_newer(14, 0)
else:
    device = torch.device("cpu")
    use_bf16 = False
use_compile = device.type == "cuda"
print(f"path: {device.type}, bf16 autocast: {use_bf16}, torch.compile: {use_compile}")

# %%
# A tied GPT, sized for the device
# --------------------------------
# ``weightshare.models.GPT`` is a GPT-2-shaped decoder whose ``lm_head.weight``
# *is* ``wte.weight``: one V×d matrix that embeds tokens at the input and scores them
# at the output. On CUDA the page builds GPT-2 small (V = 50257, d = 768, 12 layers);
# on MPS and the CPU a small configuration with the same structure.
import weightshare
from weightshare.models import GPT, GPTConfig

if device.type == "cuda":
    config, batch = GPTConfig(), 8
else:
    config = GPTConfig(vocab_size=2048, context=32, n_layer=2, n_head=2, d_model=64)
    batch = 4
model = GPT(config)
count = weightshare.count_parameters(model)

# %%
# :func:`weightshare.shared_groups` finds one group of names for one object, and
# :func:`weightshare.count_parameters` counts the V·d elements that the tie saves:
#
# >>> weightshare.shared_groups(model)
# [['wte.weight', 'lm_head.weight']]
# >>> count.saved_by_sharing == config.vocab_size * config.d_model
# True

# %%
# ``model.to(device)`` keeps the tie
# ----------------------------------
# A tie is the identity of one :class:`~torch.nn.Parameter` object, so the question is
# whether moving the model keeps that object. It does: ``Module.to`` converts each
# parameter in place (it replaces the tensor's data, or swaps it in, under the same
# Python object). A :class:`weightshare.TieGuard` records the tie here, to check it
# after the step.
shared = model.wte.weight
model.to(device)
guard = weightshare.TieGuard(model)

# %%
# >>> model.lm_head.weight is model.wte.weight, model.wte.weight is shared
# (True, True)
# >>> model.wte.weight.device.type == device.type
# True

# %%
# One setting changes that. Under
# ``torch.__future__.set_overwrite_module_params_on_conversion(True)``, a conversion
# builds a *new* Parameter for every name, one per module that holds it, and the tie
# silently becomes two independent weights. A dtype conversion of a fresh model shows
# it on any device; the setting is put back right after.
converted = GPT(config)
converted_guard = weightshare.TieGuard(converted)
torch.__future__.set_overwrite_module_params_on_conversion(True)
try:
    converted.to(torch.float64)
finally:
    torch.__future__.set_overwrite_module_params_on_conversion(False)

# %%
# The guard, created before the conversion, names the group that broke:
#
# >>> converted.lm_head.weight is converted.wte.weight
# False
# >>> converted_guard.broken()
# [['wte.weight', 'lm_head.weight']]

# %%
# The training step
# -----------------
# One function builds the whole step; ``bf16`` and ``compile`` are arguments so that
# the same step runs on every path:
#
# 1. ``zero_grad(set_to_none=True)`` drops the previous gradients instead of filling
#    them with zeros.
# 2. The forward pass and the loss run under :class:`torch.autocast`, in bf16 when
#    ``bf16`` is set. The weights stay fp32, and so does the one gradient of the
#    shared weight: autocast casts the weight to bf16 for the output layer's matrix
#    multiply (the embedding lookup reads it in fp32) and backpropagates through the
#    cast.
# 3. ``loss.backward()`` sums the gradients of both uses of the shared weight, the
#    embedding lookup and the output layer, into its one ``.grad``.
# 4. ``clip_grad_norm_`` over ``net.parameters()``, which yields the shared weight
#    once, scales all gradients down when their total norm exceeds ``max_norm``.
#    Over a list that holds the weight twice, it would measure a norm √2 too large
#    for that weight and scale its gradient twice: see
#    :doc:`/auto_examples/fix_train/plot_optimizer_groups_clipping`.
# 5. ``optimizer.step()`` updates each parameter in place.
#
# With ``compile``, the forward pass is ``torch.compile(net)``, which holds the
# model's own parameters; it compiles at the first call.
from collections.abc import Callable

from torch.nn import functional as F

Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def make_train_step(
    net: GPT, optimizer: torch.optim.Optimizer, *, bf16: bool, compile: bool
) -> Step:
    """One training step of ``net``: returns the loss and the unclipped grad norm."""
    forward = torch.compile(net) if compile else net
    device_type = next(net.parameters()).device.type

    def train_step(
        idx: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(idx)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=1.0)
        optimizer.step()
        return loss.detach(), grad_norm

    return train_step


# %%
# One step
# --------
# The optimizer is created after ``model.to(device)``, from the parameters on the
# device. The batch is random tokens, each sequence's targets its inputs shifted by
# one.
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
train_step = make_train_step(model, optimizer, bf16=use_bf16, compile=use_compile)
tokens = torch.randint(config.vocab_size, (batch, config.context + 1), device=device)
idx, targets = tokens[:, :-1], tokens[:, 1:]

loss, grad_norm = train_step(idx, targets)
guard.check()  # raises BrokenTieError if the step broke the tie

# %%
# After the step the tie holds, and the shared gradient is one fp32 tensor:
#
# >>> model.lm_head.weight is model.wte.weight
# True
# >>> guard.broken()
# []
# >>> model.wte.weight.grad.dtype, model.wte.weight.grad is model.lm_head.weight.grad
# (torch.float32, True)
#
# The optimizer keeps state per Parameter object, so the shared weight has one entry:
# one pair of AdamW moments, updated once per step with the summed gradient, and one
# entry fewer than there are parameter names:
#
# >>> sum(p is model.wte.weight for p in optimizer.state)
# 1
# >>> len(optimizer.state) == count.unique_tensors == count.names - 1
# True

# %%
# Compiling keeps the tie
# -----------------------
# ``torch.compile(net)`` returns a wrapper that holds ``net`` itself, so it has the
# same Parameter objects; the compiled graph reads each parameter as one input, and
# the tied matrix is one input with two uses. On CUDA the step above ran compiled.
# On the other paths a compiled step would cost more than this whole page (the
# default backend, inductor, generates and builds C++ code for a CPU), so the page
# compiles a fresh model with ``backend="aot_eager"``: the same graph capture and
# the same tracing of forward and backward, without the code generation. The test
# suite runs the default backend on the CPU and checks the same facts.
fresh = GPT(config).to(device)
compiled = torch.compile(fresh, backend="aot_eager")
logits = compiled(idx)
F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
eager_twin = GPT(config).to(device)
eager_twin.load_state_dict(fresh.state_dict())
F.cross_entropy(eager_twin(idx).flatten(0, 1), targets.flatten()).backward()

# %%
# >>> all(a is b for a, b in zip(compiled.parameters(), fresh.parameters()))
# True
# >>> compiled.lm_head.weight is compiled.wte.weight, weightshare.shared_groups(fresh)
# (True, [['wte.weight', 'lm_head.weight']])
# >>> fresh.wte.weight.grad is fresh.lm_head.weight.grad
# True
# >>> torch.allclose(fresh.wte.weight.grad, eager_twin.wte.weight.grad, atol=1e-6)
# True

# %%
# Where the loss starts, and why the tie moves it
# -----------------------------------------------
# An untrained model is often said to start at ln V, the loss of a uniform guess.
# A tied model starts measurably above it. Its logit for token j is h·w_j, where h
# is the final LayerNorm's output and w_j row j of the shared matrix. LayerNorm
# leaves each position with mean 0 and variance 1, so ‖h‖² = d, and GPT-2 draws
# each entry of w_j from N(0, σ²) with σ = 0.02. Given h, the V logits are
# independent draws from N(0, σ²d), and for large V the log of their sum of
# exponentials is ln V + ln E[exp(z)] = ln V + σ²d/2. The target's own logit
# averages 0 over the batch, with a standard deviation of σ√d/√N for N predicted
# tokens. So the loss L at initialisation is
#
# .. math::
#
#    L \approx \ln V + \sigma^2 d / 2 \pm \sigma\sqrt{d} / \sqrt{N}
#
# which is ln V + 0.154 for GPT-2 small (d = 768) and ln V + 0.013 for this page's
# CPU configuration (d = 64). The derivation treats h as independent of the matrix,
# which holds closely: h is dominated by the blocks' outputs, not by the input
# token's own embedding. Checked within four standard deviations:
import math

sigma, n_tokens = 0.02, targets.numel()
expected_loss = math.log(config.vocab_size) + sigma**2 * config.d_model / 2
noise = sigma * math.sqrt(config.d_model) / math.sqrt(n_tokens)

# %%
# >>> abs(loss.item() - expected_loss) < 4 * noise
# True

# %%
# A parameter created after the optimizer is never trained
# --------------------------------------------------------
# The optimizer holds the Parameter objects it was given, and nothing else. Replacing
# a parameter after creating it, for example loading pretrained output weights as a
# new :class:`~torch.nn.Parameter`, leaves the optimizer holding the old object. The new
# one gets a gradient at every step, and no update. Here the output layer gets a new
# Parameter with the embedding's values, which also unties it.
from torch import nn

late = GPT(config).to(device)
late_optimizer = torch.optim.AdamW(late.parameters(), lr=3e-4, fused=True)
late_guard = weightshare.TieGuard(late)
late.lm_head.weight = nn.Parameter(late.wte.weight.detach().clone())
head_before = late.lm_head.weight.detach().clone()
make_train_step(late, late_optimizer, bf16=use_bf16, compile=False)(idx, targets)
held = [p for group in late_optimizer.param_groups for p in group["params"]]

# %%
# The optimizer does not hold the new weight; the step left it exactly as it was,
# although it has a gradient, which the optimizer's ``zero_grad`` never clears:
#
# >>> any(p is late.lm_head.weight for p in held)
# False
# >>> torch.equal(late.lm_head.weight, head_before)
# True
# >>> late_optimizer.zero_grad(set_to_none=True)
# >>> late.lm_head.weight.grad is not None
# True
#
# The guard recorded the tie before the replacement and reports it broken. The fix is
# the order: change parameters first, create the optimizer last (here:
# ``weightshare.retie(late, late_guard.groups)``, then a new optimizer).
#
# >>> late_guard.broken()
# [['wte.weight', 'lm_head.weight']]

# %%
# What the tie saves: the training state
# --------------------------------------
# An untied twin, ``GPTConfig(tie_embeddings=False)``, has a second V×d matrix, and
# in fp32 with AdamW each V×d matrix costs 16·V·d bytes of training state: 4 for the
# weight, 4 for its gradient and 8 for the two AdamW moments. After two steps both
# models hold all of it (AdamW creates its moments at a parameter's first step), and
# :func:`weightshare.training_state_bytes` counts it, each storage once.
from dataclasses import replace

import matplotlib.pyplot as plt


def nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def state_after_two_steps(tied: bool) -> tuple[dict[str, int], int]:
    """A fresh model's weights, gradients and AdamW state after 2 steps, in bytes,
    and the same total as :func:`weightshare.training_state_bytes` counts it."""
    torch.manual_seed(0)
    net = GPT(replace(config, tie_embeddings=tied)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4, fused=True)
    step = make_train_step(net, opt, bf16=use_bf16, compile=False)
    for _ in range(2):
        step(idx, targets)
    params = list(net.parameters())
    moments = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    parts = {
        "weights": nbytes(params),
        "gradients": nbytes([p.grad for p in params]),
        "AdamW state": nbytes(moments),
    }
    return parts, weightshare.training_state_bytes(net, opt)


(tied_parts, tied_total), (untied_parts, untied_total) = (
    state_after_two_steps(True),
    state_after_two_steps(False),
)
states = {"tied": tied_parts, "untied": untied_parts}
analytic = 16 * config.vocab_size * config.d_model
saved = untied_total - tied_total

fig, ax = plt.subplots(figsize=(5, 3), layout="constrained")
bottom = [0.0, 0.0]
for part in ("weights", "gradients", "AdamW state"):
    heights = [states[name][part] / 2**20 for name in ("tied", "untied")]
    ax.bar(["tied", "untied"], heights, bottom=bottom, label=part)
    bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
ax.set_ylabel("training state (MiB)")
ax.set_title(f"V={config.vocab_size}, d={config.d_model}: the tie saves 16·V·d")
ax.legend()
plt.show()

# %%
# The tied model's training state is smaller by 16·V·d bytes, plus 4: the
# one-element ``step`` counter that AdamW keeps for every parameter, and the untied
# model has one parameter more:
#
# >>> saved - analytic
# 4
# >>> sum(tied_parts.values()) == tied_total, sum(untied_parts.values()) == untied_total
# (True, True)
#
# That is a count of the state, not a measurement of the device's memory. The
# benchmark ``benchmarks/train_step.py`` measures the memory allocated between steps
# and the step time, tied against untied, with this step; the
# :doc:`benchmarks page </benchmarks>` shows its recorded runs.

# %%
# Conclusion
# ----------
# A tie is one Parameter object, and the whole training step respects that:
# ``model.to(device)`` keeps the object, autocast casts it for the bf16 multiply and
# returns one fp32 gradient, ``clip_grad_norm_`` over ``model.parameters()`` counts it
# once, and the optimizer keeps one set of moments for it. The tie also shows in the
# first loss, σ²d/2 above ln V. The order matters only at set-up: move the model and
# change its parameters first, then create the optimizer.
#
# Next: the :doc:`benchmarks page </benchmarks>` for time and memory, and
# :doc:`/auto_examples/fix_train/plot_optimizer_groups_clipping` for what parameter
# groups and clipping do with a weight listed twice.
