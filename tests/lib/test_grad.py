"""grad_contributions: per-use gradients that sum to the ordinary .grad."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close
from torch.utils.checkpoint import checkpoint

import weightshare as ws


def ordinary_grad(
    model: nn.Module, param: nn.Parameter, loss_fn: Callable[[], torch.Tensor]
) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    assert param.grad is not None
    grad = param.grad.clone()
    model.zero_grad(set_to_none=True)
    return grad


def assert_sums_to_grad(
    model: nn.Module,
    parts: dict[str, torch.Tensor],
    param: nn.Parameter,
    loss_fn: Callable[[], torch.Tensor],
) -> None:
    total = torch.stack(list(parts.values())).sum(0)
    assert_close(total, ordinary_grad(model, param, loss_fn))


def snapshot(model: nn.Module) -> list[tuple[str, str, object]]:
    """Every parameter slot and hook dict, by identity."""
    slots = [
        (name, attr, id(p))
        for name, module in model.named_modules()
        for attr, p in module._parameters.items()
    ]
    hooks = [
        (name, kind, len(getattr(module, kind)))
        for name, module in model.named_modules()
        for kind in ("_forward_pre_hooks", "_forward_hooks")
    ]
    return slots + hooks  # type: ignore[operator]


# --- (a) two Linear(1, 1) sharing one weight ------------------------------------------


def two_layer() -> tuple[nn.Module, nn.Parameter]:
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(1, 1))
    model.add_module("fc2", nn.Linear(1, 1))
    w = nn.Parameter(torch.tensor([[2.0]]))
    model.fc1.weight = w
    model.fc2.weight = w
    with torch.no_grad():
        model.fc1.bias.fill_(2.0)
        model.fc2.bias.fill_(4.0)
    return model, w


def test_two_layer_example() -> None:
    model, w = two_layer()
    x = torch.tensor([1.0])

    def loss_fn() -> torch.Tensor:
        out = model(x)
        return out.sum()

    assert loss_fn().item() == 12.0
    parts = ws.grad_contributions(model, w, loss_fn)
    assert list(parts) == ["fc1", "fc2"]
    assert_close(parts["fc1"], torch.tensor([[2.0]]))  # w_fc2 * x
    assert_close(parts["fc2"], torch.tensor([[4.0]]))  # output of fc1
    assert_sums_to_grad(model, parts, w, loss_fn)
    assert_close(ordinary_grad(model, w, loss_fn), torch.tensor([[6.0]]))


def test_by_name_and_under_no_grad() -> None:
    model, _ = two_layer()
    x = torch.tensor([1.0])
    with torch.no_grad():
        parts = ws.grad_contributions(model, "fc2.weight", lambda: model(x).sum())
    assert {k: v.item() for k, v in parts.items()} == {"fc1": 2.0, "fc2": 4.0}


def test_leaves_grad_and_model_untouched() -> None:
    model, w = two_layer()
    marker = torch.full_like(w, 7.0)
    w.grad = marker
    before = snapshot(model)
    ws.grad_contributions(model, w, lambda: model(torch.tensor([1.0])).sum())
    assert w.grad is marker and torch.equal(marker, torch.full_like(w, 7.0))
    assert model.fc1.bias.grad is None
    assert snapshot(model) == before
    assert model.fc1._parameters["weight"] is w and model.fc2.weight is w


def test_loss_fn_raising_leaves_model_as_found() -> None:
    model, w = two_layer()
    before = snapshot(model)

    def loss_fn() -> torch.Tensor:
        model.fc1(torch.tensor([1.0]))
        raise KeyError("boom")

    with pytest.raises(KeyError, match=r"boom"):
        ws.grad_contributions(model, w, loss_fn)
    assert snapshot(model) == before
    assert w.grad is None
    assert type(model.fc1.weight) is nn.Parameter


def test_forward_raising_inside_holder_leaves_model_as_found() -> None:
    model, w = two_layer()
    before = snapshot(model)
    with pytest.raises(RuntimeError):
        ws.grad_contributions(model, w, lambda: model(torch.ones(3)).sum())
    assert snapshot(model) == before


# --- (b) Siamese: one encoder called twice, two tied towers ---------------------------


class Siamese(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(3, 5)
        self.tower_a = nn.Linear(5, 2)
        self.tower_b = nn.Linear(5, 2)
        self.tower_b.weight = self.tower_a.weight

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        a = self.tower_a(torch.tanh(self.encoder(x1)))
        b = self.tower_b(torch.tanh(self.encoder(x2)))
        return (a - b).pow(2).sum() + a.sum()


def test_siamese_encoder_called_twice() -> None:
    torch.manual_seed(0)
    model = Siamese()
    x1, x2 = torch.randn(4, 3), torch.randn(4, 3)
    param = model.encoder.weight

    def loss_fn() -> torch.Tensor:
        return model(x1, x2)

    parts = ws.grad_contributions(model, param, loss_fn)
    assert list(parts) == ["encoder[0]", "encoder[1]"]
    assert not torch.equal(parts["encoder[0]"], parts["encoder[1]"])
    assert_sums_to_grad(model, parts, param, loss_fn)


def test_siamese_nested_holder() -> None:
    torch.manual_seed(0)
    model = Siamese()
    model.encoder = nn.Sequential(nn.Linear(3, 5))
    x1, x2 = torch.randn(4, 3), torch.randn(4, 3)

    def loss_fn() -> torch.Tensor:
        return model(x1, x2)

    parts = ws.grad_contributions(model, "encoder.0.weight", loss_fn)
    assert list(parts) == ["encoder.0[0]", "encoder.0[1]"]
    assert_sums_to_grad(model, parts, model.encoder[0].weight, loss_fn)


def test_siamese_tied_towers() -> None:
    torch.manual_seed(0)
    model = Siamese()
    x1, x2 = torch.randn(4, 3), torch.randn(4, 3)

    def loss_fn() -> torch.Tensor:
        return model(x1, x2)

    parts = ws.grad_contributions(model, "tower_b.weight", loss_fn)
    assert list(parts) == ["tower_a", "tower_b"]
    assert_sums_to_grad(model, parts, model.tower_a.weight, loss_fn)


# --- (c) three-way tied Transformer ---------------------------------------------


class TiedTransformer(nn.Module):
    def __init__(self, vocab: int = 13, dim: int = 8) -> None:
        super().__init__()
        self.encoder_embedding = nn.Embedding(vocab, dim)
        self.decoder_embedding = nn.Embedding(vocab, dim)
        self.transformer = nn.Transformer(
            d_model=dim,
            nhead=2,
            num_encoder_layers=1,
            num_decoder_layers=1,
            dim_feedforward=16,
            dropout=0.0,
            batch_first=True,
        )
        self.generator = nn.Linear(dim, vocab, bias=False)
        self.decoder_embedding.weight = self.encoder_embedding.weight
        self.generator.weight = self.encoder_embedding.weight

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        memory = self.encoder_embedding(src)
        hidden = self.transformer(memory, self.decoder_embedding(tgt))
        return self.generator(hidden)


def test_three_way_tied_transformer() -> None:
    torch.manual_seed(0)
    model = TiedTransformer()
    assert ws.shared_groups(model) == [
        ["encoder_embedding.weight", "decoder_embedding.weight", "generator.weight"]
    ]
    src, tgt = torch.randint(0, 13, (2, 5)), torch.randint(0, 13, (2, 4))
    labels = torch.randint(0, 13, (2, 4))

    def loss_fn() -> torch.Tensor:
        logits = model(src, tgt)
        return F.cross_entropy(logits.reshape(-1, 13), labels.reshape(-1))

    param = model.generator.weight
    parts = ws.grad_contributions(model, param, loss_fn)
    assert list(parts) == ["encoder_embedding", "decoder_embedding", "generator"]
    assert all(v.shape == (13, 8) and v.abs().sum() > 0 for v in parts.values())
    assert_sums_to_grad(model, parts, param, loss_fn)


# --- direct uses ----------------------------------------------------------------------


class DirectLM(nn.Module):
    """Output projection written as F.linear(h, self.emb.weight) in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.tanh(self.proj(self.emb(x))), self.emb.weight)


def test_direct_use_reported() -> None:
    torch.manual_seed(0)
    model = DirectLM()
    x = torch.tensor([[1, 2, 3]])

    def loss_fn() -> torch.Tensor:
        return F.cross_entropy(model(x)[0], torch.tensor([2, 3, 4]))

    parts = ws.grad_contributions(model, "emb.weight", loss_fn)
    assert list(parts) == ["emb", "(direct)"]
    assert parts["(direct)"].abs().sum() > 0
    assert_sums_to_grad(model, parts, model.emb.weight, loss_fn)


def test_direct_use_through_reference_taken_before() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict({"emb": nn.Embedding(7, 4)})
    weight = model.emb.weight
    x = torch.tensor([1, 2])

    def loss_fn() -> torch.Tensor:
        return F.linear(model.emb(x), weight).pow(2).sum()

    parts = ws.grad_contributions(model, weight, loss_fn)
    assert list(parts) == ["emb", "(direct)"]
    assert_sums_to_grad(model, parts, weight, loss_fn)


def test_only_direct_use() -> None:
    model = nn.ModuleDict({"emb": nn.Embedding(3, 2)})
    parts = ws.grad_contributions(
        model, "emb.weight", lambda: model.emb.weight.pow(2).sum()
    )
    assert list(parts) == ["(direct)"]
    assert_close(parts["(direct)"], 2 * model.emb.weight.detach())


def test_no_direct_key_when_all_uses_are_calls() -> None:
    torch.manual_seed(0)
    model = TiedTransformer()
    src = torch.randint(0, 13, (2, 5))

    def loss_fn() -> torch.Tensor:
        return model(src, src).sum()

    assert "(direct)" not in ws.grad_contributions(model, "generator.weight", loss_fn)


def test_direct_use_with_zero_gradient_is_left_out() -> None:
    model = nn.ModuleDict({"fc": nn.Linear(2, 2)})
    x = torch.ones(2)

    def loss_fn() -> torch.Tensor:
        return model.fc(x).sum() + 0.0 * model.fc.weight.sum()

    assert list(ws.grad_contributions(model, "fc.weight", loss_fn)) == ["fc"]


# --- other holders --------------------------------------------------------------------


def test_root_holder() -> None:
    model = nn.Linear(2, 1)
    x = torch.ones(2)
    parts = ws.grad_contributions(model, "weight", lambda: model(x).sum())
    assert list(parts) == ["(root)"]
    assert_close(parts["(root)"], torch.ones(1, 2))


def test_transposed_tie_holder_is_the_module() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict({"enc": nn.Linear(6, 3), "dec": nn.Linear(3, 6)})
    ws.tie(model, "dec.weight", "enc.weight", transpose=True)
    x = torch.randn(4, 6)

    def loss_fn() -> torch.Tensor:
        return (model.dec(torch.relu(model.enc(x))) - x).pow(2).mean()

    before = snapshot(model)
    parts = ws.grad_contributions(model, "enc.weight", loss_fn)
    assert list(parts) == ["enc", "dec"]
    assert snapshot(model) == before
    assert_sums_to_grad(model, parts, model.enc.weight, loss_fn)


def test_parametrized_at_root_reports_root() -> None:
    model = nn.Linear(3, 3, bias=False)
    torch.nn.utils.parametrizations.weight_norm(model)
    x = torch.ones(3)
    parts = ws.grad_contributions(
        model, "parametrizations.weight.original1", lambda: model(x).sum()
    )
    assert list(parts) == ["(root)"]


def test_unused_call_gives_zeros() -> None:
    model, w = two_layer()
    x = torch.tensor([1.0])

    def loss_fn() -> torch.Tensor:
        model.fc1(x)  # called, but its output is thrown away
        return model.fc2(x).sum()

    parts = ws.grad_contributions(model, w, loss_fn)
    assert list(parts) == ["fc1", "fc2"]
    assert torch.equal(parts["fc1"], torch.zeros(1, 1))
    assert_sums_to_grad(model, parts, w, loss_fn)


# --- errors ---------------------------------------------------------------------------


def test_loss_not_scalar() -> None:
    model, w = two_layer()
    with pytest.raises(TypeError) as info:
        ws.grad_contributions(model, w, lambda: model(torch.ones(3, 1)))
    assert "loss_fn must return a scalar tensor that depends on 'fc1.weight'" in str(
        info.value
    )
    assert "(3, 1)" in str(info.value)


def test_loss_without_grad_fn() -> None:
    model, w = two_layer()
    with pytest.raises(TypeError, match=r"depends on 'fc1.weight'.*without grad_fn"):
        ws.grad_contributions(model, w, lambda: model(torch.ones(1)).sum().detach())


def test_loss_not_a_tensor() -> None:
    model, w = two_layer()
    with pytest.raises(TypeError, match=r"it returned a float"):
        ws.grad_contributions(model, w, lambda: 1.0)  # type: ignore[arg-type,return-value]


def test_loss_does_not_depend_on_param() -> None:
    model = nn.ModuleDict({"a": nn.Linear(1, 1), "b": nn.Linear(1, 1)})
    with pytest.raises(TypeError, match=r"depends on 'a.weight'; the loss it returned"):
        ws.grad_contributions(model, "a.weight", lambda: model.b(torch.ones(1)).sum())


def test_param_not_in_model() -> None:
    model, _ = two_layer()
    stranger = nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"shape \(2, 2\)\) is not a parameter of"):
        ws.grad_contributions(model, stranger, lambda: stranger.sum())
    with pytest.raises(ws.UnknownNameError, match=r"did you mean 'fc1.weight'"):
        ws.grad_contributions(model, "fc1.weigt", lambda: stranger.sum())
    with pytest.raises(TypeError, match=r"param must be a Parameter or a name"):
        ws.grad_contributions(model, 3, lambda: stranger.sum())  # type: ignore[arg-type]


def test_param_frozen_or_meta() -> None:
    model, w = two_layer()
    w.requires_grad_(False)
    with pytest.raises(ValueError, match=r"'fc1.weight' has requires_grad=False"):
        ws.grad_contributions(model, w, lambda: model(torch.ones(1)).sum())
    meta = nn.Linear(1, 1, device="meta")
    with pytest.raises(ValueError, match=r"'weight' is on the meta device"):
        ws.grad_contributions(meta, "weight", lambda: meta(torch.ones(1)).sum())


def test_empty_parameter() -> None:
    model = nn.ModuleDict({"fc": nn.Linear(1, 2)})
    model.fc.weight = nn.Parameter(torch.zeros(2, 0))
    parts = ws.grad_contributions(
        model, "fc.weight", lambda: model.fc(torch.ones(0)).sum()
    )
    assert list(parts) == ["fc"] and parts["fc"].shape == (2, 0)


# --- the model, its buffers and the random number generators are left as found -------


class BatchNormTwice(nn.Module):
    """One Linear called twice, with BatchNorm (training mode) and dropout between."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.bn(self.fc(x))))


def buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in model.named_buffers()}


def test_batchnorm_running_stats_are_put_back() -> None:
    torch.manual_seed(0)
    model = BatchNormTwice()
    x = torch.randn(8, 4)
    before = buffers(model)
    objects = {name: b for name, b in model.named_buffers()}
    parts = ws.grad_contributions(model, "fc.weight", lambda: model(x).sum())
    assert list(parts) == ["fc[0]", "fc[1]"]
    after = dict(model.named_buffers())
    assert after.keys() == {
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
    }
    for name, value in before.items():
        assert after[name] is objects[name]
        assert after[name].dtype == value.dtype and torch.equal(after[name], value), (
            name
        )
    assert int(model.bn.num_batches_tracked) == 0
    model(x)  # an ordinary forward does change them: the test can fail
    assert int(model.bn.num_batches_tracked) == 1
    assert not torch.equal(model.bn.running_mean, before["bn.running_mean"])


def test_global_rng_restored_so_dropout_repeats() -> None:
    torch.manual_seed(0)
    model = BatchNormTwice()
    x = torch.randn(8, 4)

    def loss_fn() -> torch.Tensor:
        return model(x).pow(2).sum()

    state = torch.get_rng_state()
    parts = ws.grad_contributions(model, "fc.weight", loss_fn)
    assert torch.equal(torch.get_rng_state(), state)
    # The next loss_fn() draws the same dropout masks, and so the same gradient.
    assert_sums_to_grad(model, parts, model.fc.weight, loss_fn)


class ReplacesBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls = self.calls + 1  # a new tensor object in the buffer slot
        return self.fc(x)


def test_replaced_buffer_object_is_put_back() -> None:
    model = ReplacesBuffer()
    calls = model.calls
    ws.grad_contributions(model, "fc.weight", lambda: model(torch.ones(2)).sum())
    assert model.calls is calls and int(calls) == 0


def test_buffers_put_back_when_loss_fn_raises() -> None:
    torch.manual_seed(0)
    model = BatchNormTwice()
    before = buffers(model)

    def loss_fn() -> torch.Tensor:
        model(torch.randn(8, 4))
        raise KeyError("boom")

    state = torch.get_rng_state()
    with pytest.raises(KeyError, match=r"boom"):
        ws.grad_contributions(model, "fc.weight", loss_fn)
    for name, value in model.named_buffers():
        assert torch.equal(value, before[name]), name
    assert torch.equal(torch.get_rng_state(), state)


def test_eval_mode_buffers_untouched() -> None:
    torch.manual_seed(0)
    model = BatchNormTwice().eval()
    versions = {name: b._version for name, b in model.named_buffers()}
    ws.grad_contributions(model, "fc.weight", lambda: model(torch.randn(8, 4)).sum())
    assert {name: b._version for name, b in model.named_buffers()} == versions


# --- activation checkpointing and inference mode ------------------------------------


def checkpointed(
    reentrant: bool | None,
) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    """A tied pair whose second use runs under checkpoint (None: no checkpoint)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    model[2].weight = model[0].weight
    x = torch.randn(4, 3)

    def loss_fn() -> torch.Tensor:
        h = model[1](model[0](x))
        if reentrant is None:
            return model[2](h).pow(2).sum()
        out = checkpoint(model[2], h, use_reentrant=reentrant)
        return out.pow(2).sum()

    return model, loss_fn


def test_non_reentrant_checkpoint_splits_like_no_checkpoint() -> None:
    model, loss_fn = checkpointed(reentrant=False)
    parts = ws.grad_contributions(model, "0.weight", loss_fn)
    assert list(parts) == ["0", "2"]
    assert_sums_to_grad(model, parts, model[0].weight, loss_fn)
    plain_model, plain_loss = checkpointed(reentrant=None)
    plain = ws.grad_contributions(plain_model, "0.weight", plain_loss)
    for key, value in plain.items():
        assert_close(parts[key], value)


def test_reentrant_checkpoint_names_use_reentrant_false() -> None:
    model, loss_fn = checkpointed(reentrant=True)
    before = snapshot(model)
    with pytest.raises(RuntimeError) as info:
        ws.grad_contributions(model, "0.weight", loss_fn)
    assert str(info.value) == (
        "cannot split the gradient of '0.weight': loss_fn ran torch.utils.checkpoint "
        "with use_reentrant=True, which does not support torch.autograd.grad (used "
        "here to take one gradient per use); pass use_reentrant=False to "
        "torch.utils.checkpoint.checkpoint"
    )
    assert "use_reentrant=True" in str(info.value.__cause__)
    assert snapshot(model) == before


def test_reentrant_checkpoint_of_the_whole_model_hints_too() -> None:
    model, _ = checkpointed(reentrant=True)
    x = torch.randn(4, 3)
    no_input_grad = r"None of the inputs have requires_grad"
    hint = r"without grad_fn .* use_reentrant=False"
    with (
        pytest.warns(UserWarning, match=no_input_grad),
        pytest.raises(TypeError, match=hint),
    ):
        ws.grad_contributions(
            model, "0.weight", lambda: checkpoint(model, x, use_reentrant=True).sum()
        )


def test_inference_mode_is_refused() -> None:
    model, w = two_layer()
    with torch.inference_mode(), pytest.raises(RuntimeError) as info:
        ws.grad_contributions(model, w, lambda: model(torch.ones(1)).sum())
    assert str(info.value) == (
        "grad_contributions() was called under torch.inference_mode(), where "
        "autograd records nothing (torch.enable_grad() does not lift it); call it "
        "outside the inference_mode block"
    )


def test_meta_buffer_slot_kept() -> None:
    model, w = two_layer()
    model.fc1.register_buffer("scale", torch.empty(3, device="meta"))
    scale = model.fc1.scale
    parts = ws.grad_contributions(model, w, lambda: model(torch.ones(1)).sum())
    assert list(parts) == ["fc1", "fc2"] and model.fc1.scale is scale


def test_other_autograd_errors_propagate_unchanged() -> None:
    torch.manual_seed(0)
    model = BatchNormTwice()
    before = buffers(model)

    def loss_fn() -> torch.Tensor:
        out = model(torch.randn(8, 4)).sigmoid()
        loss = out.sum()
        out.mul_(2)  # sigmoid saved its output for backward
        return loss

    with pytest.raises(RuntimeError, match=r"modified by an inplace operation"):
        ws.grad_contributions(model, "fc.weight", loss_fn)
    for name, value in model.named_buffers():
        assert torch.equal(value, before[name]), name
