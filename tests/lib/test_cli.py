"""The command line ``weightshare check``: output, JSON and exit status 0, 1 or 2.

In-process through ``weightshare._checkpoint._cli.main`` and as a real process through
``python -m weightshare``; the console script entry point is read from
pyproject.toml (installing it would need a reinstall of the package).
"""

from __future__ import annotations

import importlib
import json
import runpy
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import safetensors.torch
import torch

from weightshare._checkpoint._cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A clean file, a file with a duplicate, a truncated file."""
    weight = torch.randn(4, 3)
    clean = tmp_path / "clean.safetensors"
    safetensors.torch.save_file({"w": weight}, str(clean))
    twice = tmp_path / "twice.safetensors"
    safetensors.torch.save_file({"a": weight, "b": weight.clone()}, str(twice))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(clean.read_bytes()[:-4])
    return {"clean": clean, "twice": twice, "truncated": truncated}


def test_clean_file_exits_0(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(files["clean"])]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{files['clean']}: safetensors file (clean.safetensors)\n")
    assert out.rstrip().endswith("findings: none")
    assert err == ""


def test_findings_exit_1(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(files["twice"])]) == 1
    out, _ = capsys.readouterr()
    assert "findings: 1\n  1. duplicate: a and b hold identical bytes" in out


def test_unreadable_exits_2_with_one_line(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(files["truncated"])]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"weightshare check: error: {files['truncated']}: truncated")


def test_several_paths_report_each_and_exit_with_the_worst(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [str(files[name]) for name in ("clean", "twice")]
    assert main(["check", *paths]) == 1
    out, _ = capsys.readouterr()
    assert out.count("safetensors file") == 2
    assert "\n\n" in out  # a blank line between reports
    assert main(["check", *paths, str(files["truncated"])]) == 2


def test_json_report(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [str(files[name]) for name in ("clean", "twice", "truncated")]
    assert main(["check", "--json", *paths]) == 2
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert document["schema"] == 1 and document["status"] == 2
    assert [r["status"] for r in document["reports"]] == [0, 1]
    [finding] = document["reports"][1]["findings"]
    assert (finding["kind"], finding["names"], finding["bytes"]) == (
        "duplicate",
        ["a", "b"],
        48,
    )
    [error] = document["errors"]
    assert error["path"] == paths[2] and "truncated" in error["problem"]
    assert err.startswith("weightshare check: error: ")


def test_no_transformers_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.json").write_text('{"tie_word_embeddings": true}')
    weight = torch.randn(5, 2)
    state = {"model.embed_tokens.weight": weight, "lm_head.weight": weight + 1}
    safetensors.torch.save_file(state, str(tmp_path / "model.safetensors"))
    assert main(["check", "--no-transformers", str(tmp_path)]) == 1
    out, _ = capsys.readouterr()
    assert "(transformers not used)" in out and "tie-differs" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["check"], ["inspect", "x"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    assert "usage: weightshare" in capsys.readouterr().err


def test_python_dash_m_exit_codes(files: dict[str, Path], tmp_path: Path) -> None:
    expected = {"clean": 0, "twice": 1, "truncated": 2}
    for name, status in expected.items():
        run = subprocess.run(
            [sys.executable, "-m", "weightshare", "check", str(files[name])],
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode == status, run.stderr
        assert "Traceback" not in run.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "weightshare", "check", str(tmp_path / "none.pt")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2
    assert missing.stderr == (
        f"weightshare check: error: {tmp_path / 'none.pt'}: no such file or folder\n"
    )


def test_console_script_entry_point_is_main() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["weightshare"].partition(":")
    assert getattr(importlib.import_module(module), name) is main


def test_module_main_exits_with_the_status(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["weightshare", "check", str(files["twice"])])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("weightshare", run_name="__main__")
    assert info.value.code == 1


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("json_option", [[], ["--json"]])
def test_unwritable_output_is_one_line_not_a_traceback(
    files: dict[str, Path], json_option: list[str]
) -> None:
    with open("/dev/full", "w") as full:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "weightshare",
                "check",
                str(files["clean"]),
                *json_option,
            ],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    assert run.returncode == 2
    assert run.stderr == (
        "weightshare check: error: cannot write the report to standard output (no "
        "space left on device); redirect it to a file or pipe that can be written\n"
    )
