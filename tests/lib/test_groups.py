"""shared_groups, storage_aliases, is_tied, count_parameters and name lookup."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable

import pytest
import torch
from torch import nn

import weightshare as ws


class TinyLM(nn.Module):
    """GPT-2 style: input embedding tied to the output projection."""

    def __init__(self, vocab: int = 10, dim: int = 4) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight


def three_groups() -> nn.Module:
    model = nn.Sequential(*[nn.Linear(3, 3) for _ in range(5)])
    model[3].weight = model[1].weight
    model[4].bias = model[0].bias
    model[2].weight = model[1].weight
    return model


# --- shared_groups --------------------------------------------------------------------


def test_shared_groups_tiny_lm() -> None:
    assert ws.shared_groups(TinyLM()) == [["wte.weight", "lm_head.weight"]]


def test_shared_groups_none() -> None:
    assert ws.shared_groups(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))) == []


def test_shared_groups_order_follows_named_parameters() -> None:
    assert ws.shared_groups(three_groups()) == [
        ["0.bias", "4.bias"],
        ["1.weight", "2.weight", "3.weight"],
    ]


def test_shared_groups_shared_submodule() -> None:
    shared = nn.Linear(2, 2)
    model = nn.ModuleDict({"a": shared, "b": shared})
    assert ws.shared_groups(model) == [["a.weight", "b.weight"], ["a.bias", "b.bias"]]


def test_shared_groups_meta_device() -> None:
    with torch.device("meta"):
        model = TinyLM(50_000, 64)
    assert model.wte.weight.is_meta
    assert ws.shared_groups(model) == [["wte.weight", "lm_head.weight"]]


def test_shared_groups_nn_transformer_has_no_ties() -> None:
    model = nn.Transformer(
        d_model=8,
        nhead=2,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=16,
        batch_first=True,
    )
    assert ws.shared_groups(model) == []
    assert ws.storage_aliases(model) == []
    count = ws.count_parameters(model)
    assert count.unique == sum(p.numel() for p in model.parameters())
    assert count.saved_by_sharing == 0


def test_shared_groups_nn_transformer_meta_with_tied_embeddings() -> None:
    with torch.device("meta"):
        model = nn.ModuleDict(
            {
                "src_emb": nn.Embedding(30, 8),
                "tgt_emb": nn.Embedding(30, 8),
                "core": nn.Transformer(8, 2, 1, 1, 16, batch_first=True),
                "generator": nn.Linear(8, 30, bias=False),
            }
        )
    ws.tie(model, "tgt_emb.weight", "src_emb.weight")
    ws.tie(model, "generator.weight", "src_emb.weight")
    assert ws.shared_groups(model) == [
        ["src_emb.weight", "tgt_emb.weight", "generator.weight"]
    ]
    count = ws.count_parameters(model)
    assert count.saved_by_sharing == 2 * 30 * 8


# --- storage_aliases ------------------------------------------------------------------


def aliased(device: str) -> nn.Module:
    with torch.device(device):
        model = nn.ModuleDict(
            {
                "enc": nn.Linear(3, 4),
                "dec": nn.Linear(4, 3),
                "copy": nn.Linear(3, 4),
                "other": nn.Linear(3, 4),
            }
        )
    model.dec.weight = nn.Parameter(model.enc.weight.data.t())
    model.copy.weight.data = model.enc.weight.data
    return model


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_storage_aliases_views_and_data_assignment(device: str) -> None:
    model = aliased(device)
    assert ws.storage_aliases(model) == [["enc.weight", "dec.weight", "copy.weight"]]
    assert ws.shared_groups(model) == []


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_storage_aliases_disjoint_slices_do_not_alias(device: str) -> None:
    with torch.device(device):
        base = torch.zeros(4, 3)
    model = nn.Module()
    model.top = nn.Parameter(base[:2])
    model.bottom = nn.Parameter(base[2:])
    model.middle = nn.Parameter(base[1:3])
    model.alone = nn.Parameter(torch.zeros(2, device=device))
    assert ws.storage_aliases(model) == [["top", "bottom", "middle"]]
    model.middle = nn.Parameter(torch.zeros(2, 3, device=device))
    assert ws.storage_aliases(model) == []


def test_storage_aliases_true_tie_counts_once() -> None:
    model = TinyLM()
    assert ws.storage_aliases(model) == []
    model.extra = nn.Parameter(model.wte.weight.data[0])
    assert ws.storage_aliases(model) == [["extra", "wte.weight"]]  # root first


def test_storage_aliases_ignores_empty_and_sparse() -> None:
    model = nn.Module()
    base = torch.zeros(0, 3)
    model.a = nn.Parameter(base)
    model.b = nn.Parameter(base.view(3, 0))
    model.s = nn.Parameter(torch.eye(2).to_sparse())
    assert ws.storage_aliases(model) == []


# --- is_tied --------------------------------------------------------------------------


def test_is_tied_names_and_tensors() -> None:
    model = TinyLM()
    assert ws.is_tied("wte.weight", "lm_head.weight", model)
    assert ws.is_tied(model.wte.weight, "lm_head.weight", model)
    assert ws.is_tied(model.wte.weight, model.lm_head.weight)
    assert not ws.is_tied("wte.weight", "norm.weight", model)
    clone = nn.Parameter(model.wte.weight.detach().clone())
    assert not ws.is_tied(model.wte.weight, clone)


def test_is_tied_name_without_model() -> None:
    with pytest.raises(TypeError, match=r"no model to look it up in; pass model="):
        ws.is_tied("wte.weight", torch.zeros(1))


def test_is_tied_wrong_type() -> None:
    with pytest.raises(TypeError, match=r"b must be a tensor or a name, got int"):
        ws.is_tied(torch.zeros(1), 3)  # type: ignore[arg-type]


# --- name lookup errors ---------------------------------------------------------------


def test_unknown_name_suggests_close_match() -> None:
    model = TinyLM()
    with pytest.raises(ws.UnknownNameError) as info:
        ws.is_tied("lm_head.weigth", "wte.weight", model)  # codespell:ignore
    assert str(info.value) == (
        "model has no parameter 'lm_head.weigth'; "  # codespell:ignore
        "did you mean 'lm_head.weight'?"
    )
    assert info.value.name == "lm_head.weigth"  # codespell:ignore
    assert info.value.suggestions == ["lm_head.weight"]
    assert isinstance(info.value, ValueError)


def test_unknown_name_up_to_three_suggestions() -> None:
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(4)])
    with pytest.raises(ws.UnknownNameError) as info:
        ws.is_tied("1.weigh", "0.weight", model)
    assert len(info.value.suggestions) == 3
    assert "did you mean '1.weight', " in str(info.value)
    assert " or '" in str(info.value)


def test_unknown_name_without_close_match() -> None:
    with pytest.raises(ws.UnknownNameError, match=r"see model.named_parameters"):
        ws.is_tied("zzz.qqq", "wte.weight", TinyLM())
    with pytest.raises(ws.UnknownNameError, match=r"no parameters at all"):
        ws.is_tied("x", "y", nn.ReLU())
    with pytest.raises(ws.UnknownNameError, match=r"'nothing.here.weight'"):
        ws.is_tied("nothing.here.weight", "wte.weight", TinyLM())


def test_unknown_name_error_pickles() -> None:
    err = ws.UnknownNameError("msg", "a", ["b"])
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.name, again.suggestions) == ("msg", "a", ["b"])


class Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2, bias=False)
        self.bn = nn.BatchNorm1d(2)
        self.plain = torch.zeros(2)
        self.size = 3
        self.weight = nn.Parameter(torch.zeros(2))


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("bn.running_mean", "a buffer of BatchNorm1d 'bn'"),
        ("fc", "a submodule (Linear) of the root Holder"),
        ("plain", "a plain tensor attribute of the root Holder"),
        ("size", "a plain int attribute of the root Holder"),
        ("fc.bias", "registered on Linear 'fc' but set to None"),
    ],
)
def test_not_a_parameter(name: str, what: str) -> None:
    with pytest.raises(ws.NotAParameterError) as info:
        ws.is_tied(name, "weight", Holder())
    assert str(info.value).startswith(f"a={name!r} is {what}, not an nn.Parameter")
    assert isinstance(info.value, TypeError)


def test_not_a_parameter_parametrized() -> None:
    model = Holder()
    torch.nn.utils.parametrizations.weight_norm(model.fc)
    with pytest.raises(ws.NotAParameterError) as info:
        ws.is_tied("weight", "fc.weight", model)
    assert "b='fc.weight' is computed by a parametrization of Linear 'fc'" in str(
        info.value
    )
    assert "'fc.parametrizations.weight.original0' and" in str(info.value)


def test_root_level_parameter_resolves() -> None:
    model = Holder()
    assert ws.is_tied("weight", model.weight, model)


# --- count_parameters -----------------------------------------------------------------


def test_count_parameters_tiny_lm() -> None:
    count = ws.count_parameters(TinyLM(10, 4))
    assert count == ws.ParameterCount(
        unique=40 + 8,
        with_duplicates=40 + 8 + 40,
        state_dict=40 + 8 + 40,
        unique_tensors=3,
        names=4,
    )
    assert count.saved_by_sharing == 40


def test_count_parameters_includes_buffers_in_state_dict() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    count = ws.count_parameters(model)
    assert count.unique == 6 + 4
    assert count.state_dict == 6 + 4 + 2 + 2 + 1
    assert count.saved_by_sharing == 0


def test_count_parameters_meta() -> None:
    with torch.device("meta"):
        model = TinyLM(50_257, 768)
    count = ws.count_parameters(model)
    assert count.unique == 50_257 * 768 + 2 * 768
    assert count.saved_by_sharing == 50_257 * 768


def test_count_parameters_is_frozen() -> None:
    count = ws.count_parameters(TinyLM())
    with pytest.raises(AttributeError):
        count.unique = 0  # type: ignore[misc]


# --- storage_aliases: element overlap of strided views --------------------------------


def views(*tensors: torch.Tensor) -> nn.Module:
    model = nn.Module()
    for i, tensor in enumerate(tensors):
        grad = tensor.is_floating_point()
        model.register_parameter(f"p{i}", nn.Parameter(tensor, requires_grad=grad))
    return model


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("columns", [6, 7])
def test_storage_aliases_interleaved_columns_share_nothing(
    device: str, columns: int
) -> None:
    w = torch.zeros(4, columns, device=device)
    assert ws.storage_aliases(views(w[:, 0::2], w[:, 1::2])) == []
    assert ws.storage_aliases(views(w[:, 0::2], w[:, 1::2], w[1])) == [
        ["p0", "p1", "p2"]
    ]


def test_storage_aliases_interleaved_writes_do_not_show() -> None:
    w = torch.zeros(3, 4)
    even, odd = w[:, 0::2], w[:, 1::2]
    even.fill_(1.0)
    assert odd.abs().sum() == 0
    assert ws.storage_aliases(views(even, odd)) == []


@pytest.mark.parametrize(
    ("make", "aliased"),
    [
        (lambda w: (w, w.t()), True),
        (lambda w: (w[0], w[:, 0]), True),  # share w[0, 0] only
        (lambda w: (w[0, 1:], w[:, 0]), False),  # row 0 without w[0, 0]
        (lambda w: (w[0::2], w[1::2]), False),
        (lambda w: (w[1:3, 1:3], w[0::3, 0::3]), False),
        (lambda w: (w[1:3, 1:3], w[1::3, 1::3]), True),  # w[1, 1]
        (lambda w: (w.diagonal(), w[:, 1::2]), True),  # w[1, 1] and w[3, 3]
        (lambda w: (w.diagonal(), w[0::2, 1::2]), False),
        (lambda w: (w.diagonal(), w.as_strided((6,), (5,), 5)), False),  # anti-diagonal
        (lambda w: (w[0, 0::2], w.flatten()[1::2]), False),
        (lambda w: (w[:, :3].view(torch.int8)[:, 1::4], w[:, 0]), True),
        (lambda w: (w[:, :3].view(torch.int8)[:, 1::4], w[:, 3]), False),
        (lambda w: (w.expand(2, 6, 6)[:, :, 0], w[:, 1]), False),
        (lambda w: (w.expand(2, 6, 6)[:, :, 0], w[5]), True),
    ],
)
def test_storage_aliases_exact_for_strided_views(
    make: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], aliased: bool
) -> None:
    w = torch.arange(36.0).reshape(6, 6)
    a, b = make(w)
    shared = set(element_addresses(a)) & set(element_addresses(b))
    assert bool(shared) == aliased  # the expectation itself, element by element
    expected = [["p0", "p1"]] if aliased else []
    assert ws.storage_aliases(views(a, b)) == expected
    assert ws.storage_aliases(views(b, a)) == expected


def element_addresses(t: torch.Tensor) -> list[int]:
    """Every byte address of every element (the brute-force reference)."""
    base = t.data_ptr()
    size = t.element_size()
    index = torch.stack(
        torch.meshgrid(*[torch.arange(n) for n in t.shape], indexing="ij")
    ).reshape(t.dim(), -1)
    offsets = (index * torch.tensor(t.stride())[:, None]).sum(0) * size
    return [base + int(o) + k for o in offsets for k in range(size)]


def test_storage_aliases_brute_force_on_random_views() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.zeros(5, 8)
    bases = [w, w.view(torch.int8), w.view(torch.float64), w.view(torch.int16)]
    for _ in range(600):
        a, b = (random_view(bases[int(torch.randint(4, (1,)))], gen) for _ in range(2))
        shared = set(element_addresses(a)) & set(element_addresses(b))
        want = [["p0", "p1"]] if shared else []
        assert ws.storage_aliases(views(a, b)) == want, (a.stride(), b.stride())


def random_view(w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    def pick(n: int) -> slice:
        start = int(torch.randint(0, n, (1,), generator=gen))
        step = int(torch.randint(1, 4, (1,), generator=gen))
        return slice(start, n, step)

    view = w[pick(w.shape[0]), pick(w.shape[1])]
    return view.t() if bool(torch.randint(0, 2, (1,), generator=gen)) else view


def test_storage_aliases_huge_views_decided_without_listing_elements() -> None:
    with torch.device("meta"):
        w = torch.empty(50_000, 50_001)  # 10 GB if it were real
    model = views(w[:, 0::2], w[:, 1::2], w.t(), w[7, 3:4])
    assert ws.storage_aliases(model) == [["p0", "p1", "p2", "p3"]]
    assert ws.storage_aliases(views(w[:, 0::2], w[:, 1::2])) == []
    assert ws.storage_aliases(views(w[0::2], w[1::2, 5:])) == []
    assert ws.storage_aliases(views(w[0::2], w[1::2].t())) == []


def test_storage_aliases_large_irregular_views_exact() -> None:
    with torch.device("meta"):
        w = torch.empty(3000, 1001)
    # Neither strides' gcd nor the byte ranges separate these: listing is needed.
    a = w.as_strided((1500, 500), (2002, 2))
    b = w.as_strided((1500, 500), (2002, 2), 1001)
    assert ws.storage_aliases(views(a, b)) == []
    c = w.as_strided((1500, 500), (2002, 2), 1001 * 3 + 1)
    assert ws.storage_aliases(views(a, c)) == []
    d = w.as_strided((1500, 500), (2002, 2), 2002 * 1499 + 998)
    assert ws.storage_aliases(views(a, d)) == [["p0", "p1"]]


@pytest.mark.parametrize(
    "step",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, foreach=False),
        lambda p: torch.optim.SGD(p, lr=0.1, foreach=True),
        lambda p: torch.optim.SGD(p, lr=0.1, fused=True),
        lambda p: torch.optim.Adam(p, foreach=False),
        lambda p: torch.optim.Adam(p, foreach=True),
        lambda p: torch.optim.Adam(p, fused=True),
    ],
)
def test_storage_aliases_survive_optimizer_steps(
    step: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
) -> None:
    model = aliased("cpu")
    optimizer = step(model.parameters())
    model.dec(model.enc(torch.ones(2, 3))).sum().backward()
    optimizer.step()
    assert ws.storage_aliases(model) == [["enc.weight", "dec.weight", "copy.weight"]]


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.to(torch.float32),  # nothing to convert
        lambda m: m.load_state_dict(m.state_dict()),  # copies in place
    ],
)
def test_storage_aliases_kept_by_in_place_changes(
    change: Callable[[nn.Module], object],
) -> None:
    model = aliased("cpu")
    change(model)
    assert ws.storage_aliases(model) == [["enc.weight", "dec.weight", "copy.weight"]]


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.double(),
        lambda m: m.to("meta"),
        lambda m: m.load_state_dict(
            {k: v.clone() for k, v in m.state_dict().items()}, assign=True
        ),
    ],
)
def test_storage_aliases_separated_by_new_tensors(
    change: Callable[[nn.Module], object],
) -> None:
    model = aliased("cpu")
    change(model)
    assert ws.storage_aliases(model) == []


def test_storage_aliases_step_limit_falls_back_to_byte_ranges(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with torch.device("meta"):
        w = torch.empty(50_000, 64)
    rows = views(w[0::6], w[1::4])  # even rows against odd rows: nothing shared
    assert ws.storage_aliases(rows) == []
    monkeypatch.setattr("weightshare._groups._MAX_STEPS", 100)
    assert ws.storage_aliases(rows) == [["p0", "p1"]]  # undecided: ranges overlap
    assert ws.storage_aliases(views(w[0::6], w[1::6])) == []  # decided in a few steps


def test_count_parameters_unique_counts_frozen_parameters_too() -> None:
    model = TinyLM(10, 4)
    model.wte.weight.requires_grad_(False)  # freezes lm_head.weight too: one object
    count = ws.count_parameters(model)
    assert count.unique == 40 + 8
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 8


def test_storage_aliases_single_bytes() -> None:
    b = torch.zeros(4, dtype=torch.int8)
    assert ws.storage_aliases(views(b[1], b[1:2], b[2])) == [["p0", "p1"]]
