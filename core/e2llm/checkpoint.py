"""Checkpoint files: ``config.json`` + ``model.safetensors`` holding only what trains.

Backbones are named in the config (id or path), never copied. Writes are atomic (temp
folder, then rename), so an interrupted save leaves the previous checkpoint loadable.
Nothing is ever unpickled.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import E2LLMConfig
from .errors import CheckpointError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def atomic_write_dir(target: Path, write) -> None:
    """Call write(tmp_dir), then swap tmp_dir into place of `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        for f in tmp.iterdir():  # data on disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the tensors holding NaN or inf: the weights of a run that diverged."""
    return sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))


def refuse_nonfinite(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    bad = nonfinite_tensors(tensors)
    if bad:
        raise CheckpointError(f"refusing to save {path}: {len(bad)} tensors hold NaN or inf (e.g. {bad[0]}), the "
                              "training diverged; whatever was saved there before is kept")


def save_checkpoint(path: Path, config: E2LLMConfig, tensors: Mapping[str, torch.Tensor], extra_files: Mapping[str, str] = {}) -> None:
    refuse_nonfinite(path, tensors)

    def write(tmp: Path) -> None:
        (tmp / CONFIG_NAME).write_text(config.to_json(), encoding="utf-8")
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS_NAME),
                  metadata={"format": "pt", "e2llm_format_version": str(config.format_version)})
        for name, text in extra_files.items():
            (tmp / name).write_text(text, encoding="utf-8")

    atomic_write_dir(Path(path), write)


def read_config(path: Path) -> E2LLMConfig:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {path}")
    cfg_file = path / CONFIG_NAME
    if not cfg_file.exists():
        raise CheckpointError(f"{path} is not an e2llm checkpoint: {CONFIG_NAME} is missing")
    return E2LLMConfig.from_file(cfg_file)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    weights = Path(path) / WEIGHTS_NAME
    if not weights.exists():
        raise CheckpointError(f"{path}: {WEIGHTS_NAME} is missing; the checkpoint is incomplete, save or copy it again")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: corrupted or truncated ({e}); save or copy it again") from None


def check_tensors(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse a checkpoint whose tensors do not match the model, naming the mismatch."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [(k, tuple(found[k].shape), tuple(v.shape)) for k, v in expected.items() if k in found and found[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
    if shapes:
        k, got, want = shapes[0]
        problems.append(f"{len(shapes)} shape mismatches (e.g. {k}: checkpoint {got}, model {want})")
    if problems:
        raise CheckpointError(f"{source} does not match this model: " + "; ".join(problems)
                              + "; it was saved with another config or other backbones")
    bad = nonfinite_tensors(found)
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} tensors hold NaN or inf (e.g. {bad[0]}); the training run that "
                              "wrote it diverged: load an earlier checkpoint")
