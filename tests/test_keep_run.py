"""A long run kept across machines (issue 32): scripts/keep_run.py writes weights (bf16), step
and log without optimizer state; continue_from + --resume goes on from that step."""
import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from e2llm.train import Trainer

from test_train import tiny_data, tiny_train_config

ROOT = Path(__file__).resolve().parents[1]


def _keep_run():
    spec = importlib.util.spec_from_file_location("keep_run", ROOT / "scripts" / "keep_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.keep


def test_a_kept_run_continues_at_its_step_with_its_weights_and_log(tiny_backbones, tmp_path):
    cfg = tiny_train_config(tiny_backbones, tmp_path / "run", max_steps=4, warmup_steps=2)
    first = Trainer(cfg, data=tiny_data())
    first.train()
    kept = _keep_run()(tmp_path / "run", tmp_path / "kept")
    assert sorted(p.name for p in kept.iterdir()) == ["config.json", "log.jsonl", "loss.png", "model.safetensors",
                                                       "trainer_state.json"]
    assert all(v.dtype == torch.bfloat16 for v in load_file(str(kept / "model.safetensors")).values())
    assert "optimizer" not in json.loads((kept / "trainer_state.json").read_text())

    # another machine: the run folder is gone, the kept copy is in the repository
    cfg2 = cfg.model_copy(update={"output_dir": str(tmp_path / "again"), "continue_from": str(kept),
                                  "optim": cfg.optim.model_copy(update={"max_steps": 6})})
    second = Trainer(cfg2, data=tiny_data())
    start = second._resume()
    assert start == 4 and second.rewarm_from == 4
    want = {k: v.float() for k, v in load_file(str(kept / "model.safetensors")).items()}
    got = second.engine.trained_state_dict()
    assert all(torch.equal(got[k].float(), want[k]) for k in want)  # the kept weights, as kept
    second = Trainer(cfg2, data=tiny_data())
    second.train(resume=True)
    steps = [json.loads(line)["step"] for line in (tmp_path / "again" / "log.jsonl").read_text().splitlines()]
    assert steps[:4] == [1, 2, 3, 4] and 5 in steps and 6 in steps  # the old log, then the new steps
    recs = [json.loads(line) for line in (tmp_path / "again" / "log.jsonl").read_text().splitlines()]
    lr5 = next(r["lr"] for r in recs if r["step"] == 5)
    assert lr5 < cfg.optim.lr  # the fresh optimizer warms up again from step 4


def test_a_run_resumes_with_another_grad_accum_on_the_same_curve(tiny_backbones, tmp_path):
    """Smaller micro-batches when a run outgrows its memory (longer windows under the curriculum):
    the step's samples and its loss normalisation are the same, so the curve is too."""
    straight = tiny_train_config(tiny_backbones, tmp_path / "a", max_steps=4, batch_size=4, grad_accum=1)
    Trainer(straight, data=tiny_data()).train()
    first = tiny_train_config(tiny_backbones, tmp_path / "b", max_steps=2, batch_size=4, grad_accum=1)
    Trainer(first, data=tiny_data()).train()
    smaller = tiny_train_config(tiny_backbones, tmp_path / "b", max_steps=4, batch_size=4, grad_accum=4)
    Trainer(smaller, data=tiny_data()).train(resume=True)

    def curve(run):
        recs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        return [r["loss_recon"] for r in recs if "loss_recon" in r]

    a, b = curve(tmp_path / "a"), curve(tmp_path / "b")
    assert len(a) == len(b) == 4
    assert all(abs(x - y) < 1e-4 for x, y in zip(a, b))
