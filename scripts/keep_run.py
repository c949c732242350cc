"""Keep a training run across machines (issue 32's long CPU run): its newest checkpoint's weights
in bf16 (no optimizer state), its step and config, its log and loss plot, in a folder small
enough to commit. A later session resumes it with a fresh optimizer:

    python scripts/keep_run.py runs/i32-icae16 checkpoints/research/i32-icae16
    # in the run's config: continue_from: checkpoints/research/i32-icae16, then
    e2llm train --config configs/experiments/i32/icae16.yaml --resume
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from e2llm.checkpoint import CONFIG_NAME, WEIGHTS_NAME, atomic_write_dir
from e2llm.train.trainer import STATE_NAME, latest_checkpoint


def keep(run: Path, dest: Path) -> Path:
    ck = latest_checkpoint(run)
    if ck is None:
        raise SystemExit(f"{run}: no checkpoint yet (checkpoints/step-*); train until its first save_every")
    state = json.loads((ck / STATE_NAME).read_text())
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(str(ck / WEIGHTS_NAME)).items()}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_NAME))
        shutil.copyfile(ck / CONFIG_NAME, tmp / CONFIG_NAME)
        (tmp / STATE_NAME).write_text(json.dumps({"step": state["step"], "train_config": state["train_config"]}))
        log = [line for line in (run / "log.jsonl").read_text().splitlines()
               if line.strip() and json.loads(line).get("step", 0) <= state["step"]]
        (tmp / "log.jsonl").write_text("".join(line + "\n" for line in log))
        if (run / "loss.png").exists():
            shutil.copyfile(run / "loss.png", tmp / "loss.png")

    atomic_write_dir(dest, write)
    size = sum(f.stat().st_size for f in dest.iterdir()) / 2**20
    print(f"kept {ck.name} of {run} in {dest} ({size:.1f} MiB)")
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    keep(Path(sys.argv[1]), Path(sys.argv[2]))
