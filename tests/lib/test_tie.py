"""tie, untie and retie."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import weightshare as ws


def pair(**kwargs: nn.Module) -> nn.ModuleDict:
    return nn.ModuleDict(kwargs)


def lm(vocab: int = 10, dim: int = 4) -> nn.ModuleDict:
    return pair(emb=nn.Embedding(vocab, dim), head=nn.Linear(dim, vocab, bias=False))


# --- tie ------------------------------------------------------------------------------


def test_tie_source_values_survive() -> None:
    model = lm()
    before = model.emb.weight.detach().clone()
    shared = ws.tie(model, "head.weight", "emb.weight")
    assert shared is model.emb.weight is model.head.weight
    assert torch.equal(model.head.weight, before)
    assert ws.shared_groups(model) == [["emb.weight", "head.weight"]]


def test_tie_gradients_accumulate_in_one_grad() -> None:
    model = lm()
    ws.tie(model, "head.weight", "emb.weight")
    model.head(model.emb(torch.tensor([1, 2]))).sum().backward()
    assert model.head.weight.grad is model.emb.weight.grad
    assert sum(1 for _ in model.parameters()) == 1


def test_tie_noop_same_name_and_already_tied() -> None:
    model = lm()
    param = model.emb.weight
    assert ws.tie(model, "emb.weight", "emb.weight") is param
    ws.tie(model, "head.weight", "emb.weight")
    assert ws.tie(model, "head.weight", "emb.weight") is param
    assert ws.tie(model, "emb.weight", "head.weight") is param


def test_tie_only_changes_target_slot() -> None:
    model = pair(a=nn.Linear(2, 2), b=nn.Linear(2, 2), c=nn.Linear(2, 2))
    ws.tie(model, "c.weight", "b.weight")
    ws.tie(model, "b.weight", "a.weight")
    assert ws.shared_groups(model) == [["a.weight", "b.weight"]]


def test_tie_unknown_names() -> None:
    model = lm()
    before = dict(model.named_parameters())
    with pytest.raises(ws.UnknownNameError, match=r"'head\.weigt'; did you mean"):
        ws.tie(model, "head.weigt", "emb.weight")
    with pytest.raises(ws.UnknownNameError, match=r"did you mean 'emb\.weight'"):
        ws.tie(model, "head.weight", "emb.weihgt")
    assert dict(model.named_parameters()) == before


def test_tie_not_a_parameter() -> None:
    model = pair(bn=nn.BatchNorm1d(4), fc=nn.Linear(4, 4))
    with pytest.raises(ws.NotAParameterError, match=r"target='bn.running_mean' is a"):
        ws.tie(model, "bn.running_mean", "bn.weight")
    with pytest.raises(ws.NotAParameterError, match=r"source='bn.running_var' is a"):
        ws.tie(model, "fc.bias", "bn.running_var")


def test_tie_shape_mismatch_suggests_transpose() -> None:
    model = pair(enc=nn.Linear(6, 3), dec=nn.Linear(3, 6))
    with pytest.raises(ws.TieError) as info:
        ws.tie(model, "dec.weight", "enc.weight")
    message = str(info.value)
    assert "'dec.weight'" in message and "'enc.weight'" in message
    assert "(6, 3)" in message and "(3, 6)" in message
    assert "pass transpose=True to tie W and Wᵀ" in message
    assert ws.shared_groups(model) == []


def test_tie_shape_mismatch_without_hint() -> None:
    model = pair(a=nn.Linear(2, 3), b=nn.Linear(2, 4))
    with pytest.raises(ws.TieError, match=r"\(4, 2\).*\(3, 2\); tie only parameters"):
        ws.tie(model, "b.weight", "a.weight")
    with pytest.raises(ws.TieError, match=r"tie only parameters of the same shape"):
        ws.tie(model, "b.bias", "a.weight")


def test_tie_dtype_mismatch() -> None:
    model = pair(a=nn.Linear(2, 2), b=nn.Linear(2, 2).double())
    with pytest.raises(ws.TieError) as info:
        ws.tie(model, "b.weight", "a.weight")
    assert "'b.weight'" in str(info.value) and "'a.weight'" in str(info.value)
    assert "torch.float64" in str(info.value) and "torch.float32" in str(info.value)


def test_tie_device_mismatch() -> None:
    model = pair(a=nn.Linear(2, 2), b=nn.Linear(2, 2, device="meta"))
    with pytest.raises(ws.TieError, match=r"target is on device meta but source.*cpu"):
        ws.tie(model, "b.weight", "a.weight")
    assert not ws.is_tied("a.weight", "b.weight", model)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("frozen", ["target", "source"])
def test_tie_refuses_different_requires_grad(frozen: str, transpose: bool) -> None:
    model = autoencoder() if transpose else lm()
    target, source = ("dec.weight", "enc.weight") if transpose else lm_names()
    name = target if frozen == "target" else source
    model.get_parameter(name).requires_grad_(False)
    before = dict(model.named_parameters())
    with pytest.raises(ws.TieError) as info:
        ws.tie(model, target, source, transpose=transpose)
    flags = [frozen != "target", frozen != "source"]
    assert str(info.value) == (
        f"cannot tie target {target!r} to source {source!r}: target has "
        f"requires_grad={flags[0]} but source has requires_grad={flags[1]}, and a "
        "tie is one Parameter with one flag; set the one you want on both first: "
        "call .requires_grad_(False) on both to freeze the tie, or "
        ".requires_grad_(True) on both to train it"
    )
    assert dict(model.named_parameters()) == before
    model.get_parameter(target).requires_grad_(False)
    model.get_parameter(source).requires_grad_(False)
    shared = ws.tie(model, target, source, transpose=transpose)
    assert not shared.requires_grad and ws.shared_groups(model)


def lm_names() -> tuple[str, str]:
    return "head.weight", "emb.weight"


def test_tie_on_meta_device() -> None:
    with torch.device("meta"):
        model = lm(1000, 16)
    ws.tie(model, "head.weight", "emb.weight")
    assert ws.shared_groups(model) == [["emb.weight", "head.weight"]]


# --- tie(transpose=True) --------------------------------------------------------------


def autoencoder() -> nn.ModuleDict:
    return pair(enc=nn.Linear(6, 3), dec=nn.Linear(3, 6))


def test_tie_transpose() -> None:
    model = autoencoder()
    enc = model.enc.weight
    assert ws.tie(model, "dec.weight", "enc.weight", transpose=True) is enc
    assert ws.shared_groups(model) == [
        ["enc.weight", "dec.parametrizations.weight.original"]
    ]
    assert model.dec.parametrizations.weight.original is enc
    assert torch.equal(model.dec.weight, enc.T)
    assert enc.shape == (3, 6)


def test_tie_transpose_gradients_share_one_grad() -> None:
    model = autoencoder()
    ws.tie(model, "dec.weight", "enc.weight", transpose=True)
    model.dec(model.enc(torch.randn(4, 6))).pow(2).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert len(grads) == 3  # enc.weight, enc.bias, dec.bias
    assert model.enc.weight.grad is not None


def test_tie_transpose_noop_when_already_tied() -> None:
    model = autoencoder()
    enc = model.enc.weight
    ws.tie(model, "dec.weight", "enc.weight", transpose=True)
    assert ws.tie(model, "dec.weight", "enc.weight", transpose=True) is enc
    original = "dec.parametrizations.weight.original"
    assert ws.tie(model, original, "enc.weight", transpose=True) is enc
    assert len(model.dec.parametrizations.weight) == 1


def test_tie_transpose_to_other_source_needs_untie() -> None:
    model = pair(enc=nn.Linear(6, 3), dec=nn.Linear(3, 6), enc2=nn.Linear(6, 3))
    ws.tie(model, "dec.weight", "enc.weight", transpose=True)
    with pytest.raises(ws.TieError) as info:
        ws.tie(model, "dec.weight", "enc2.weight", transpose=True)
    assert "already tied to the transpose of 'enc.weight'" in str(info.value)
    assert "weightshare.untie(model, 'dec.weight') first" in str(info.value)
    assert model.dec.parametrizations.weight.original is model.enc.weight
    ws.untie(model, "dec.weight")
    ws.tie(model, "dec.weight", "enc2.weight", transpose=True)
    assert ws.shared_groups(model) == [
        ["dec.parametrizations.weight.original", "enc2.weight"]
    ]


def test_tie_transpose_failure_restores_target(monkeypatch: pytest.MonkeyPatch) -> None:
    model = autoencoder()
    before = model.dec.weight

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("cannot parametrize")

    monkeypatch.setattr(parametrize, "register_parametrization", fail)
    with pytest.raises(RuntimeError, match="cannot parametrize"):
        ws.tie(model, "dec.weight", "enc.weight", transpose=True)
    assert model.dec.weight is before


def test_tie_transpose_errors() -> None:
    model = pair(enc=nn.Linear(6, 3), dec=nn.Linear(3, 6), same=nn.Linear(6, 3))
    with pytest.raises(ws.TieError, match=r"the shapes match as they are: pass"):
        ws.tie(model, "same.weight", "enc.weight", transpose=True)
    with pytest.raises(ws.TieError, match=r"needs a 2-D source.*\(3,\)"):
        ws.tie(model, "dec.bias", "enc.bias", transpose=True)
    with pytest.raises(ws.TieError, match=r"transpose of itself"):
        ws.tie(model, "enc.weight", "enc.weight", transpose=True)
    assert ws.shared_groups(model) == []


def test_tie_transpose_square_and_assignment_through_target() -> None:
    model = pair(a=nn.Linear(3, 3, bias=False), b=nn.Linear(3, 3, bias=False))
    ws.tie(model, "b.weight", "a.weight", transpose=True)
    value = torch.arange(9.0).reshape(3, 3)
    with torch.no_grad():
        model.b.weight = value
    assert torch.equal(model.a.weight, value.T)
    assert ws.shared_groups(model) == [
        ["a.weight", "b.parametrizations.weight.original"]
    ]


def test_tie_transpose_on_meta() -> None:
    with torch.device("meta"):
        model = autoencoder()
    ws.tie(model, "dec.weight", "enc.weight", transpose=True)
    assert model.dec.weight.shape == (6, 3)
    assert ws.shared_groups(model) == [
        ["enc.weight", "dec.parametrizations.weight.original"]
    ]


# --- untie ----------------------------------------------------------------------------


def test_untie_gives_independent_copy() -> None:
    model = lm()
    ws.tie(model, "head.weight", "emb.weight")
    model.emb.weight.requires_grad_(False)
    new = ws.untie(model, "head.weight")
    assert new is model.head.weight and new is not model.emb.weight
    assert torch.equal(new, model.emb.weight)
    assert not new.requires_grad
    assert new.untyped_storage()._cdata != model.emb.weight.untyped_storage()._cdata
    assert ws.shared_groups(model) == []


def test_untie_not_shared_is_noop() -> None:
    model = lm()
    param = model.head.weight
    assert ws.untie(model, "head.weight") is param


def test_untie_on_meta() -> None:
    with torch.device("meta"):
        model = lm()
    ws.tie(model, "head.weight", "emb.weight")
    assert ws.untie(model, "emb.weight").is_meta
    assert ws.shared_groups(model) == []


def test_untie_errors() -> None:
    model = pair(bn=nn.BatchNorm1d(2))
    with pytest.raises(ws.UnknownNameError, match=r"did you mean 'bn.weight'"):
        ws.untie(model, "bn.weihgt")
    with pytest.raises(ws.NotAParameterError, match=r"name='bn.running_mean'"):
        ws.untie(model, "bn.running_mean")


def saves_like_never_tied(model: nn.ModuleDict) -> None:
    """``model`` has the state dict of an autoencoder that was never tied."""
    never = autoencoder()
    state = model.state_dict()  # the order of keys may differ: it means nothing
    assert {k: v.shape for k, v in state.items()} == {
        k: v.shape for k, v in never.state_dict().items()
    }
    assert type(model.enc) is nn.Linear and type(model.dec) is nn.Linear
    assert ws.shared_groups(model) == [] and ws.storage_aliases(model) == []
    never.load_state_dict(state)  # strict: same keys, same shapes
    assert all(torch.equal(state[k], v) for k, v in never.state_dict().items())


@pytest.mark.parametrize(
    "name", ["enc.weight", "dec.weight", "dec.parametrizations.weight.original"]
)
def test_untie_transposed_by_either_name_unties_both(name: str) -> None:
    model = autoencoder()
    enc = model.enc.weight
    ws.tie(model, "dec.weight", "enc.weight", transpose=True)
    new = ws.untie(model, name)
    # The parameter now at the name given (dec's: the parametrization is gone).
    assert new is (model.enc.weight if name == "enc.weight" else model.dec.weight)
    assert model.enc.weight is enc and enc.shape == (3, 6)  # the source keeps its own
    dec = model.dec.weight
    assert isinstance(dec, nn.Parameter) and dec.shape == (6, 3)
    assert torch.equal(dec, enc.T) and dec.is_contiguous()
    saves_like_never_tied(model)
    with torch.no_grad():
        dec.zero_()
    assert enc.abs().sum() > 0  # separate from now on
    for plain in ("enc.weight", "dec.weight"):  # plain and unshared: nothing to do
        param = model.get_parameter(plain)
        assert ws.untie(model, plain) is param


def test_untie_a_source_tied_to_two_transposes_frees_both() -> None:
    model = pair(enc=nn.Linear(6, 3), dec=nn.Linear(3, 6), out=nn.Linear(3, 6))
    ws.tie(model, "dec.weight", "enc.weight", transpose=True)
    ws.tie(model, "out.weight", "enc.weight", transpose=True)
    assert ws.untie(model, "enc.weight") is model.enc.weight
    assert all(type(m) is nn.Linear for m in model.values())
    assert sorted(model.state_dict()) == sorted(
        f"{m}.{p}" for m in ("enc", "dec", "out") for p in ("weight", "bias")
    )
    assert ws.shared_groups(model) == []


def test_untie_a_source_whose_transpose_is_reused_at_two_places() -> None:
    model = autoencoder()
    ws.tie(model, "dec.weight", "enc.weight", transpose=True)
    model["again"] = model.dec  # one module, two names
    ws.untie(model, "enc.weight")
    assert type(model.dec) is nn.Linear and model.again is model.dec
    # What remains shared is the reuse of dec itself, not the transposed tie.
    assert sorted(ws.shared_groups(model)) == [
        ["dec.bias", "again.bias"],
        ["dec.weight", "again.weight"],
    ]


def test_untie_a_source_also_tied_plainly_keeps_the_transposed_tie() -> None:
    # enc.weight is one Parameter with mirror.weight, and dec.weight is its transpose:
    # untying enc.weight gives enc its own copy; mirror and dec stay tied.
    model = pair(enc=nn.Linear(6, 3), mirror=nn.Linear(6, 3), dec=nn.Linear(3, 6))
    ws.tie(model, "mirror.weight", "enc.weight")
    ws.tie(model, "dec.weight", "enc.weight", transpose=True)
    shared = model.enc.weight
    own = ws.untie(model, "enc.weight")
    assert own is model.enc.weight and own is not shared
    assert model.mirror.weight is shared
    assert ws.shared_groups(model) == [
        ["mirror.weight", "dec.parametrizations.weight.original"]
    ]


def test_untie_other_parametrization_is_plain_untie() -> None:
    model = pair(a=nn.Linear(3, 3), b=nn.Linear(3, 3))
    torch.nn.utils.parametrizations.weight_norm(model.b)
    name = "b.parametrizations.weight.original1"
    ws.tie(model, name, "a.weight")
    assert ws.shared_groups(model) == [["a.weight", name]]
    ws.untie(model, name)
    assert ws.shared_groups(model) == []
    assert hasattr(model.b, "parametrizations")


# --- retie ----------------------------------------------------------------------------


def test_retie_first_name_survives() -> None:
    model = pair(a=nn.Linear(2, 2), b=nn.Linear(2, 2), c=nn.Linear(2, 2))
    first = model.a.weight
    ws.retie(model, [("a.weight", "b.weight", "c.weight"), ["b.bias", "a.bias"]])
    assert model.b.weight is first and model.c.weight is first
    assert model.a.bias is model.b.bias
    assert ws.shared_groups(model) == [
        ["a.weight", "b.weight", "c.weight"],
        ["a.bias", "b.bias"],
    ]


def test_retie_empty_and_singleton_groups() -> None:
    model = lm()
    ws.retie(model, [])
    ws.retie(model, [[], ["emb.weight"]])
    assert ws.shared_groups(model) == []


def test_retie_validates_everything_first() -> None:
    model = pair(a=nn.Linear(2, 2), b=nn.Linear(2, 2), c=nn.Linear(2, 3))
    before = {n: p for n, p in model.named_parameters()}
    with pytest.raises(ws.TieError) as info:
        ws.retie(model, [["a.weight", "b.weight"], ["a.weight", "c.weight"]])
    assert "'c.weight'" in str(info.value) and "'a.weight'" in str(info.value)
    assert "(3, 2)" in str(info.value) and "(2, 2)" in str(info.value)
    with pytest.raises(ws.UnknownNameError, match=r"did you mean 'c.bias'"):
        ws.retie(model, [["a.weight", "b.weight"], ["a.bias", "c.biaz"]])
    assert dict(model.named_parameters()) == before
    assert ws.shared_groups(model) == []


def test_retie_repairs_a_submodule_replaced_by_its_deep_copy() -> None:
    model = lm()
    ws.tie(model, "head.weight", "emb.weight")
    groups = ws.shared_groups(model)
    assert ws.shared_groups(copy.deepcopy(model)) == groups  # whole model: kept
    model.head = copy.deepcopy(model.head)  # one submodule: its own copy
    assert ws.shared_groups(model) == []
    ws.retie(model, groups)
    assert model.head.weight is model.emb.weight


def test_retie_refuses_different_requires_grad() -> None:
    model = pair(a=nn.Linear(2, 2), b=nn.Linear(2, 2))
    model.b.weight.requires_grad_(False)
    with pytest.raises(ws.TieError, match=r"requires_grad=False .* requires_grad=True"):
        ws.retie(model, [["a.weight", "b.weight"]])
    assert ws.shared_groups(model) == []


def test_retie_rejects_a_bare_string_group() -> None:
    with pytest.raises(TypeError, match=r"wrap it"):
        ws.retie(lm(), ["emb.weight"])


def test_names_must_be_strings() -> None:
    with pytest.raises(TypeError, match=r"target must be a str, got int"):
        ws.tie(lm(), 3, "emb.weight")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "returned"),
    [
        ("enc.weight", "enc.weight"),
        ("dec.weight", "dec.weight"),
        ("dec.parametrizations.weight.original", "dec.weight"),
    ],
)
def test_untie_transposed_as_if_never_tied(name: str, returned: str) -> None:
    # Review of issue 20: the docstring said every name returns dec.weight.
    def fresh() -> nn.ModuleDict:
        torch.manual_seed(0)
        return nn.ModuleDict({"enc": nn.Linear(6, 3), "dec": nn.Linear(3, 6)})

    model = fresh()
    ws.tie(model, "dec.weight", "enc.weight", transpose=True)
    enc_before = model.enc.weight.detach().clone()
    new = ws.untie(model, name)
    assert new is model.get_parameter(returned)
    assert torch.equal(model.enc.weight, enc_before)  # the source keeps its values
    assert torch.equal(model.dec.weight, enc_before.T)
    fresh().load_state_dict(model.state_dict(), strict=True)
    torch.optim.SGD(model.parameters(), lr=0.1).zero_grad()
    model.dec(model.enc(torch.randn(2, 6))).sum().backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(model.dec.weight, model.enc.weight.T)  # now independent


@pytest.mark.parametrize("name", ["a.weight", "b.weight", "c.weight"])
def test_untie_one_of_three(name: str) -> None:
    model = nn.ModuleDict({k: nn.Linear(4, 4) for k in "abc"})
    ws.tie(model, "b.weight", "a.weight")
    ws.tie(model, "c.weight", "a.weight")
    value = model.a.weight.detach().clone()
    ws.untie(model, name)
    rest = [f"{k}.weight" for k in "abc" if f"{k}.weight" != name]
    assert ws.shared_groups(model) == [rest]
    assert all(torch.equal(model.get_parameter(f"{k}.weight"), value) for k in "abc")
    nn.ModuleDict({k: nn.Linear(4, 4) for k in "abc"}).load_state_dict(
        model.state_dict(), strict=True
    )
    model.get_submodule(name.partition(".")[0])(torch.ones(1, 4)).sum().backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(model.get_parameter(name), model.get_parameter(rest[0]))
    assert torch.equal(model.get_parameter(rest[0]), model.get_parameter(rest[1]))
