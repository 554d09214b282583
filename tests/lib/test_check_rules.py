"""Rules of ``weightshare check`` that follow what the real loaders do.

Custom code is never run; a forced ``tie_word_embeddings`` is quoted as forced;
a head in another dtype is judged as ``from_pretrained`` judges it (cast, then
compared); ties recorded by ``safetensors.torch.save_model`` are read; one rule
for "stored once" (identical bytes) in ``check`` and ``weightshare.load``; a
closed pipe ends the command quietly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

import weightshare as ws

HEAD = "lm_head.weight"
WTE = "transformer.wte.weight"


@pytest.fixture(scope="module")
def transformers() -> ModuleType:
    return pytest.importorskip("transformers")


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weightshare", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# --- custom code ----------------------------------------------------------------------

EVIL = """\
from pathlib import Path
Path(__file__).with_name("RAN").write_text("the folder's code was run")
"""


def custom_folder(root: Path, model_type: str) -> Path:
    folder = root / model_type
    folder.mkdir()
    config = {
        "model_type": model_type,
        "architectures": ["EvilForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_evil.EvilConfig",
            "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
        },
        "n_layer": 1,
        "n_head": 2,
        "n_embd": 8,
        "vocab_size": 16,
        "tie_word_embeddings": True,
    }
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("configuration_evil.py", "modeling_evil.py"):
        (folder / name).write_text(EVIL)
    weight = torch.randn(16, 8)
    tensors = {WTE: weight, HEAD: weight + 1}
    safetensors.torch.save_file(tensors, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("model_type", ["gpt2", "evil-model"])
def test_a_folders_custom_code_is_never_run(
    tmp_path: Path, model_type: str, transformers: ModuleType
) -> None:
    folder = custom_folder(tmp_path, model_type)
    report = ws.check(folder)  # a prompt would read pytest's stdin, which raises
    assert not (folder / "RAN").exists()
    assert "config.json declares custom code (auto_map {AutoConfig: " in report.method
    assert "which was not run (trust_remote_code=False)" in report.method
    if model_type == "gpt2":  # transformers' own GPT-2 stands in for it
        assert "GPT2LMHeadModel chosen by AutoModelForCausalLM" in report.method
    else:  # nothing to build: the config flag is read
        assert report.ties[0].source == "config"
    assert "tie-differs" in [f.kind for f in report.findings]


@pytest.mark.slow
def test_the_command_never_asks_to_run_a_folders_code(
    tmp_path: Path, transformers: ModuleType
) -> None:
    folder = custom_folder(tmp_path, "gpt2")
    result = run("check", str(folder), stdin="y\ny\n")  # "y" if it were asked
    assert not (folder / "RAN").exists()
    assert "[y/N]" not in result.stdout + result.stderr
    assert result.returncode == 1, result.stderr  # the differing tie is found


# --- what from_pretrained does --------------------------------------------------------


def gpt2_folder(transformers: ModuleType, path: Path) -> Path:
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=32)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    return path


def rewrite(path: Path, **changes: torch.Tensor) -> dict[str, torch.Tensor]:
    file = path / "model.safetensors"
    tensors = safetensors.torch.load_file(str(file))
    tensors.update(changes)
    safetensors.torch.save_file(tensors, str(file), {"format": "pt"})
    return tensors


def load(cls: Any, path: Path) -> tuple[Any, dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, info = cls.from_pretrained(path, output_loading_info=True)
    return model, info


def test_a_head_in_another_dtype_is_judged_after_the_cast(
    transformers: ModuleType, tmp_path: Path
) -> None:
    folder = gpt2_folder(transformers, tmp_path / "gpt2")
    exact = safetensors.torch.load_file(str(folder / "model.safetensors"))[WTE]
    exact = exact.to(torch.bfloat16).float()  # values bfloat16 holds exactly
    rewrite(folder, **{WTE: exact, HEAD: exact.to(torch.bfloat16)})
    assert ws.check(folder).findings == ()  # the cast copies agree: tied
    model, _ = load(transformers.GPT2LMHeadModel, folder)
    assert model.lm_head.weight is model.transformer.wte.weight
    rewrite(folder, **{HEAD: (exact + 1e-3).to(torch.bfloat16)})
    [finding] = ws.check(folder).findings
    assert finding.kind == "tie-differs"  # not a size mismatch
    model, _ = load(transformers.GPT2LMHeadModel, folder)
    assert model.lm_head.weight is not model.transformer.wte.weight  # untied


def test_a_forced_flag_is_quoted_as_forced_and_not_offered_as_the_fix(
    transformers: ModuleType, tmp_path: Path
) -> None:
    config = transformers.T5Config(
        vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2
    )
    folder = tmp_path / "t5"
    transformers.T5ForConditionalGeneration(config).save_pretrained(folder)
    settings = json.loads((folder / "config.json").read_text())
    settings["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(settings))
    rewrite(folder, **{HEAD: torch.randn(32, 8)})
    [finding] = ws.check(folder).findings
    assert finding.kind == "tie-differs"
    assert "whatever config.json says; config.json says false" in finding.message
    assert "tie_word_embeddings=true)" not in finding.message
    assert "set tie_word_embeddings to false" not in finding.fix
    model, _ = load(transformers.T5ForConditionalGeneration, folder)
    assert model.config.tie_word_embeddings  # forced back on
    assert model.lm_head.weight is not model.shared.weight  # loaded untied


def test_a_wrong_shape_whose_partner_is_not_saved_stops_from_pretrained(
    transformers: ModuleType, tmp_path: Path
) -> None:
    folder = gpt2_folder(transformers, tmp_path / "gpt2")
    rewrite(folder, **{WTE: torch.randn(33, 8)})
    [finding] = ws.check(folder).findings
    assert (finding.kind, finding.names) == ("model-shape", (WTE,))
    assert f"{WTE} is [33, 8] in the file, but the model built from " in (
        finding.message
    )
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        load(transformers.GPT2LMHeadModel, folder)


def test_legacy_key_names_are_renamed_by_transformers_rules(
    transformers: ModuleType, tmp_path: Path
) -> None:
    config = transformers.GPTNeoXConfig(
        vocab_size=32,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        tie_word_embeddings=False,
    )
    folder = tmp_path / "neox"
    transformers.GPTNeoXForCausalLM(config).save_pretrained(folder)
    keys = safetensors.torch.load_file(str(folder / "model.safetensors"))
    assert "embed_out.weight" in keys and HEAD not in keys  # the legacy name
    assert ws.check(folder).findings == ()
    del keys["embed_out.weight"]
    safetensors.torch.save_file(keys, str(folder / "model.safetensors"))
    [finding] = ws.check(folder).findings
    assert (finding.kind, finding.names) == ("untied-missing", (HEAD,))
    _, info = load(transformers.GPTNeoXForCausalLM, folder)
    assert info["missing_keys"] == {HEAD}


def test_no_architectures_means_a_model_with_its_head(
    transformers: ModuleType, tmp_path: Path
) -> None:
    config = transformers.BartConfig(
        vocab_size=32,
        d_model=8,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        max_position_embeddings=16,
    )
    folder = tmp_path / "bart"
    transformers.BartForConditionalGeneration(config).save_pretrained(folder)
    settings = json.loads((folder / "config.json").read_text())
    del settings["architectures"]
    (folder / "config.json").write_text(json.dumps(settings))
    rewrite(folder, **{HEAD: torch.randn(32, 8)})
    report = ws.check(folder)
    assert "BartForConditionalGeneration chosen by AutoModelForSeq2SeqLM" in (
        report.method
    )
    assert "tie-differs" in [f.kind for f in report.findings]


# --- safetensors.torch.save_model -----------------------------------------------------


def tied_module() -> nn.Module:
    model = nn.ModuleDict({"emb": nn.Embedding(6, 3), "head": nn.Linear(3, 6, False)})
    model.head.weight = model.emb.weight
    return model


def test_ties_recorded_by_save_model_are_read(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_model(tied_module(), str(path))
    report = ws.check(path)
    [tie] = report.ties
    assert (tie.source, set(tie.names), len(tie.saved)) == (
        "save_model",
        {"emb.weight", "head.weight"},
        1,
    )
    assert report.findings == ()
    meta = {"format": "pt", "head.weight": "emb.weight"}
    tensors = {"emb.weight": torch.randn(6, 3), "head.weight": torch.randn(6, 3)}
    safetensors.torch.save_file(tensors, str(path), meta)
    assert [f.kind for f in ws.check(path).findings] == ["tie-differs"]


# --- one rule for "stored once": identical bytes --------------------------------------


@pytest.mark.parametrize(
    ("second", "loads"),
    [(torch.tensor([-0.0, 1.0]), False), (torch.tensor([float("nan"), 1.0]), True)],
)
def test_check_and_load_share_the_stored_once_rule(
    tmp_path: Path, second: torch.Tensor, loads: bool
) -> None:
    first = torch.tensor([0.0, 1.0]) if not loads else second.clone()
    path = tmp_path / "m.safetensors"
    groups = json.dumps([["a.weight", "b.weight"]])
    tensors = {"a.weight": first, "b.weight": second}
    safetensors.torch.save_file(
        tensors, str(path), {"weightshare.shared_groups": groups}
    )
    kinds = [f.kind for f in ws.check(path).findings]
    model = nn.ModuleDict({"a": nn.Linear(2, 1, False), "b": nn.Linear(2, 1, False)})
    model.a.weight = model.b.weight = nn.Parameter(torch.zeros(2))
    if loads:
        assert kinds == ["duplicate"]  # identical bytes: loads, stored twice
        ws.load(model, path)
    else:
        assert kinds == ["tie-differs"]
        with pytest.raises(ws.CheckpointError, match=r"-0\.0 and"):
            ws.load(model, path)


# --- the command line -----------------------------------------------------------------


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    tensors = {f"t{i}": torch.randn(2) for i in range(400)}  # a long JSON report
    safetensors.torch.save_file(tensors, str(path))
    command = f"{sys.executable} -m weightshare check {path} --json | head -n 1"
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, check=False
    )
    assert result.stdout == "{\n"
    assert result.stderr == "", result.stderr


def flag_folder(path: Path, embedding: torch.Tensor, head: torch.Tensor) -> Path:
    path.mkdir()
    config = {"model_type": "gpt2", "tie_word_embeddings": True}
    (path / "config.json").write_text(json.dumps(config))
    tensors = {WTE: embedding, HEAD: head}
    safetensors.torch.save_file(tensors, str(path / "model.safetensors"))
    return path


def test_a_tie_stored_twice_is_judged_as_from_pretrained_does(tmp_path: Path) -> None:
    # from_pretrained compares a tie stored twice with torch.equal: -0.0 equals
    # +0.0 (tied), a NaN never equals itself (left untied)
    zero = torch.tensor([[0.0, 1.0]])
    signed = flag_folder(tmp_path / "signed", zero, torch.tensor([[-0.0, 1.0]]))
    assert ws.check(signed, use_transformers=False).findings == ()
    nan = torch.tensor([[float("nan"), 1.0]])
    with_nan = flag_folder(tmp_path / "nan", nan, nan.clone())
    kinds = [f.kind for f in ws.check(with_nan, use_transformers=False).findings]
    assert kinds == ["tie-differs", "duplicate"]


def test_a_folder_without_transformers_needs_no_torch(tmp_path: Path) -> None:
    weight = torch.randn(4, 2)
    folder = flag_folder(tmp_path / "twice", weight, weight.clone())
    code = (
        "import sys, weightshare; "
        f"report = weightshare.check({str(folder)!r}, use_transformers=False); "
        "print([f.kind for f in report.findings], 'torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "['duplicate'] False"
