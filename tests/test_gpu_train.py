"""Pure tier: scripts/gpu_train.py's sizing of the GPU recipe (issue 23), without running a stage:
steps from the share of the training minutes, the probe's step time and the device call's time
left; data built for those steps only; the CPU rehearsal's shrinking, which must leave valid configs."""
import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [ROOT / "configs" / "gpu-1-recon.yaml", ROOT / "configs" / "gpu-2-qa.yaml"]


@pytest.fixture(scope="module")
def plan():
    spec = importlib.util.spec_from_file_location("gpu_train_plan", ROOT / "scripts" / "gpu_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(path):
    from e2llm.train import TrainConfig

    return TrainConfig.load(path)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_rehearsal_shrink_keeps_the_config_valid(plan, path):
    cfg = plan.sized(load(path), 500, "/tmp/run", rehearse=True)
    o, b = cfg.optim, cfg.data.builtin
    assert o.max_steps == plan.REHEARSAL_STEPS and o.batch_size % o.grad_accum == 0
    assert o.warmup_steps <= o.max_steps and cfg.eval_every == cfg.save_every == cfg.log_every == 1
    assert o.backbone_dtype == "float32" and cfg.output_dir.startswith("/tmp/run/runs/")
    assert b.num_recon_train == 10 and b.num_qa_train + b.num_long_qa_train in (0, 9)  # 2 steps of 4, + 10%


def test_stage2_starts_from_stage1s_model_in_the_run(plan):
    one, two = (plan.sized(load(p), 100, "/tmp/run", rehearse=False) for p in CONFIGS)
    assert two.init_from == os.path.join(one.output_dir, "model")


def test_steps_warmup_and_checkpoints(plan):
    cfg = plan.sized(load(CONFIGS[0]), 384, "/tmp/run", rehearse=False)
    assert cfg.optim.max_steps == 384 and cfg.optim.warmup_steps == 30  # the recipe's, under a tenth
    assert cfg.save_every == cfg.eval_every == 192 and cfg.optim.batch_size == 256  # the recipe's batch
    one = plan.sized(load(CONFIGS[1]), 0, "/tmp/run", rehearse=False)  # never under one step
    assert one.optim.max_steps == 1 and one.optim.warmup_steps == 1 and one.eval_every == 1


def test_data_is_built_for_the_steps_only(plan):
    b = plan.sized(load(CONFIGS[1]), 20, "/tmp/run", rehearse=False).data.builtin  # 20 steps of 128 + 128
    assert b.num_recon_train == 2820  # ceil(20 * 128 * 1.1) = 2816, up to a multiple of the 5 window lengths
    assert b.num_qa_train + b.num_long_qa_train == 2816
    assert b.num_long_qa_train == round(1200 * 2816 / 13200)  # the recipe's share of long documents
    assert (b.num_qa_val, b.num_recon_val) == (24, 24)  # validation untouched
    probe = plan.sized(load(CONFIGS[1]), 1, "/tmp/run", rehearse=False, data_steps=5).data.builtin
    assert probe.num_long_qa_train >= 1 and probe.num_qa_train + probe.num_long_qa_train == 704
    full = plan.sized(load(CONFIGS[1]), 10_000, "/tmp/run", rehearse=False).data.builtin
    assert (full.num_qa_train, full.num_long_qa_train, full.num_recon_train) == (12000, 1200, 30000)  # never above the recipe


def test_steps_are_the_share_cut_to_the_calls_time_left(plan):
    assert plan.plan_steps(192, 600, 60, 100, step_s=1.0) == 192  # the share fits
    assert plan.plan_steps(288, 600, 200, 150, step_s=1.0) == 250  # the call's time left does not
    assert plan.plan_steps(288, 600, 200, 150, step_s=1.0, data_step_s=1.5) == 100  # each step's data costs too
    assert plan.plan_steps(288, 600, 500, 150, step_s=1.0) == 1  # nothing left: one step, flagged by fits_call


def test_plan_fits_the_call_limit(plan):
    probe = {"step_s": 2.0, "samples_per_step": 256, "init_s": 50.0, "corpus_s": 5.0, "build_s": 1.0,
             "tokenize_s": 2.0, "samples_built": 1408, "eval_s": 5.0}
    env = {"TRAIN_MINUTES": "8", "CALL_LIMIT_S": "600", "E2LLM_CALL_START": "1000", "VALIDATE_TIMEOUT_S": "150"}
    one = plan.plan_from_env(1, probe, env, now=1100)
    two = plan.plan_from_env(2, probe, env, now=1100)
    # start: 50 - 1 - 2 (the run makes its own data, counted per step); 3 evals of 5 s; saves 15, copy 10,
    # margin 30; validate's cap in stage 2
    assert one["reserve_s"]["total"] == 47 + 15 + 15 + 10 + 30
    assert two["reserve_s"]["total"] == one["reserve_s"]["total"] + 150
    data_step = 3 / 1408 * 256 * 1.1
    assert one["data_s_per_step"] == pytest.approx(data_step, abs=0.01)
    assert one["steps"] == 96  # the 40% share (192 s) fits
    assert two["steps"] == int((600 - 100 - 267) / (2.0 + data_step)) == 89  # the 60% share (144 steps) does not
    for p in (one, two):
        assert p["elapsed_before_training_s"] + p["reserve_s"]["total"] + p["train_s"] + p["data_s"] <= p["call_limit_s"]
        assert p["fits_call"] and not p["rehearsal"]
    late = plan.plan_from_env(2, probe, env, now=1000 + 590)
    assert late["steps"] == 1 and not late["fits_call"]
    # summary.json's check of that reckoning against the training phase's time: start, steps and their data, evals, saves
    assert plan.forecast_train_s(probe, 10, 3) == pytest.approx(47 + 10 * (2.0 + data_step) + 3 * 5.0 + 15, abs=0.1)
