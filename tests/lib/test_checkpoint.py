"""save / load / checkpoint_groups: ties kept, validation before any copy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

import weightshare as ws


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(10, 4)
        self.norm = nn.BatchNorm1d(4)
        self.lm_head = nn.Linear(4, 10, bias=False)
        self.lm_head.weight = self.wte.weight


GROUP = ["wte.weight", "lm_head.weight"]


def fresh(seed: int) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM()


def values(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


# --- round trips ----------------------------------------------------------------------


def test_safetensors_round_trip_keeps_ties(tmp_path: Path) -> None:
    source, target = fresh(0), fresh(1)
    source.norm.running_mean.fill_(0.5)
    path = tmp_path / "m.safetensors"
    ws.save(source, path)
    tied = target.wte.weight
    ws.load(target, path)
    assert target.wte.weight is tied and target.lm_head.weight is tied
    assert ws.shared_groups(target) == [GROUP]
    assert_bit_identical(target, values(source))
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        metadata = f.metadata()
    assert keys == {
        "wte.weight",
        "norm.weight",
        "norm.bias",
        "norm.running_mean",
        "norm.running_var",
        "norm.num_batches_tracked",
    }
    assert json.loads(metadata["weightshare.shared_groups"]) == [GROUP]
    assert metadata["format"] == "pt"
    assert ws.checkpoint_groups(path) == [GROUP]


def test_torch_round_trip(tmp_path: Path) -> None:
    source, target = fresh(0), fresh(1)
    path = str(tmp_path / "m.pt")
    ws.save(source, path, format="torch", metadata={"step": "3"})
    obj = torch.load(path, weights_only=True)
    assert "lm_head.weight" not in obj["state_dict"]
    assert obj["shared_groups"] == [GROUP] and obj["metadata"] == {"step": "3"}
    ws.load(target, path)
    assert_bit_identical(target, values(source))
    assert ws.shared_groups(target) == [GROUP]
    assert ws.checkpoint_groups(path) == [GROUP]


def test_user_metadata_kept(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    ws.save(fresh(0), path, metadata={"step": "7", "format": "mine"})
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["step"] == "7" and metadata["format"] == "mine"


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_loaded_model_does_not_depend_on_the_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"m.{fmt}"
    source = fresh(0)
    ws.save(source, path, format=fmt)  # type: ignore[arg-type]
    target = fresh(1)
    ws.load(target, path)
    expected = values(source)
    assert_bit_identical(target, expected)
    with open(path, "r+b") as handle:  # overwrite in place: same file, new bytes
        size = handle.seek(0, os.SEEK_END)
        handle.seek(0)
        handle.write(b"\xff" * size)
    assert_bit_identical(target, expected)
    path.unlink()
    assert_bit_identical(target, expected)


def test_load_legacy_torch_format(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    source = fresh(0)
    torch.save(source.state_dict(), path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"  # a pickle, which cannot be mapped
    target = fresh(1)
    ws.load(target, path)
    assert_bit_identical(target, values(source))


def test_load_into_untied_model_fills_group_from_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    source = fresh(0)
    ws.save(source, path)
    target = fresh(1)
    ws.untie(target, "lm_head.weight")
    ws.load(target, path)
    assert torch.equal(target.lm_head.weight, source.wte.weight)
    assert ws.shared_groups(target) == []


def test_load_plain_state_dict_files(tmp_path: Path) -> None:
    source, target = fresh(0), fresh(1)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    torch.save(state, tmp_path / "plain.pt")
    ws.load(target, tmp_path / "plain.pt")
    assert_bit_identical(target, values(source))
    del state["lm_head.weight"]  # the HF way: one key, the model ties the rest
    safetensors.torch.save_file(state, tmp_path / "hf.safetensors")
    target = fresh(2)
    ws.load(target, tmp_path / "hf.safetensors")
    assert_bit_identical(target, values(source))
    assert ws.checkpoint_groups(tmp_path / "hf.safetensors") == []


def test_file_keeps_last_key_of_group(tmp_path: Path) -> None:
    source = fresh(0)
    state = {k: v for k, v in values(source).items() if k != "wte.weight"}
    safetensors.torch.save_file(state, tmp_path / "m.safetensors")
    target = fresh(1)
    ws.load(target, tmp_path / "m.safetensors")
    assert_bit_identical(target, values(source))


def test_views_and_shared_storage_are_saved_separately(tmp_path: Path) -> None:
    model = nn.ModuleDict({"a": nn.Linear(3, 3), "b": nn.Linear(3, 3)})
    model.b.weight = nn.Parameter(model.a.weight.data)  # same storage, two objects
    ws.save(model, tmp_path / "m.safetensors")
    target = nn.ModuleDict({"a": nn.Linear(3, 3), "b": nn.Linear(3, 3)})
    ws.load(target, tmp_path / "m.safetensors")
    assert torch.equal(target.b.weight, model.a.weight)
    assert ws.storage_aliases(target) == []


def test_shared_buffers_saved_once(tmp_path: Path) -> None:
    model = nn.ModuleDict({"a": nn.BatchNorm1d(2), "b": nn.BatchNorm1d(2)})
    model.b.running_mean = model.a.running_mean
    ws.save(model, tmp_path / "m.safetensors")
    assert ["a.running_mean", "b.running_mean"] in ws.checkpoint_groups(
        tmp_path / "m.safetensors"
    )


def test_empty_model(tmp_path: Path) -> None:
    ws.save(nn.ReLU(), tmp_path / "m.safetensors")
    ws.load(nn.ReLU(), tmp_path / "m.safetensors")
    assert ws.checkpoint_groups(tmp_path / "m.safetensors") == []


# --- save errors and atomicity --------------------------------------------------------


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.safetensors"
    ws.save(fresh(0), path)
    before = path.read_bytes()

    def half_written(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(before[: len(before) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    with pytest.raises(OSError, match=r"disk full"):
        ws.save(fresh(1), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_save_atomic_when_interrupted_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(obj: object, filename: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ws.save(fresh(0), tmp_path / "m.pt", format="torch")
    assert os.listdir(tmp_path) == []


def test_save_rejects_meta(tmp_path: Path) -> None:
    with torch.device("meta"):
        model = TinyLM()
    with pytest.raises(ws.CheckpointError, match=r"'wte.weight': it is on the meta"):
        ws.save(model, tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


def test_save_rejects_extra_state(tmp_path: Path) -> None:
    class WithExtra(nn.Linear):
        def get_extra_state(self) -> dict[str, int]:
            return {"version": 2}

    with pytest.raises(ws.CheckpointError, match=r"'_extra_state': it holds a dict"):
        ws.save(WithExtra(2, 2), tmp_path / "m.safetensors")


def test_save_argument_errors(tmp_path: Path) -> None:
    model = fresh(0)
    with pytest.raises(ValueError, match=r"format must be 'safetensors' or 'torch'"):
        ws.save(model, tmp_path / "m", format="pickle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"is reserved"):
        ws.save(model, tmp_path / "m", metadata={"weightshare.shared_groups": "[]"})
    with pytest.raises(ValueError, match=r"must be str"):
        ws.save(model, tmp_path / "m", metadata={"step": 3})  # type: ignore[dict-item]
    assert os.listdir(tmp_path) == []


# --- load errors leave the model unchanged --------------------------------------------


def test_disagreeing_tied_keys(tmp_path: Path) -> None:
    source = fresh(0)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    state["lm_head.weight"] += 0.25
    path = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(state, path)
    target = fresh(1)
    before = values(target)
    with pytest.raises(ws.CheckpointError) as info:
        ws.load(target, path)
    message = str(info.value)
    assert "'wte.weight' and 'lm_head.weight'" in message
    assert "max abs difference 0.25" in message
    assert "refusing to pick one silently" in message
    assert "the model was not changed" in message
    assert_bit_identical(target, before)


def test_disagreeing_keys_recorded_tied_in_file(tmp_path: Path) -> None:
    """An untied model still refuses keys the file says were one tensor."""
    state = {"a.weight": torch.zeros(2, 2), "b.weight": torch.ones(2, 2)}
    groups = json.dumps([["a.weight", "b.weight"]])
    path = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(state, path, {"weightshare.shared_groups": groups})
    model = nn.ModuleDict({"a": nn.Linear(2, 2, bias=False), "b": nn.Linear(2, 2)})
    with pytest.raises(ws.CheckpointError, match=r"max abs difference 1"):
        ws.load(model, path, strict=False)


def test_disagreeing_tied_keys_with_different_shapes(tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in fresh(0).state_dict().items()}
    state["lm_head.weight"] = torch.zeros(10, 5)
    safetensors.torch.save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(
        ws.CheckpointError, match=r"\(10, 4\) torch.float32 vs \(10, 5\)"
    ):
        ws.load(fresh(1), tmp_path / "bad.safetensors")


@pytest.mark.parametrize("cut", [0.5, 0.99, 0.02])
def test_truncated_file(tmp_path: Path, cut: float) -> None:
    path = tmp_path / "m.safetensors"
    ws.save(fresh(0), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    target = fresh(1)
    before = values(target)
    with pytest.raises(ws.CheckpointError) as info:
        ws.load(target, path)
    assert str(info.value).startswith(f"could not read checkpoint {str(path)!r}: ")
    assert str(info.value).endswith(
        "the file may be truncated or not a weightshare checkpoint; "
        "the model was not changed"
    )
    assert_bit_identical(target, before)


def test_truncated_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    ws.save(fresh(0), path, format="torch")
    path.write_bytes(path.read_bytes()[:-40])
    target = fresh(1)
    before = values(target)
    with pytest.raises(ws.CheckpointError, match=r"could not read checkpoint"):
        ws.load(target, path)
    assert_bit_identical(target, before)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"garbage, not a checkpoint at all", "neither a safetensors file nor"),
        (b"", "neither a safetensors file nor"),
    ],
)
def test_garbage_file(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(content)
    target = fresh(1)
    before = values(target)
    with pytest.raises(ws.CheckpointError, match=reason):
        ws.load(target, path)
    assert_bit_identical(target, before)
    with pytest.raises(ws.CheckpointError, match=reason) as info:
        ws.checkpoint_groups(path)
    assert "model was not changed" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ws.CheckpointError, match=r"No such file"):
        ws.load(fresh(0), tmp_path / "nope.safetensors")


def test_torch_file_that_is_not_a_state_dict(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ws.CheckpointError, match=r"holds no state_dict"):
        ws.load(fresh(0), tmp_path / "list.pt")
    torch.save({"state_dict": {}, "shared_groups": "a"}, tmp_path / "groups.pt")
    with pytest.raises(ws.CheckpointError, match=r"not a list of lists of names"):
        ws.load(fresh(0), tmp_path / "groups.pt")


def test_bad_groups_metadata(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(
        {"x": torch.zeros(1)}, path, {"weightshare.shared_groups": "{not json"}
    )
    with pytest.raises(ws.CheckpointError, match=r"could not read checkpoint"):
        ws.checkpoint_groups(path)


def test_strict_missing_and_unexpected(tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in fresh(0).state_dict().items()}
    state["lm_head.weihgt"] = state.pop("wte.weight")
    state.pop("lm_head.weight")
    state["extra.bias"] = torch.zeros(3)
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(state, path)
    target = fresh(1)
    before = values(target)
    with pytest.raises(ws.CheckpointError) as info:
        ws.load(target, path)
    message = str(info.value)
    assert "missing keys (in the model, not in the file): 'wte.weight'" in message
    assert "'lm_head.weight' (did you mean 'lm_head.weihgt'?)" in message
    assert "unexpected keys (in the file, not in the model): " in message
    assert "'extra.bias' and 'lm_head.weihgt'" in message  # sorted
    assert "pass strict=False" in message
    assert_bit_identical(target, before)
    ws.load(target, path, strict=False)
    assert torch.equal(target.norm.running_var, state["norm.running_var"])
    assert torch.equal(target.wte.weight, before["wte.weight"])


def test_strict_only_unexpected(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["scale"] = torch.ones(1)
    safetensors.torch.save_file(state, tmp_path / "m.safetensors")
    with pytest.raises(ws.CheckpointError) as info:
        ws.load(model, tmp_path / "m.safetensors")
    assert "missing" not in str(info.value)
    assert "unexpected keys (in the file, not in the model): 'scale'" in str(info.value)


def test_shape_and_dtype_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    ws.save(nn.ModuleDict({"fc": nn.Linear(3, 2)}), path)
    target = nn.ModuleDict({"fc": nn.Linear(2, 2)})
    before = values(target)
    with pytest.raises(ws.CheckpointError) as info:
        ws.load(target, path)
    assert "'fc.weight': file has (2, 3) torch.float32, model has (2, 2)" in str(
        info.value
    )
    assert_bit_identical(target, before)
    double = nn.ModuleDict({"fc": nn.Linear(3, 2)}).double()
    with pytest.raises(ws.CheckpointError, match=r"model has .* torch.float64"):
        ws.load(double, path)


def test_shape_mismatch_names_the_source_key(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    ws.save(fresh(0), path)

    class Wider(TinyLM):
        def __init__(self) -> None:
            super().__init__()
            self.lm_head = nn.Linear(4, 11, bias=False)

    with pytest.raises(ws.CheckpointError, match=r"'lm_head.weight' \(from 'wte"):
        ws.load(Wider(), path, strict=False)


def test_load_into_meta_model(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    ws.save(fresh(0), path)
    with torch.device("meta"):
        model = TinyLM()
    with pytest.raises(ws.CheckpointError, match=r"on the meta device"):
        ws.load(model, path)


def test_strict_only_missing(tmp_path: Path) -> None:
    ws.save(nn.Linear(2, 2, bias=False), tmp_path / "m.safetensors")
    with pytest.raises(ws.CheckpointError) as info:
        ws.load(nn.Linear(2, 2), tmp_path / "m.safetensors")
    assert "missing keys (in the model, not in the file): 'bias';" in str(info.value)
    assert "unexpected" not in str(info.value)
