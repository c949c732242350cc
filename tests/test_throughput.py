"""The trainer's step meter (issue 32): tokens trained, exact across a resume, and the step's
estimated FLOPs from the model's own linear layers."""
import json
from pathlib import Path

import torch

from e2llm.train import Trainer
from e2llm.train.throughput import StepMeter, linear_weights

from test_train import tiny_data, tiny_train_config


def _records(run):
    return [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines() if "train_tokens" in line]


def test_tokens_trained_add_up_and_continue_exactly_after_a_resume(tiny_backbones, tmp_path):
    cfg = tiny_train_config(tiny_backbones, tmp_path / "run", max_steps=4)
    trainer = Trainer(cfg, data=tiny_data())
    trainer.train()
    recs = _records(tmp_path / "run")
    per_step = [sum(int((trainer.batches.recon if k == 0 else trainer.batches.reason).answer_tokens[r])
                    for k, r in trainer.batches.step_rows(s)) for s in range(4)]
    assert [r["train_tokens"] for r in recs] == list(torch.tensor(per_step).cumsum(0).tolist())
    assert all(r["gflops"] > 0 and 0 < r["peak_share"] for r in recs)
    # a run resumed from its step-4 checkpoint counts the four steps' tokens it did not run again
    cfg6 = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"max_steps": 6})})
    Trainer(cfg6, data=tiny_data()).train(resume=True)
    again = _records(tmp_path / "run")
    assert again[3]["train_tokens"] == recs[3]["train_tokens"]
    step4 = sum(int((trainer.batches.recon if k == 0 else trainer.batches.reason).answer_tokens[r])
                for k, r in trainer.batches.step_rows(4))
    assert again[4]["train_tokens"] == recs[3]["train_tokens"] + step4


def test_flops_count_every_linear_weight_once_per_token(tiny_engine):
    meter = StepMeter.__new__(StepMeter)
    meter.enc_weights, meter.dec_weights, meter.head_weights = 10, 100, 1000
    part = {"enc_ids": torch.zeros(3, 5), "dec_ids": torch.zeros(2, 7), "max_answer": 3}
    assert meter.flops(part) == 4.0 * (10 * 15 + 100 * 14 + 1000 * 2 * 4)
    dec = tiny_engine._decoder_base
    head = dec.get_output_embeddings().weight.numel()
    assert linear_weights(dec) - linear_weights(dec, skip=("lm_head",)) == head
