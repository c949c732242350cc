"""E2LLM.from_pretrained("default") with the shipped checkpoint missing or damaged is an error
that says how to reinstall it; it used to fall back to an untrained adapter (noise answers)
with only a warning, and most real-model tests still passed on that adapter."""
from __future__ import annotations

import shutil
import warnings

import pytest

from e2llm import E2LLM, CheckpointError
from e2llm import defaults


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A copy of the shipped checkpoint that the test may damage, standing in for the real one."""
    folder = tmp_path / "default"
    shutil.copytree(defaults.SHIPPED_CHECKPOINT, folder)
    monkeypatch.setattr(defaults, "SHIPPED_CHECKPOINT", folder)
    return folder


def load_default():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "untrained" warning in place of the error
        return E2LLM.from_pretrained("default")


@pytest.mark.parametrize("lost", ["config.json", "model.safetensors"])
def test_missing_shipped_files_say_how_to_reinstall(shipped, lost):
    (shipped / lost).unlink()
    with pytest.raises(CheckpointError, match=f"lacks {lost}.*reinstall e2llm.*git checkout -- core/e2llm/checkpoints/default"):
        load_default()
    shutil.rmtree(shipped)
    with pytest.raises(CheckpointError, match="lacks config.json and model.safetensors.*pip install --force-reinstall"):
        load_default()


def test_damaged_shipped_files_say_how_to_reinstall(shipped):
    weights = (shipped / "model.safetensors").read_bytes()
    (shipped / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # a truncated download
    with pytest.raises(CheckpointError, match=r"shipped with e2llm is damaged \(.*corrupted or truncated.*reinstall e2llm"):
        load_default()
    (shipped / "model.safetensors").write_bytes(weights)
    (shipped / "config.json").write_text('{"format_version": 1, "encoder": ', encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"shipped with e2llm is damaged.*reinstall e2llm"):
        load_default()


def test_shipped_tensors_that_do_not_fit_say_how_to_reinstall(shipped, tiny_backbones):
    """Readable files whose tensors do not fit the model they name: caught after the backbones
    load (the tiny ones here, so the test stays fast)."""
    import torch
    from safetensors.torch import save_file

    from e2llm.testing import tiny_config

    (shipped / "config.json").write_text(tiny_config(*tiny_backbones).to_json(), encoding="utf-8")
    save_file({"adapter.bogus": torch.zeros(2)}, str(shipped / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"shipped with e2llm is damaged \(.*does not match this model.*reinstall e2llm"):
        load_default()


def test_a_folder_checkpoint_keeps_its_own_errors(tmp_path):
    """Only the shipped checkpoint is a reinstall: a user's folder names the folder."""
    with pytest.raises(CheckpointError, match="checkpoint folder not found") as caught:
        E2LLM.from_pretrained(tmp_path / "mine")
    assert "reinstall" not in str(caught.value)
