"""A corpus of Hugging Face folders, generated: tiny models of many architectures.

Each architecture is built from a tiny config, saved with ``save_pretrained`` and
then damaged in the ways checkpoints break in practice (the tied pair stored
twice, or with different values, a missing or wrongly shaped member, a truncated
file, key names without the base model's prefix, no ``architectures`` in the
config, a head in another dtype, shards, a torch ``.bin``). The truth for each
folder is what ``from_pretrained(..., output_loading_info=True)`` does with it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

import weightshare as ws

SMALL = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1}
HEADS = {"num_attention_heads": 2, "intermediate_size": 32}
LLAMA = {**SMALL, **HEADS, "num_key_value_heads": 2, "head_dim": 8}
ENC_DEC = {
    "vocab_size": 64,
    "d_model": 16,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 32,
    "decoder_ffn_dim": 32,
    "max_position_embeddings": 32,
}
T5 = {
    "vocab_size": 64,
    "d_model": 16,
    "d_kv": 8,
    "d_ff": 32,
    "num_layers": 1,
    "num_heads": 2,
}

VISION = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 8,
    "patch_size": 4,
}

# (name, config class, model class, config arguments)
ARCHITECTURES: list[tuple[str, str, str, dict[str, Any]]] = [
    (
        "gpt2",
        "GPT2Config",
        "GPT2LMHeadModel",
        {"n_layer": 1, "n_head": 2, "n_embd": 16, "vocab_size": 64},
    ),
    (
        "llama-tied",
        "LlamaConfig",
        "LlamaForCausalLM",
        {**LLAMA, "tie_word_embeddings": True},
    ),
    (
        "llama",
        "LlamaConfig",
        "LlamaForCausalLM",
        {**LLAMA, "tie_word_embeddings": False},
    ),
    (
        "qwen2-tied",
        "Qwen2Config",
        "Qwen2ForCausalLM",
        {**LLAMA, "tie_word_embeddings": True},
    ),
    (
        "qwen3",
        "Qwen3Config",
        "Qwen3ForCausalLM",
        {**LLAMA, "tie_word_embeddings": True},
    ),
    (
        "mistral",
        "MistralConfig",
        "MistralForCausalLM",
        {**LLAMA, "tie_word_embeddings": False},
    ),
    (
        "phi",
        "PhiConfig",
        "PhiForCausalLM",
        {**SMALL, **HEADS, "tie_word_embeddings": True},
    ),
    (
        "gpt-neox",
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        {**SMALL, **HEADS, "tie_word_embeddings": False},
    ),
    (
        "gpt-neox-tied",
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        {**SMALL, **HEADS, "tie_word_embeddings": True},
    ),
    ("gemma", "GemmaConfig", "GemmaForCausalLM", {**LLAMA}),
    ("gemma2", "Gemma2Config", "Gemma2ForCausalLM", {**LLAMA}),
    ("gemma3-text", "Gemma3TextConfig", "Gemma3ForCausalLM", {**LLAMA}),
    (
        "opt",
        "OPTConfig",
        "OPTForCausalLM",
        {
            "vocab_size": 64,
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "ffn_dim": 32,
            "word_embed_proj_dim": 16,
        },
    ),
    (
        "bloom",
        "BloomConfig",
        "BloomForCausalLM",
        {"vocab_size": 64, "hidden_size": 16, "n_layer": 1, "n_head": 2},
    ),
    (
        "falcon",
        "FalconConfig",
        "FalconForCausalLM",
        {**SMALL, "num_attention_heads": 2},
    ),
    (
        "mpt",
        "MptConfig",
        "MptForCausalLM",
        {"vocab_size": 64, "d_model": 16, "n_layers": 1, "n_heads": 2},
    ),
    (
        "gptj",
        "GPTJConfig",
        "GPTJForCausalLM",
        {"vocab_size": 64, "n_embd": 16, "n_layer": 1, "n_head": 2, "rotary_dim": 4},
    ),
    ("bert", "BertConfig", "BertForMaskedLM", {**SMALL, **HEADS}),
    ("roberta", "RobertaConfig", "RobertaForMaskedLM", {**SMALL, **HEADS}),
    (
        "distilbert",
        "DistilBertConfig",
        "DistilBertForMaskedLM",
        {"vocab_size": 64, "dim": 16, "n_layers": 1, "n_heads": 2, "hidden_dim": 32},
    ),
    (
        "albert",
        "AlbertConfig",
        "AlbertForMaskedLM",
        {**SMALL, **HEADS, "embedding_size": 8},
    ),
    (
        "electra",
        "ElectraConfig",
        "ElectraForMaskedLM",
        {**SMALL, **HEADS, "embedding_size": 8},
    ),
    ("deberta-v2", "DebertaV2Config", "DebertaV2ForMaskedLM", {**SMALL, **HEADS}),
    ("t5", "T5Config", "T5ForConditionalGeneration", {**T5}),
    ("mt5", "MT5Config", "MT5ForConditionalGeneration", {**T5}),
    ("bart", "BartConfig", "BartForConditionalGeneration", {**ENC_DEC}),
    ("mbart", "MBartConfig", "MBartForConditionalGeneration", {**ENC_DEC}),
    ("pegasus", "PegasusConfig", "PegasusForConditionalGeneration", {**ENC_DEC}),
    (
        "marian",
        "MarianConfig",
        "MarianMTModel",
        {
            **ENC_DEC,
            "decoder_vocab_size": 64,
            "pad_token_id": 0,
            "decoder_start_token_id": 0,
            "eos_token_id": 1,
        },
    ),
    (
        "llava",
        "LlavaConfig",
        "LlavaForConditionalGeneration",
        {
            "vision_config": VISION,
            "text_config": {**LLAMA, "tie_word_embeddings": True},
            "image_token_index": 5,
            "tie_word_embeddings": True,
        },
    ),
    (
        "gemma3",
        "Gemma3Config",
        "Gemma3ForConditionalGeneration",
        {
            "vision_config": VISION,
            "text_config": {**LLAMA, "num_key_value_heads": 1},
            "mm_tokens_per_image": 4,
        },
    ),
    # Added by review: architectures of other families, each checked to agree.
    (
        "gpt-bigcode",
        "GPTBigCodeConfig",
        "GPTBigCodeForCausalLM",
        {"n_layer": 1, "n_head": 2, "n_embd": 16, "vocab_size": 64},
    ),
    ("xlm-roberta", "XLMRobertaConfig", "XLMRobertaForMaskedLM", {**SMALL, **HEADS}),
    (
        "flaubert",
        "FlaubertConfig",
        "FlaubertWithLMHeadModel",
        {"vocab_size": 64, "emb_dim": 16, "n_layers": 1, "n_heads": 2},
    ),
    (
        "mamba",
        "MambaConfig",
        "MambaForCausalLM",
        {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "state_size": 4},
    ),
    ("stablelm", "StableLmConfig", "StableLmForCausalLM", {**LLAMA}),
]

VARIANTS = (
    "clean",
    "sharded",
    "bin",
    "no-architectures",
    "prefixless",
    "stored-twice",
    "differing",
    "dtype-head",
    "wrong-shape-embedding",
    "wrong-shape-head",
    "missing-both",
    "untied-missing-head",
    "truncated",
)


@dataclass
class Folder:
    """One generated folder and how to load it."""

    name: str
    path: Path
    model_class: str


def build(
    transformers: Any, arch: tuple[str, str, str, dict[str, Any]], **extra: Any
) -> Any:
    """The tiny model of one architecture (seeded)."""
    _, config_class, model_class, arguments = arch
    config = getattr(transformers, config_class)(**{**arguments, **extra})
    torch.manual_seed(0)
    return getattr(transformers, model_class)(config)


def _names(model: Any) -> tuple[str | None, str | None]:
    """The parameter names of the input embedding and the output layer."""
    inputs, output = model.get_input_embeddings(), model.get_output_embeddings()
    modules = dict(model.named_modules(remove_duplicate=False))
    first = next((f"{n}.weight" for n, m in modules.items() if m is inputs), None)
    head = next((f"{n}.weight" for n, m in modules.items() if m is output), None)
    return first, head


def _in_file(
    model: Any, name: str | None, state: dict[str, torch.Tensor]
) -> str | None:
    """The file's key for a parameter: found by value (legacy names differ)."""
    if name is None:
        return None
    value = model.get_parameter(name).detach()
    found = [
        k for k, v in state.items() if v.shape == value.shape and torch.equal(v, value)
    ]
    return (
        min(found, key=lambda k: (k.split(".")[-1] != name.split(".")[-1], len(k)))
        if found
        else None
    )


def generate(
    transformers: Any,
    root: Path,
    archs: list[str] | None = None,
    variants: tuple[str, ...] = VARIANTS,
) -> Iterator[Folder]:
    """Write each architecture's folders under ``root``; yield them as written."""
    for arch in ARCHITECTURES:
        if archs is not None and arch[0] not in archs:
            continue
        yield from _variants(transformers, root, arch, variants)


def _variants(
    transformers: Any,
    root: Path,
    arch: tuple[str, str, str, dict[str, Any]],
    wanted: tuple[str, ...],
) -> Iterator[Folder]:
    name, _, model_class, _ = arch
    model = build(transformers, arch)
    clean = root / f"{name}--clean"
    model.save_pretrained(clean)
    state = safetensors.torch.load_file(str(clean / "model.safetensors"))
    keys = set(state)
    prefix = model.base_model_prefix
    embedding, head = _names(model)
    emb_key = _in_file(model, embedding, state)
    head_key = _in_file(model, head, state) if head else None
    if head_key == emb_key:  # a tied head has the embedding's values: not saved
        head_key = None
    tied = bool(head) and any(
        embedding in g and head in g for g in ws.shared_groups(model)
    )
    if head and head_key is None:
        head_key = head if emb_key == embedding else head.removeprefix(f"{prefix}.")

    def folder(variant: str, edit: Callable[[Path], None]) -> Iterator[Folder]:
        if variant not in wanted:
            return
        path = root / f"{name}--{variant}"
        shutil.copytree(clean, path)
        edit(path)
        yield Folder(f"{name}--{variant}", path, model_class)

    def tensors(changes: dict[str, torch.Tensor | None]) -> Callable[[Path], None]:
        def edit(path: Path) -> None:
            new = dict(state)
            for key, value in changes.items():
                if value is None:
                    new.pop(key, None)
                else:
                    new[key] = value
            safetensors.torch.save_file(
                new, str(path / "model.safetensors"), {"format": "pt"}
            )

        return edit

    def config(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
        def edit(path: Path) -> None:
            settings = json.loads((path / "config.json").read_text())
            change(settings)
            (path / "config.json").write_text(json.dumps(settings))

        return edit

    if "clean" in wanted:
        yield Folder(f"{name}--clean", clean, model_class)

    def sharded(path: Path) -> None:
        (path / "model.safetensors").unlink()
        model.save_pretrained(path, max_shard_size="4KB")

    def as_bin(path: Path) -> None:
        (path / "model.safetensors").unlink()
        torch.save(model.state_dict(), path / "pytorch_model.bin")

    def truncate(path: Path) -> None:
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[: len(data) - 100])

    yield from folder("sharded", sharded)
    yield from folder("bin", as_bin)
    yield from folder(
        "no-architectures", config(lambda c: c.pop("architectures", None))
    )
    if prefix and any(k.startswith(f"{prefix}.") for k in keys):
        stripped = {k.removeprefix(f"{prefix}."): v for k, v in state.items()}
        changes: dict[str, torch.Tensor | None] = {k: None for k in state}
        changes.update(stripped)
        yield from folder("prefixless", tensors(changes))
    yield from folder("truncated", truncate)
    if emb_key is None or head_key is None:
        return
    source = state[emb_key]
    generator = torch.Generator().manual_seed(1)
    other = torch.randn(source.shape, generator=generator)
    wider = torch.randn((source.shape[0] + 1, *source.shape[1:]), generator=generator)
    if tied:
        yield from folder("stored-twice", tensors({head_key: source.clone()}))
        yield from folder("differing", tensors({head_key: other}))
        yield from folder("dtype-head", tensors({head_key: other.to(torch.bfloat16)}))
        yield from folder("wrong-shape-embedding", tensors({emb_key: wider}))
        yield from folder("wrong-shape-head", tensors({head_key: wider}))
        yield from folder("missing-both", tensors({emb_key: None, head_key: None}))
    untied = build(transformers, arch, tie_word_embeddings=False)
    path = root / f"{name}--untied-missing-head"
    if "untied-missing-head" in wanted:
        untied.save_pretrained(path)
        file = path / "model.safetensors"
        saved = safetensors.torch.load_file(str(file))
        key = _in_file(untied, head, saved)
        saved.pop(key or "", None)
        safetensors.torch.save_file(saved, str(file), {"format": "pt"})
        yield Folder(path.name, path, model_class)
