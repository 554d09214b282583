"""
4. A tied model's training step on a GPU
========================================

The claim: nothing in a modern GPU training step breaks a tie. A model whose token
embedding ``wte`` is tied to its output layer ``lm_head`` goes through the move to the
device, bf16 autocast, fused AdamW, gradient clipping,
``zero_grad(set_to_none=True)`` and :func:`torch.compile`, and keeps one Parameter
object with one fp32 gradient and one set of optimizer moments.

**What you see depends on your machine.** Without a GPU, as on the machines that
build this site, the page trains a small GPT in fp32 with an eager step and compiles
a second model with a light backend; every claim is checked on that path. On a CUDA
GPU it trains GPT-2 small, under bf16 autocast, with the step compiled by inductor;
the project's tests run that same step under bf16 and inductor on a CPU too
(``tests/site/test_training_step_paths.py``). What the tie costs in step time and
saves in memory, measured, is on the :doc:`benchmarks page </benchmarks>`.
"""

# %%
# The device, and which checks run on it
# --------------------------------------
# Two features of the step depend on the device. **bf16 autocast** runs matrix
# multiplies in bfloat16 where the hardware does them fast: CUDA GPUs from Ampere on
# (``including_emulation=False`` leaves out GPUs that only emulate bf16) and MPS
# from macOS 14 on; CPUs stay in fp32, since most have no bf16 matrix units.
# **torch.compile** pays off over many steps on a GPU; on a CPU, compiling would take
# longer than this whole page, so the step is compiled on CUDA only. The line
# printed below is the path this page took when the site was built; the claims
# checked are the same on every path.
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
# Python object); one global setting changes that, shown on
# :doc:`/auto_examples/fix_build/plot_module_conversion`. A
# :class:`weightshare.TieGuard` records the tie here, to check it after the step.
shared = model.wte.weight
model.to(device)
guard = weightshare.TieGuard(model)

# %%
# >>> model.lm_head.weight is model.wte.weight, model.wte.weight is shared
# (True, True)
# >>> model.wte.weight.device.type == device.type
# True

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
import math

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
#
# ``clip_grad_norm_`` returned the norm it measured over each gradient once, and left
# the gradients with that norm or, where it exceeded ``max_norm``, with norm 1; a list
# holding the shared weight twice breaks both:
#
# >>> norms = torch.stack([p.grad.norm() for p in model.parameters()])
# >>> math.isclose(norms.norm().item(), min(grad_norm.item(), 1.0), rel_tol=1e-4)
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
# Where the loss starts: above ln V, tied or not
# ----------------------------------------------
# An untrained model is often said to start at ln V, the loss of a uniform guess.
# This one starts above it, and the tie is not the reason: the output layer's
# initialisation is. The logit for token j is h·w_j, where h is the final LayerNorm's
# output (mean 0 and variance 1 per position, so ‖h‖² = d) and w_j is row j of the
# output matrix, whose entries GPT-2 draws from N(0, σ²) with σ = 0.02, tied or
# untied. Given h, the V logits are independent draws from N(0, σ²d), and for large V
# the log of the sum of their exponentials (the log-sum-exp, the part of the loss
# that does not depend on the target) is ln V + ln E[exp(z)] = ln V + σ²d/2. The
# target's own logit averages 0, with a standard deviation of σ√d/√N over N
# predicted tokens. So the loss at initialisation is
#
# .. math::
#
#    L \approx \ln V + \sigma^2 d / 2 \pm \sigma\sqrt{d} / \sqrt{N}
#
# which is ln V + 0.154 for GPT-2 small (d = 768) and ln V + 0.013 for the small
# configuration (d = 64). The first step's loss agrees within four standard
# deviations, but on the small configuration those are wider than the offset
# itself. The log-sum-exp has no target in it and so far less noise: its mean over
# the batch, minus ln V, measures the offset directly, here for an untrained tied
# model and for its untied twin (``tie_embeddings=False``, whose own output matrix
# has the same initialisation).
from dataclasses import replace

sigma, n_tokens = 0.02, targets.numel()
offset = sigma**2 * config.d_model / 2
tolerance = sigma**2 * config.d_model / 8  # a quarter of the predicted offset
expected_loss = math.log(config.vocab_size) + offset
noise = sigma * math.sqrt(config.d_model) / math.sqrt(n_tokens)


def measured_offset(net: GPT) -> float:
    """Mean log-sum-exp of ``net``'s logits on ``idx``, minus ln V."""
    with torch.no_grad():
        logits = net(idx).float()
    return logits.logsumexp(-1).mean().item() - math.log(config.vocab_size)


torch.manual_seed(1)
untied_twin = GPT(replace(config, tie_embeddings=False)).to(device)
offsets = {"tied": measured_offset(fresh), "untied": measured_offset(untied_twin)}
print(
    f"predicted offset {offset:.4f}; measured "
    + ", ".join(f"{name} {value:.4f}" for name, value in offsets.items())
)

# %%
# The loss of the first step is ln V + σ²d/2 within four standard deviations, and
# both models' measured offsets are within a quarter of σ²d/2 of it, a fixed
# tolerance that an offset of 0 or of twice the prediction fails:
#
# >>> abs(loss.item() - expected_loss) < 4 * noise
# True
# >>> all(abs(value - offset) < tolerance for value in offsets.values())
# True

# %%
# Conclusion
# ----------
# A tie is one Parameter object, and the whole training step respects that:
# ``model.to(device)`` keeps the object, autocast casts it for the bf16 multiply and
# returns one fp32 gradient, ``clip_grad_norm_`` over ``model.parameters()`` counts it
# once, and the optimizer keeps one set of moments for it. The first loss sits
# σ²d/2 above ln V because of how the output matrix is initialised, tied or not.
#
# That ends the Learn path. Next, for what can go wrong in training:
# :doc:`/auto_examples/fix_train/plot_optimizer_groups_clipping` (a weight listed
# twice in parameter groups or in clipping), and the :doc:`symptom index </symptoms>`
# for an error message; for time and memory, the :doc:`benchmarks page
# </benchmarks>`.
