"""weightshare.check: tensors, ties and findings of files and folders on disk.

Hugging Face folders are made locally from a tiny GPT-2 config (HF_HUB_OFFLINE=1).
Where a finding says what ``from_pretrained`` does, a test here loads the folder
with transformers and checks it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

import weightshare as ws
from weightshare._checkpoint import _mapped, _torch
from weightshare._checkpoint._format import GROUPS_KEY

# --- helpers --------------------------------------------------------------------------


def save(path: Path, tensors: dict[str, torch.Tensor], **metadata: str) -> Path:
    safetensors.torch.save_file(tensors, str(path), metadata or None)
    return path


def text(report: ws.CheckReport) -> str:
    """The report's text with its line wrapping undone."""
    return " ".join(report.format().split())


def problem(path: Path | str, **kwargs: Any) -> str:
    """The CheckpointError message for ``path``, checked to be one line."""
    with pytest.raises(ws.CheckpointError) as info:
        ws.check(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


def header(path: Path, entries: dict[str, Any], data: bytes = b"") -> Path:
    raw = json.dumps(entries).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


# --- safetensors files ----------------------------------------------------------------


def test_clean_file_lists_tensors_and_no_ties(tmp_path: Path) -> None:
    path = save(
        tmp_path / "m.safetensors",
        {"a": torch.randn(4, 3), "b": torch.arange(5), "c": torch.randn(4, 3)},
    )
    report = ws.check(path)
    assert report.status == 0 and report.findings == () and report.ties == ()
    assert report.kind == "safetensors" and report.files == ("m.safetensors",)
    assert [(t.name, t.dtype, t.shape, t.nbytes) for t in report.tensors] == [
        ("b", "int64", (5,), 40),  # file order: safetensors puts int64 first
        ("a", "float32", (4, 3), 48),
        ("c", "float32", (4, 3), 48),
    ]
    assert report.stored_bytes == 136
    assert "no ties recorded" in report.method
    assert "3 in 1 file, 136 B, 2 float32, 1 int64" in text(report)
    assert "findings: none" in text(report)


def test_file_without_tensors(tmp_path: Path) -> None:
    report = ws.check(save(tmp_path / "m.safetensors", {}))
    assert report.tensors == () and report.status == 0
    assert "tensors:  0 in 0 files, 0 B" in report.format()
    assert "largest" not in report.format()


def test_duplicates_name_every_copy_and_the_bytes_wasted(tmp_path: Path) -> None:
    weight = torch.randn(8, 4)
    tensors = {"x": weight, "y": weight.clone(), "z": weight.clone()}
    tensors["other"] = torch.randn(8, 4)
    report = ws.check(save(tmp_path / "m.safetensors", tensors))
    [finding] = report.findings
    assert finding.kind == "duplicate"
    assert finding.names == ("x", "y", "z")
    assert finding.bytes == 2 * 128
    assert "stored 3 times: 256 B wasted" in finding.message
    assert report.status == 1


def test_equal_ends_different_middles_are_not_duplicates(tmp_path: Path) -> None:
    size = 3 * _mapped.SAMPLE  # float32: the middle lies outside both samples
    a = torch.randn(size)
    b, c = a.clone(), a.clone()
    b[size // 2] += 1
    report = ws.check(save(tmp_path / "m.safetensors", {"a": a, "b": b, "c": c}))
    assert [f.names for f in report.findings] == [("a", "c")]


def test_constant_tensors_are_counted_not_reported(tmp_path: Path) -> None:
    tensors = {"bias1": torch.zeros(6), "bias2": torch.zeros(6), "norm": torch.ones(6)}
    report = ws.check(save(tmp_path / "m.safetensors", tensors))
    assert report.findings == ()
    assert report.constant_groups == 1
    assert "constant: 1 group(s)" in text(report)


def test_chunked_comparison_of_odd_sizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_mapped, "CHUNK", 16)  # many chunks, the last one odd
    a = torch.randint(0, 100, (37,), dtype=torch.int8)
    b = a.clone()
    b[-1] += 1
    tensors = {"a": a, "b": b, "c": a.clone(), "half": torch.randn(3).half()}
    tensors["half2"] = tensors["half"].clone()
    tensors["k1"] = torch.full((21,), 7, dtype=torch.int8)
    tensors["k2"] = torch.full((21,), 7, dtype=torch.int8)
    report = ws.check(save(tmp_path / "m.safetensors", tensors))
    assert sorted(f.names for f in report.findings) == [("a", "c"), ("half", "half2")]
    assert report.constant_groups == 1


def test_weightshare_save_reports_its_recorded_groups(tmp_path: Path) -> None:
    model = nn.ModuleDict({"emb": nn.Embedding(10, 4), "head": nn.Linear(4, 10)})
    model.head.weight = model.emb.weight
    ws.save(model, tmp_path / "m.safetensors")
    report = ws.check(tmp_path / "m.safetensors")
    assert report.ties == (
        ws.TieInfo(("emb.weight", "head.weight"), "metadata", ("emb.weight",)),
    )
    assert report.findings == ()
    assert report.method == "ties recorded by weightshare.save"
    assert (
        "emb.weight = head.weight (recorded by weightshare.save; saved once, as "
        in (text(report))
    )


def recorded(path: Path, groups: list[list[str]], **tensors: torch.Tensor) -> Path:
    return save(path, tensors, **{GROUPS_KEY: json.dumps(groups)})


def test_recorded_group_naming_absent_tensors(tmp_path: Path) -> None:
    path = recorded(tmp_path / "m.safetensors", [["p", "q"]], r=torch.randn(2))
    report = ws.check(path)
    [finding] = report.findings
    assert finding.kind == "tie-missing" and finding.names == ("p", "q")
    assert "names no tensor in the file" in finding.message
    assert report.ties[0].saved == ()
    # what the finding says weightshare.load does
    model = nn.ParameterDict({"p": nn.Parameter(torch.zeros(2))})
    model.q = model.p
    with pytest.raises(ws.CheckpointError, match="missing keys"):
        ws.load(model, path)


def test_recorded_group_whose_shapes_disagree(tmp_path: Path) -> None:
    path = recorded(
        tmp_path / "m.safetensors", [["p", "q"]], p=torch.zeros(2), q=torch.zeros(3)
    )
    [finding] = ws.check(path).findings
    assert finding.kind == "tie-shape"
    assert "p float32 [2]; q float32 [3]" in finding.message
    assert "weightshare.load refuses" in finding.on_load
    model = nn.ParameterDict({"p": nn.Parameter(torch.zeros(2))})
    model.q = model.p
    with pytest.raises(ws.CheckpointError, match=r"\(2,\) torch.float32 vs \(3,\)"):
        ws.load(model, path)


def test_recorded_group_whose_values_differ(tmp_path: Path) -> None:
    p = torch.tensor([1.0, 2.0, 3.0])
    path = recorded(
        tmp_path / "m.safetensors",
        [["p", "q"]],
        p=p,
        q=p + torch.tensor([0.0, 0.25, -0.5]),
    )
    [finding] = ws.check(path).findings
    assert finding.kind == "tie-differs"
    assert finding.max_abs_diff == 0.5 and finding.differing == 2
    assert "max abs difference 0.5, 2 of 3 elements differ" in finding.message
    model = nn.ParameterDict({"p": nn.Parameter(torch.zeros(3))})
    model.q = model.p
    with pytest.raises(ws.CheckpointError, match="hold different values"):
        ws.load(model, path)


def test_recorded_group_stored_twice(tmp_path: Path) -> None:
    p = torch.randn(3)
    path = recorded(tmp_path / "m.safetensors", [["p", "q"]], p=p, q=p.clone())
    [finding] = ws.check(path).findings
    assert finding.kind == "duplicate"
    assert "tied by the groups recorded by weightshare.save" in finding.message
    assert "weightshare.save" in finding.fix


def test_unknown_dtype_code_is_refused_as_safetensors_refuses_it(
    tmp_path: Path,
) -> None:
    entry = {"dtype": "X9", "shape": [3], "data_offsets": [0, 5]}
    path = header(tmp_path / "m.safetensors", {"t": entry}, b"12345")
    assert "entry 't' has no known dtype ('X9')" in problem(path)


def test_sub_byte_dtypes_differ_without_a_maximum(tmp_path: Path) -> None:
    groups = json.dumps([["a", "b"], ["c", "d"]])
    entries: dict[str, Any] = {"__metadata__": {GROUPS_KEY: groups}}
    spans = {"a": ("F4", 0, 2), "b": ("F4", 2, 4), "c": ("F6_E2M3", 4, 7)}
    spans["d"] = ("F6_E2M3", 7, 10)
    for name, (dtype, low, high) in spans.items():
        entries[name] = {"dtype": dtype, "shape": [4], "data_offsets": [low, high]}
    path = header(tmp_path / "m.safetensors", entries, b"aabbcccddd")
    findings = ws.check(path).findings
    assert [(f.kind, f.max_abs_diff, f.differing) for f in findings] == [
        ("tie-differs", None, None),
        ("tie-differs", None, None),
    ]
    assert "different bytes" in findings[0].message


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(torch.bfloat16, 0.5), (torch.float16, 0.5), (torch.int64, 1.0)],
)
def test_difference_in_other_dtypes(
    tmp_path: Path, dtype: torch.dtype, expected: float
) -> None:
    p = torch.tensor([1, 2, 4]).to(dtype)
    q = p.clone()
    q[0] += 0.5 if dtype.is_floating_point else 1
    path = recorded(tmp_path / "m.safetensors", [["p", "q"]], p=p, q=q)
    [finding] = ws.check(path).findings
    assert (finding.max_abs_diff, finding.differing) == (expected, 1)


def test_nan_differences_are_left_out_of_the_maximum() -> None:
    a = torch.tensor([1.0, 2.0, float("nan")])
    b = torch.tensor([1.0, 2.5, 0.0])
    assert _torch.compare(a, b) == (0.5, 2)
    assert _torch.compare(a[2:], b[2:]) == (None, 1)
    bits = torch.tensor([1, 2], dtype=torch.uint8).view(torch.bits8)
    other = torch.tensor([1, 3], dtype=torch.uint8).view(torch.bits8)
    assert _torch.compare(bits, other) == (None, 1)  # bits8 has no float cast


# --- unreadable safetensors -----------------------------------------------------------


def test_truncated_data(tmp_path: Path) -> None:
    path = save(tmp_path / "m.safetensors", {"a": torch.randn(100)})
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    size = len(data) - 10
    assert f"truncated: tensor 'a' ends at byte {size + 10:,} but the file has " in (
        problem(path)
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "only 0 bytes: too short for a safetensors file"),
        (b"\x05\x00", "only 2 bytes"),
        ((500).to_bytes(8, "little") + b"{}", "the header length says 500 bytes"),
        ((4).to_bytes(8, "little") + b"\xff\xfe{}", "corrupt header: it is not UTF-8"),
        ((2).to_bytes(8, "little") + b"[]", "corrupt header: it is not a JSON object"),
    ],
)
def test_corrupt_files(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(content)
    assert expected in problem(path)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"shape": [2]}, "entry 't' has no known dtype"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "no valid shape"),
        (
            {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]},
            "invalid data_offsets for 't' (it ends before it starts)",
        ),
        (
            {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]},
            "'t' is float32 [2], 8 bytes, but its data_offsets span 4 bytes",
        ),
    ],
)
def test_corrupt_header_entries(
    tmp_path: Path, entry: dict[str, Any], expected: str
) -> None:
    path = header(tmp_path / "m.safetensors", {"t": entry}, bytes(8))
    assert expected in problem(path)


def test_corrupt_recorded_groups_are_a_finding_not_an_error(tmp_path: Path) -> None:
    # safetensors opens the file, so check reads it; weightshare.load refuses it
    path = save(tmp_path / "m.safetensors", {"a": torch.ones(1)}, **{GROUPS_KEY: "{"})
    [finding] = ws.check(path).findings
    assert finding.kind == "bad-metadata"
    assert "'weightshare.shared_groups' metadata is not valid" in finding.message
    with pytest.raises(ws.CheckpointError):
        ws.load(torch.nn.Linear(1, 1), path)


def test_oversized_header_length(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    with open(path, "wb") as handle:  # a sparse file: no disk used
        handle.write((150_000_000).to_bytes(8, "little"))
        handle.truncate(200_000_000)
    assert "over safetensors' limit of 100 MB" in problem(path)


def test_missing_path_and_unknown_format(tmp_path: Path) -> None:
    assert problem(tmp_path / "nope.safetensors").endswith(": no such file or folder")
    junk = tmp_path / "weights.dat"
    junk.write_bytes(b"just some bytes, nothing more")
    assert "unknown format (suffix '.dat'" in problem(junk)
    plain = tmp_path / "weights"
    plain.write_bytes(b"")
    assert "suffix 'none'" in problem(plain)


def test_content_decides_for_an_unknown_suffix(tmp_path: Path) -> None:
    path = save(tmp_path / "m.safetensors", {"a": torch.ones(2)})
    renamed = path.rename(tmp_path / "weights.dat")
    assert ws.check(renamed).kind == "safetensors"
    torch.save({"a": torch.ones(2)}, tmp_path / "model.weights")
    assert ws.check(tmp_path / "model.weights").kind == "torch"


def test_os_errors_become_checkpoint_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(tmp_path / "m.safetensors", {"a": torch.ones(2)})

    def denied(*args: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("weightshare._checkpoint._check.read_safetensors", denied)
    assert problem(path).endswith(": permission denied")


def test_read_errors_while_comparing_become_checkpoint_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weight = torch.randn(4)
    path = save(tmp_path / "m.safetensors", {"a": weight, "b": weight.clone()})

    def fail(self: object, name: str) -> bytes:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(_mapped.MappedFiles, "sample", fail)
    assert problem(path).endswith(": input/output error")


# --- torch checkpoints ----------------------------------------------------------------


def test_torch_checkpoint_with_no_ties(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    report = ws.check(path)
    assert report.kind == "torch" and report.ties == () and report.findings == ()
    assert report.method == "torch storage sharing"
    assert [t.name for t in report.tensors] == ["weight", "bias"]
    assert report.stored_bytes == 32


def test_torch_storage_sharing_is_a_tie_not_a_duplicate(tmp_path: Path) -> None:
    model = nn.ModuleDict({"emb": nn.Embedding(10, 4), "head": nn.Linear(4, 10)})
    model.head.weight = model.emb.weight
    path = tmp_path / "m.bin"
    torch.save(model.state_dict(), path)
    report = ws.check(path)
    assert report.ties == (
        ws.TieInfo(
            ("emb.weight", "head.weight"), "storage", ("emb.weight", "head.weight")
        ),
    )
    assert report.findings == ()
    assert report.stored_bytes == 160 + 40  # the shared weight once, and the bias
    assert "emb.weight = head.weight (one storage in the file)" in text(report)


def test_torch_views_and_copies(tmp_path: Path) -> None:
    base = torch.randn(4, 3)
    path = tmp_path / "m.pt"
    torch.save({"full": base, "rows": base[1:], "copy": base.clone()}, path)
    report = ws.check(path)
    assert [(t.names, t.source) for t in report.ties] == [(("full", "rows"), "views")]
    assert [(f.kind, f.names) for f in report.findings] == [
        ("duplicate", ("full", "copy"))
    ]
    assert "full and rows are different views of one storage" in text(report)


def test_legacy_torch_format_and_nested_objects(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    weight = torch.randn(2, 2)
    checkpoint = {"model": {"w": weight, "v": weight}, "step": 3, "ema": [weight * 2]}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    report = ws.check(path)
    assert [t.name for t in report.tensors] == ["model.w", "model.v", "ema.0"]
    assert report.ties[0].names == ("model.w", "model.v")
    torch.save(weight, tmp_path / "t.pt")
    assert [t.name for t in ws.check(tmp_path / "t.pt").tensors] == ["<tensor>"]
    torch.save([weight], tmp_path / "l.pt")
    assert [t.name for t in ws.check(tmp_path / "l.pt").tensors] == ["0"]


def test_weightshare_torch_format(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight
    ws.save(model, tmp_path / "m.pt", format="torch")
    report = ws.check(tmp_path / "m.pt")
    assert report.ties == (
        ws.TieInfo(("0.weight", "1.weight"), "metadata", ("0.weight",)),
    )
    assert report.method == "ties recorded by weightshare.save; torch storage sharing"
    bad = {"state_dict": {"a": torch.ones(1)}, "shared_groups": "oops"}
    torch.save(bad, tmp_path / "bad.pt")
    assert "corrupt weightshare checkpoint" in problem(tmp_path / "bad.pt")


def test_torch_recorded_group_whose_values_differ(tmp_path: Path) -> None:
    p = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).t()  # not contiguous
    state = {"p": p, "q": p + torch.tensor([[0.0, 0.0], [0.0, 2.0]])}
    torch.save({"state_dict": state, "shared_groups": [["p", "q"]]}, tmp_path / "m.pt")
    [finding] = ws.check(tmp_path / "m.pt").findings
    assert (finding.kind, finding.max_abs_diff, finding.differing) == (
        "tie-differs",
        2.0,
        1,
    )


class NotAllowed:
    """A class ``torch.load(weights_only=True)`` refuses to unpickle."""


@pytest.mark.parametrize("case", ["truncated", "garbage", "empty", "unsafe"])
def test_unreadable_torch_files(tmp_path: Path, case: str) -> None:
    path = tmp_path / "m.pt"
    torch.save({"a": torch.randn(50)}, path)
    if case == "truncated":
        path.write_bytes(path.read_bytes()[:200])
        expected = "failed finding central directory; the file may be truncated"
    elif case == "garbage":
        path.write_bytes(b"not a checkpoint at all")
        expected = "neither a zip archive (torch.save) nor a pickle"
    elif case == "empty":
        path.write_bytes(b"")
        expected = "the file is empty"
    else:
        torch.save({"a": NotAllowed()}, path)
        expected = (
            "torch.load(weights_only=True) refused an object that is not a tensor or "
            "a plain container (test_check.NotAllowed, which is not on torch's "
            "allowlist); the file is intact"
        )
        assert "add_safe_globals([test_check.NotAllowed])" in problem(path)
    assert expected in problem(path)


class RunsCode:
    """Unpickles to a call of ``os.system``: what a malicious checkpoint holds."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, ("echo never run",)


def test_torch_file_that_would_run_code_is_named_and_not_advised_to_load(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.pt"
    torch.save({"a": torch.ones(2), "b": RunsCode()}, path)
    message = problem(path)
    assert "refused posix.system" in message or "refused nt.system" in message
    assert "could run code" in message
    assert "holds more than weights" not in message  # not a hyper-parameter object


# --- Hugging Face folders -------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        module = pytest.importorskip("transformers")
        level = module.logging.get_verbosity()
        module.logging.set_verbosity_error()  # from_pretrained's load reports
        yield module
        module.logging.set_verbosity(level)


WTE, HEAD = "transformer.wte.weight", "lm_head.weight"


@pytest.fixture(scope="module")
def gpt2(transformers: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny tied GPT-2 saved with save_pretrained."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=8, vocab_size=50, n_positions=16
    )
    folder = tmp_path_factory.mktemp("hf") / "gpt2"
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def variant(
    gpt2: Path,
    tmp_path: Path,
    change: dict[str, torch.Tensor | None],
    **config: Any,
) -> Path:
    """A copy of the GPT-2 folder with tensors set (None: removed) and config keys."""
    folder = tmp_path / "variant"
    shutil.copytree(gpt2, folder)
    tensors = safetensors.torch.load_file(str(folder / "model.safetensors"))
    for name, value in change.items():
        if value is None:
            tensors.pop(name)
        else:
            tensors[name] = value
    save(folder / "model.safetensors", tensors, format="pt")
    settings = json.loads((folder / "config.json").read_text())
    settings.update(config)
    (folder / "config.json").write_text(json.dumps(settings))
    return folder


def wte(gpt2: Path) -> torch.Tensor:
    return safetensors.torch.load_file(str(gpt2 / "model.safetensors"))[WTE]


def load(transformers: ModuleType, folder: Path, **kwargs: Any) -> tuple[Any, Any]:
    return transformers.GPT2LMHeadModel.from_pretrained(
        folder, output_loading_info=True, **kwargs
    )


def test_healthy_tied_gpt2(gpt2: Path, transformers: ModuleType) -> None:
    report = ws.check(gpt2)
    assert report.kind == "huggingface"
    assert report.files == ("config.json", "model.safetensors")
    assert report.method == (
        f"transformers {transformers.__version__} meta-device model "
        "(GPT2LMHeadModel from config.json's architectures ['GPT2LMHeadModel']); "
        "file keys renamed by transformers' loading rules"
    )
    assert report.ties == (ws.TieInfo((WTE, HEAD), "architecture", (WTE,)),)
    assert report.findings == () and report.status == 0
    assert report.constant_groups > 0  # a fresh model's zero biases and unit norms


def test_healthy_tied_gpt2_without_transformers(gpt2: Path) -> None:
    report = ws.check(gpt2, use_transformers=False)
    assert report.method == (
        "config flag tie_word_embeddings=true (transformers not used): assumed tie of "
        f"{WTE!r} and {HEAD!r}"
    )
    assert report.ties == (ws.TieInfo((WTE, HEAD), "config", (WTE,)),)
    assert report.findings == ()


@pytest.mark.parametrize("use_transformers", [True, False])
def test_tied_matrix_stored_twice(
    gpt2: Path, tmp_path: Path, transformers: ModuleType, use_transformers: bool
) -> None:
    folder = variant(gpt2, tmp_path, {HEAD: wte(gpt2).clone()})
    [finding] = ws.check(folder, use_transformers=use_transformers).findings
    assert finding.kind == "duplicate" and finding.names == (WTE, HEAD)
    assert finding.bytes == 50 * 8 * 4
    assert "from_pretrained ties them" in finding.on_load
    assert "delete lm_head.weight from the file" in finding.fix
    model, info = load(transformers, folder)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert info["missing_keys"] == set()


def test_config_ties_but_saved_head_differs(
    gpt2: Path, tmp_path: Path, transformers: ModuleType
) -> None:
    head = wte(gpt2) + 0.5
    folder = variant(gpt2, tmp_path, {HEAD: head})
    [finding] = ws.check(folder).findings
    assert finding.kind == "tie-differs" and finding.names == (WTE, HEAD)
    assert finding.max_abs_diff == pytest.approx(0.5)
    assert finding.differing == 400
    assert "overwrites lm_head.weight with transformer.wte.weight" in finding.on_load
    # what the finding says from_pretrained does, on the pinned transformers
    model, _ = load(transformers, folder)
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert torch.equal(model.lm_head.weight, head)
    model.tie_weights()
    assert torch.equal(model.lm_head.weight, wte(gpt2))


def test_untied_config_missing_head(
    gpt2: Path, tmp_path: Path, transformers: ModuleType
) -> None:
    folder = variant(gpt2, tmp_path, {}, tie_word_embeddings=False)
    for use in (True, False):
        [finding] = ws.check(folder, use_transformers=use).findings
        assert (finding.kind, finding.names) == ("untied-missing", (HEAD,))
        assert "initialises lm_head.weight randomly" in finding.on_load
    model, info = load(transformers, folder)
    assert info["missing_keys"] == {HEAD}
    assert not torch.equal(model.lm_head.weight, wte(gpt2))


def test_untied_config_with_head_is_clean(gpt2: Path, tmp_path: Path) -> None:
    folder = variant(
        gpt2, tmp_path, {HEAD: torch.randn(50, 8)}, tie_word_embeddings=False
    )
    for use in (True, False):
        report = ws.check(folder, use_transformers=use)
        assert report.findings == () and report.ties == ()


def test_tied_config_with_neither_name_saved(
    gpt2: Path, tmp_path: Path, transformers: ModuleType
) -> None:
    folder = variant(gpt2, tmp_path, {WTE: None})
    report = ws.check(folder)
    [finding] = report.findings
    assert (finding.kind, finding.names) == ("tie-missing", (WTE, HEAD))
    assert "none saved" in text(report)
    _, info = load(transformers, folder)
    assert info["missing_keys"] == {WTE, HEAD}


def test_tied_config_with_only_the_head_saved(
    gpt2: Path, tmp_path: Path, transformers: ModuleType
) -> None:
    folder = variant(gpt2, tmp_path, {WTE: None, HEAD: wte(gpt2)})
    report = ws.check(folder)
    assert report.findings == ()
    assert report.ties[0].saved == (HEAD,)
    model, _ = load(transformers, folder)
    assert torch.equal(model.transformer.wte.weight, wte(gpt2))


def test_tied_names_of_different_shapes(
    gpt2: Path, tmp_path: Path, transformers: ModuleType
) -> None:
    folder = variant(gpt2, tmp_path, {HEAD: torch.zeros(51, 8)})
    [finding] = ws.check(folder).findings
    assert finding.kind == "model-shape"
    assert "size-mismatch error for lm_head.weight" in finding.on_load
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        load(transformers, folder)
    [fallback] = ws.check(folder, use_transformers=False).findings
    assert "the one whose shape differs from the model's" in fallback.on_load


def test_config_flag_absent_or_names_unusual(gpt2: Path, tmp_path: Path) -> None:
    folder = variant(gpt2, tmp_path, {})
    settings = json.loads((folder / "config.json").read_text())
    del settings["tie_word_embeddings"]
    (folder / "config.json").write_text(json.dumps(settings))
    report = ws.check(folder, use_transformers=False)
    assert "does not set tie_word_embeddings" in report.method
    assert report.ties == ()
    settings["text_config"] = {"tie_word_embeddings": True}
    (folder / "config.json").write_text(json.dumps(settings))
    report = ws.check(folder, use_transformers=False)
    assert report.ties[0].source == "config"
    tensors = safetensors.torch.load_file(str(folder / "model.safetensors"))
    tensors["vocab.weight"] = tensors.pop(WTE)
    save(folder / "model.safetensors", tensors)
    report = ws.check(folder, use_transformers=False)
    assert "no input embedding found under a usual name" in report.method


def test_transformers_missing_or_failing(
    gpt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = variant(gpt2, tmp_path, {}, model_type="no-such-model")
    report = ws.check(folder)
    assert "(transformers could not build the model: " in report.method
    assert report.ties[0].source == "config"
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "transformers" else real(name, *args),
    )
    assert "(transformers is not installed)" in ws.check(gpt2).method


def test_model_class_from_auto_classes(
    transformers: ModuleType, tmp_path: Path
) -> None:
    vit = transformers.ViTConfig(
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        image_size=8,
        patch_size=4,
    )
    folder = tmp_path / "vit"
    folder.mkdir()
    vit.save_pretrained(folder)  # no "architectures": no causal LM, AutoModel
    save(folder / "model.safetensors", {"w": torch.randn(2)})
    assert "(ViTModel chosen by AutoModel: " in ws.check(folder).method
    gpt = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=50)
    gpt.save_pretrained(folder)  # a causal LM without "architectures"
    assert (
        "(GPT2LMHeadModel chosen by AutoModelForCausalLM: " in ws.check(folder).method
    )
    gpt.architectures = ["MyOwnGPT2"]  # a class transformers does not have
    gpt.save_pretrained(folder)
    assert (
        "(GPT2LMHeadModel chosen by AutoModelForCausalLM: " in ws.check(folder).method
    )


def test_base_model_names_without_the_prefix(
    gpt2: Path, tmp_path: Path, transformers: ModuleType
) -> None:
    folder = tmp_path / "base"
    shutil.copytree(gpt2, folder)
    tensors = safetensors.torch.load_file(str(folder / "model.safetensors"))
    short = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    save(folder / "model.safetensors", short)
    report = ws.check(folder)
    assert report.ties == (
        ws.TieInfo(("wte.weight", HEAD), "architecture", ("wte.weight",)),
    )


def test_sharded_folder(gpt2: Path, transformers: ModuleType, tmp_path: Path) -> None:
    model = transformers.GPT2LMHeadModel.from_pretrained(gpt2)
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="1KB")
    report = ws.check(folder)
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert report.files == ("config.json", "model.safetensors.index.json", *shards)
    assert len({t.file for t in report.tensors}) == len(shards)
    assert report.findings == ()
    assert report.ties[0].saved == (WTE,)
    assert f"in {len(shards)} files" in text(report)


def test_duplicate_across_shards(tmp_path: Path) -> None:
    weight = torch.randn(6, 2)
    save(tmp_path / "a.safetensors", {"x": weight})
    save(tmp_path / "b.safetensors", {"y": weight.clone()})
    index = {"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    report = ws.check(tmp_path)
    assert report.method == "no config.json: no architecture ties to check"
    [finding] = report.findings
    assert finding.names == ("x", "y")
    assert [t.file for t in report.tensors] == ["a.safetensors", "b.safetensors"]


def test_torch_folder(gpt2: Path, transformers: ModuleType, tmp_path: Path) -> None:
    model = transformers.GPT2LMHeadModel.from_pretrained(gpt2)
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(gpt2 / "config.json", folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    report = ws.check(folder)
    assert report.files == ("config.json", "pytorch_model.bin")
    assert [(t.names, t.source) for t in report.ties] == [
        ((WTE, HEAD), "storage"),
        ((WTE, HEAD), "architecture"),
    ]
    assert report.findings == ()


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, "it holds no model.safetensors, model.safetensors.index.json"),
        ({"config.json": "{"}, "config.json is not valid JSON"),
        ({"config.json": "[]"}, "config.json is not a JSON object"),
        (
            {"model.safetensors.index.json": '{"weight_map": {"a": "s1.safetensors"}}'},
            "model.safetensors.index.json lists 's1.safetensors', which is not",
        ),
        ({"pytorch_model.bin.index.json": "{}"}, "is not a valid index"),
    ],
)
def test_unreadable_folders(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    if "config.json" in files:
        save(tmp_path / "model.safetensors", {"a": torch.ones(1)})
    assert expected in problem(tmp_path)


def test_same_name_in_two_shards(tmp_path: Path) -> None:
    save(tmp_path / "a.safetensors", {"x": torch.ones(1)})
    save(tmp_path / "b.safetensors", {"x": torch.ones(1)})
    index = {"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "tensor 'x' is in both a.safetensors and b.safetensors" in problem(tmp_path)


def test_to_dict_is_json(gpt2: Path, tmp_path: Path) -> None:
    folder = variant(gpt2, tmp_path, {HEAD: wte(gpt2) + 1})
    data = json.loads(json.dumps(ws.check(folder).to_dict()))
    assert set(data) == {
        "path",
        "kind",
        "files",
        "method",
        "status",
        "stored_bytes",
        "tensors",
        "ties",
        "constant_groups",
        "findings",
    }
    assert data["status"] == 1
    assert data["tensors"][0] == {
        "name": data["tensors"][0]["name"],
        "dtype": "float32",
        "shape": data["tensors"][0]["shape"],
        "bytes": data["tensors"][0]["bytes"],
        "file": "model.safetensors",
    }
    [finding] = data["findings"]
    assert finding["kind"] == "tie-differs" and finding["names"] == [WTE, HEAD]
    assert finding["max_abs_diff"] == pytest.approx(1.0) and finding["bytes"] == 0


def test_format_wraps_without_breaking_names(gpt2: Path, tmp_path: Path) -> None:
    folder = variant(gpt2, tmp_path, {HEAD: wte(gpt2) + 1})
    first, *lines = ws.check(folder).format(width=60).splitlines()
    assert first.startswith(f"{folder}: Hugging Face folder")  # never wrapped
    assert all(len(line) <= 60 or " " not in line.strip() for line in lines)
    assert "     fix: decide which values are right and store them once," in lines


@pytest.mark.parametrize("numpy", [True, False], ids=["numpy", "memoryview"])
def test_byte_comparison_with_and_without_numpy(
    numpy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from weightshare._checkpoint import _mapped

    if not numpy:
        monkeypatch.setattr(_mapped, "_np", None)
    data = bytes(range(256)) * 5 + b"xyz"  # 1283 bytes: 1280 in 8-byte words, 3 more
    same = memoryview(bytearray(data))
    for position in (0, 700, 1281):  # a difference in the words, and in the tail
        other = bytearray(data)
        other[position] ^= 1
        assert not _mapped._same(memoryview(data), memoryview(other))
    assert _mapped._same(memoryview(data), same)
