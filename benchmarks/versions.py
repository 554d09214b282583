"""Which releases of transformers, peft, accelerate and safetensors each failure bites.

Every failure on the site's Fix pages that depends on a third-party version has a
minimal reproduction here (a tiny model from a config, nothing downloaded). The
script runs all of them once per *environment*: the pinned versions of this
project's ``.venv``, and older releases installed, each set into its own folder
with ``pip install --no-deps --target`` (they are pure Python wheels, except
safetensors, which has one wheel for all Python 3 versions) and put in front of the
pinned torch with ``PYTHONPATH``. An environment whose releases cannot import or run
with the pinned torch is recorded as such, not skipped.

Each reproduction answers one question with ``True`` (the failure happens on that
version), ``False`` (it does not) or ``None`` (it cannot run there: a feature is
missing, the error says which). The result is printed as a table and written to
``benchmarks/results/versions-<UTC date>.json`` with the exact versions of every
environment. The site renders that file on the symptom index
(``docs/_ext/version_table.py``); ``tests/benchmarks/test_versions.py`` runs the
reproductions on the pinned versions and compares them with the file's pinned
column, so the table cannot drift from what the pages show.

Usage: python benchmarks/versions.py [--envs DIR] [--out DIR] [--only LABEL ...]
(``make versions``; the first run installs the old releases, about a minute.)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ENVS = ROOT / "_build" / "versions"
PINNED = "pinned"
#: label -> the releases installed for it (``PINNED``: the project's .venv as is).
ENVIRONMENTS: dict[str, list[str]] = {
    "transformers 4.45": [
        "transformers==4.45.2",
        "tokenizers==0.20.3",
        "huggingface_hub==0.26.5",
        "peft==0.13.2",
        "accelerate==1.1.1",
        "safetensors==0.4.5",
    ],
    "transformers 4.46": [
        "transformers==4.46.3",
        "tokenizers==0.20.3",
        "huggingface_hub==0.26.5",
        "peft==0.13.2",
        "accelerate==1.1.1",
        "safetensors==0.4.5",
    ],
    "transformers 4.57": [
        "transformers==4.57.6",
        "tokenizers==0.22.1",
        "huggingface_hub==0.36.0",
        "peft==0.17.1",
        "accelerate==1.10.1",
    ],
    "transformers 5.0": [
        "transformers==5.0.0",
        "tokenizers==0.22.2",
        "huggingface_hub==1.3.7",
        "httpx==0.28.1",
        "httpcore==1.0.9",
        "typer-slim==0.24.0",
        "peft==0.18.1",
    ],
    PINNED: [],
}
PACKAGES = ("transformers", "peft", "accelerate", "safetensors", "torch")

Repro = Callable[[], tuple[bool, str]]
#: id -> (page stem, the failure in words, the function that reproduces it)
REPROS: dict[str, tuple[str, str, Repro]] = {}


def repro(page: str, failure: str) -> Callable[[Repro], Repro]:
    """Register a reproduction: it returns (the failure happened, what was seen)."""

    def register(function: Repro) -> Repro:
        REPROS[function.__name__] = (page, failure, function)
        return function

    return register


# ----------------------------------------------------------------------------------
# Tiny models (run inside the environment under test)


def _quiet() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _gpt2(tie: bool | None = True, vocab: int = 16) -> Any:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    flag = {} if tie is None else {"tie_word_embeddings": tie}
    sizes = dict(vocab_size=vocab, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    return GPT2LMHeadModel(GPT2Config(**sizes, bos_token_id=0, eos_token_id=0, **flag))


def _llama(tie: bool = True) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    sizes = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1)
    heads = dict(num_attention_heads=2, num_key_value_heads=2)
    return LlamaForCausalLM(
        LlamaConfig(vocab_size=32, **sizes, **heads, tie_word_embeddings=tie)
    )


def _tied(model: Any) -> bool:
    head = model.get_output_embeddings().weight
    return bool(head is model.get_input_embeddings().weight)


@contextlib.contextmanager
def _folder() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as folder:
        yield folder


def _edit_config(folder: str, drop: str) -> None:
    path = Path(folder, "config.json")
    config = json.loads(path.read_text())
    config.pop(drop, None)
    path.write_text(json.dumps(config))


def _tiny_lm_class(tied_keys: object) -> tuple[Any, Any]:
    """A custom config and model class, as a user's own code would declare them."""
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel

    class TinyConfig(PretrainedConfig):
        model_type = "tiny-lm"

        def __init__(self, vocab_size: int = 16, width: int = 8, **kw: Any) -> None:
            self.vocab_size, self.width = vocab_size, width
            super().__init__(**kw)

    class TinyLM(PreTrainedModel):
        config_class = TinyConfig
        _tied_weights_keys = tied_keys

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.embed = nn.Embedding(config.vocab_size, config.width)
            self.lm_head = nn.Linear(config.width, config.vocab_size, bias=False)
            self.post_init()

        def get_input_embeddings(self) -> Any:
            return self.embed

        def get_output_embeddings(self) -> Any:
            return self.lm_head

    return TinyConfig, TinyLM


# ----------------------------------------------------------------------------------
# fix_save_load/plot_save_load_tied


@repro("plot_save_load_tied", "save_file refuses a tied state dict")
def save_file_shared_memory() -> tuple[bool, str]:
    import safetensors.torch
    import torch

    weight = torch.zeros(4, 2)
    with _folder() as folder:
        try:
            path = os.path.join(folder, "m.safetensors")
            safetensors.torch.save_file({"a": weight, "b": weight}, path)
        except RuntimeError as err:
            return "Some tensors share memory" in str(err), "RuntimeError"
    return False, "saved without error"


@repro(
    "plot_save_load_tied",
    "an untied checkpoint loaded with tie_word_embeddings=True loses its saved head",
)
def untied_loaded_as_tied() -> tuple[bool, str]:
    import torch

    _quiet()
    untied = _gpt2(tie=False)
    with _folder() as folder:
        untied.save_pretrained(folder)
        loaded = type(untied).from_pretrained(folder, tie_word_embeddings=True)
    kept = torch.equal(loaded.lm_head.weight, untied.lm_head.weight)
    return not kept, "head overwritten, tied" if not kept else "both kept, untied"


@repro(
    "plot_save_load_tied",
    "a tied checkpoint loaded with tie_word_embeddings=False gets a random head",
)
def tied_loaded_as_untied() -> tuple[bool, str]:
    import torch

    _quiet()
    tied = _gpt2(tie=True)
    with _folder() as folder:
        tied.save_pretrained(folder)
        loaded = type(tied).from_pretrained(folder, tie_word_embeddings=False)
    random = not torch.equal(loaded.lm_head.weight, tied.lm_head.weight)
    return random, "lm_head newly initialised" if random else "head loaded"


# ----------------------------------------------------------------------------------
# fix_build/plot_meta_device_init


@repro("plot_meta_device_init", "init_empty_weights() builds an HF model untied")
def init_empty_weights_unties() -> tuple[bool, str]:
    from accelerate import init_empty_weights

    _quiet()
    with init_empty_weights():
        model = _gpt2(tie=True)
    return not _tied(model), "untied" if not _tied(model) else "tied"


# ----------------------------------------------------------------------------------
# fix_adapt/plot_lora_tied_head


@repro("plot_lora_tied_head", "merging a LoRA on a tied lm_head changes the embedding")
def lora_head_merge_changes_embedding() -> tuple[bool, str]:
    import torch
    from peft import LoraConfig, get_peft_model

    _quiet()
    model = _llama(tie=True)
    before = model.model.embed_tokens.weight.detach().clone()
    config = LoraConfig(r=2, target_modules=["lm_head"], init_lora_weights=False)
    merged = get_peft_model(model, config).merge_and_unload()
    changed = not torch.equal(merged.model.embed_tokens.weight, before)
    return changed, "embedding changed" if changed else "embedding unchanged"


@repro(
    "plot_lora_tied_head",
    "modules_to_save copies of a tied pair: the reloaded merge loses the trained head",
)
def modules_to_save_reload_overwrites_head() -> tuple[bool, str]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    _quiet()
    save = ["embed_tokens", "lm_head"]
    config = LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=save)
    peft_model = get_peft_model(_llama(tie=True), config)
    with torch.no_grad():  # stands for training: the two copies move apart
        for name, parameter in peft_model.named_parameters():
            if "modules_to_save" in name:
                parameter.add_(torch.randn_like(parameter))
    merged = peft_model.merge_and_unload()
    with _folder() as folder:
        merged.save_pretrained(folder)
        reloaded = AutoModelForCausalLM.from_pretrained(folder)
    lost = not torch.equal(reloaded.lm_head.weight, merged.lm_head.weight)
    return lost, "head overwritten on reload" if lost else "trained head kept"


@repro("plot_lora_tied_head", "peft has no ensure_weight_tying option (the fix)")
def no_ensure_weight_tying() -> tuple[bool, str]:
    import dataclasses

    from peft import LoraConfig

    fields = {field.name for field in dataclasses.fields(LoraConfig)}
    present = "ensure_weight_tying" in fields
    return not present, "option present" if present else "option missing"


# ----------------------------------------------------------------------------------
# fix_save_load/plot_transformers_v5_ties


@repro(
    "plot_transformers_v5_ties",
    "a v4 list _tied_weights_keys raises 'list' object has no attribute 'keys'",
)
def list_tied_weights_keys() -> tuple[bool, str]:
    _quiet()
    config_class, model_class = _tiny_lm_class(["lm_head.weight"])
    try:
        model = model_class(config_class(tie_word_embeddings=True))
    except AttributeError as err:
        return "'list' object has no attribute 'keys'" in str(err), "AttributeError"
    return False, "tied" if _tied(model) else "built, untied"


@repro(
    "plot_transformers_v5_ties",
    "a custom config without tie_word_embeddings leaves a declared tie untied",
)
def custom_config_without_flag() -> tuple[bool, str]:
    _quiet()
    config_class, model_class = _tiny_lm_class({"lm_head.weight": "embed.weight"})
    model = model_class(config_class())
    return not _tied(model), "tied" if _tied(model) else "untied"


@repro(
    "plot_transformers_v5_ties",
    "config.json without the flag: two different saved matrices tied, head lost",
)
def missing_flag_ties_different_weights() -> tuple[bool, str]:
    import torch

    _quiet()
    untied = _gpt2(tie=False)
    with _folder() as folder:
        untied.save_pretrained(folder)
        _edit_config(folder, "tie_word_embeddings")
        loaded = type(untied).from_pretrained(folder)
    lost = not torch.equal(loaded.lm_head.weight, untied.lm_head.weight)
    return lost, "head overwritten, tied" if lost else "both kept, untied, warned"


@repro(
    "plot_transformers_v5_ties",
    "a tied pair saved twice with equal values loads untied",
)
def equal_pair_saved_twice_untied() -> tuple[bool, str]:
    import safetensors.torch

    _quiet()
    tied = _gpt2(tie=True)
    with _folder() as folder:
        tied.save_pretrained(folder)
        state = {k: v.clone().contiguous() for k, v in tied.state_dict().items()}
        path = os.path.join(folder, "model.safetensors")
        safetensors.torch.save_file(state, path, metadata={"format": "pt"})
        loaded = type(tied).from_pretrained(folder)
    return not _tied(loaded), "untied" if not _tied(loaded) else "tied"


@repro(
    "plot_transformers_v5_ties",
    "a checkpoint holding only lm_head.weight does not load as a tied model",
)
def only_head_saved() -> tuple[bool, str]:
    import safetensors.torch
    import torch

    _quiet()
    tied = _gpt2(tie=True)
    with _folder() as folder:
        tied.save_pretrained(folder)
        path = os.path.join(folder, "model.safetensors")
        state = safetensors.torch.load_file(path)
        state["lm_head.weight"] = state.pop("transformer.wte.weight")
        safetensors.torch.save_file(state, path, metadata={"format": "pt"})
        try:
            loaded = type(tied).from_pretrained(folder)
        except Exception as err:  # 4.57 fails here; a failure, not a missing feature
            return True, f"from_pretrained raises {type(err).__name__}"
    wte = loaded.transformer.wte.weight
    if wte.is_meta:
        return True, "embedding left on the meta device"
    random = not torch.equal(wte, tied.transformer.wte.weight)
    return random, "embedding random" if random else "embedding loaded from the head"


@repro(
    "plot_transformers_v5_ties",
    "a VLM ignores a top-level tie_word_embeddings=False (text_config decides)",
)
def vlm_top_level_flag_ignored() -> tuple[bool, str]:
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    _quiet()
    torch.manual_seed(0)
    text = LlamaConfig(
        vocab_size=32,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    vision = CLIPVisionConfig(
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=8,
        patch_size=4,
    )
    config = LlavaConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=False
    )
    model = LlavaForConditionalGeneration(config)
    return _tied(model), "tied" if _tied(model) else "untied"


# ----------------------------------------------------------------------------------
# fix_adapt/plot_resize_vocabulary


@repro(
    "plot_resize_vocabulary",
    "resize_token_embeddings gives new rows random values (not the mean)",
)
def resize_random_rows() -> tuple[bool, str]:
    import torch

    _quiet()
    model = _gpt2(tie=True)
    with torch.no_grad():  # rows far from zero, as in a trained model
        model.transformer.wte.weight.sub_(3.0)
    mean = model.transformer.wte.weight.detach().mean(0)
    model.resize_token_embeddings(20)
    new = model.transformer.wte.weight.detach()[16:]
    near = bool((new - mean).norm(dim=1).max() < 0.1)
    return not near, "random rows" if not near else "rows at the mean"


@repro(
    "plot_resize_vocabulary",
    "an adapter saved on a resized vocabulary fails on the base size: size mismatch",
)
def adapter_on_resized_vocabulary() -> tuple[bool, str]:
    from peft import LoraConfig, PeftModel, get_peft_model

    _quiet()
    resized = _llama(tie=True)
    resized.resize_token_embeddings(40)
    config = LoraConfig(
        r=2, target_modules=["q_proj"], modules_to_save=["embed_tokens"]
    )
    adapted = get_peft_model(resized, config)
    with _folder() as folder:
        adapted.save_pretrained(folder)
        try:
            PeftModel.from_pretrained(_llama(tie=True), folder)
        except RuntimeError as err:
            return "size mismatch" in str(err), "RuntimeError: size mismatch"
    return False, "loaded"


# ----------------------------------------------------------------------------------
# Running


def run_all() -> dict[str, Any]:
    """Run every reproduction here; the versions and each outcome (a child's job)."""
    from importlib import metadata

    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    results = {}
    for name, (_, _, function) in REPROS.items():
        try:
            happened, seen = function()
            results[name] = {"reproduces": happened, "seen": seen}
        except Exception as err:  # a version that cannot run it: record why
            first = str(err).strip().splitlines()[0][:160] if str(err) else ""
            results[name] = {
                "reproduces": None,
                "seen": f"cannot run: {type(err).__name__}: {first}",
            }
    return {"versions": versions, "results": results}


def install(label: str, folder: Path) -> None:
    """Install an environment's releases into ``folder`` (once)."""
    if (folder / ".complete").exists():
        return
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    command += ["--disable-pip-version-check", "--target", str(folder)]
    subprocess.run([*command, *ENVIRONMENTS[label]], check=True)
    (folder / ".complete").write_text("\n".join(ENVIRONMENTS[label]) + "\n")


def run_environment(label: str, envs: Path) -> dict[str, Any]:
    """Run the reproductions in a child process under the environment ``label``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    if ENVIRONMENTS[label]:
        folder = envs / label.replace(" ", "-")
        install(label, folder)
        env["PYTHONPATH"] = str(folder)
    child = subprocess.run(
        [sys.executable, __file__, "--child"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    if child.returncode != 0:
        lines = (child.stderr or child.stdout).strip().splitlines() or ["no output"]
        return {"label": label, "cannot_run": lines[-1][:200], "results": {}}
    return {"label": label, **json.loads(child.stdout.strip().splitlines()[-1])}


def table(data: dict[str, Any]) -> str:
    """The result as a plain-text table: one row per reproduction."""
    envs = data["environments"]
    rows = [["reproduction", *[env["label"] for env in envs]]]
    marks = {True: "yes", False: "no", None: "cannot run"}
    for name in data["repros"]:
        cells = [marks[env["results"].get(name, {}).get("reproduces")] for env in envs]
        rows.append([name, *cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--envs", type=Path, default=ENVS, help="install folder")
    parser.add_argument("--out", type=Path, default=RESULTS, help="result folder")
    parser.add_argument("--only", nargs="+", choices=list(ENVIRONMENTS), default=None)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_all()))
        return 0
    now = datetime.datetime.now(datetime.UTC)
    labels = args.only or list(ENVIRONMENTS)
    data = {
        "benchmark": "versions",
        "date": now.isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "repros": {
            name: {"page": page, "failure": failure}
            for name, (page, failure, _) in REPROS.items()
        },
        "environments": [run_environment(label, args.envs) for label in labels],
    }
    print(table(data))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"versions-{now:%Y-%m-%d}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"written: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
