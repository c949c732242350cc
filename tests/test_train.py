"""Trainer: objectives, schedule, data order, faults (SIGKILL + resume), and two-process DDP / FSDP."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from e2llm import ConfigError, E2LLM, InputError, TrainingError
from e2llm.train import Sample, TrainConfig, TrainData, Trainer
from e2llm.train.data import load_reason, sample_indices
from e2llm.train.trainer import lr_at

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "The red fox lives in the northern forest and hunts at night.",
    "Seven blue whales sang together in the cold southern sea.",
    "A small robot painted the old bridge yellow on Tuesday.",
    "The library keeps four thousand maps of the ancient coast.",
]


def tiny_train_config(backbones, out_dir, **optim):
    from e2llm.testing import tiny_config

    return TrainConfig.model_validate({
        "model": tiny_config(*backbones).model_dump(),
        "data": {"builtin": None, "cache_dir": str(Path(out_dir).parent / "token-cache"), "num_workers": 1},
        "optim": {"max_steps": 6, "batch_size": 4, "warmup_steps": 1, "lr": 3e-3, **optim},
        "output_dir": str(out_dir), "save_every": 2, "eval_every": 100, "log_every": 1, "num_generation_checks": 0,
    })


def tiny_data():
    recon = [Sample("recon", t, "Repeat the document word for word.", t) for t in TEXTS]
    reason = [Sample("reason", t, "What is this about?", t.split()[1]) for t in TEXTS]
    return TrainData(reason, reason[:2], recon, recon[:2])


def losses(run_dir):
    recs = [json.loads(l) for l in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss_recon"], r.get("loss_reason")) for r in recs if "loss_recon" in r]


def test_lr_schedule():
    cfg = TrainConfig.model_validate({"optim": {"warmup_steps": 10, "max_steps": 110, "min_lr_ratio": 0.1}})
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55) and lr_at(110, cfg) == pytest.approx(0.1)


def test_sample_order_is_a_function_of_the_step():
    a = [sample_indices(10, s, 4, 0, "recon") for s in range(5)]
    assert a == [sample_indices(10, s, 4, 0, "recon") for s in range(5)]
    first_epoch = sum(a, [])[:10]
    assert sorted(first_epoch) == list(range(10))  # each epoch is a permutation
    assert a != [sample_indices(10, s, 4, 1, "recon") for s in range(5)]


def test_config_errors(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("optim:\n  lr: 1e-4\n  momentum: 0.9\n")
    with pytest.raises(ConfigError, match="unknown key 'optim.momentum'"):
        TrainConfig.load(p)
    with pytest.raises(ConfigError, match="multiple of grad_accum"):
        TrainConfig.load(_write(tmp_path / "b.json", {"optim": {"batch_size": 3, "grad_accum": 2}}))


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_malformed_jsonl_is_reported_with_its_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"context": "a b", "prompt": "q", "answer": "a"}\n{oops\n{"context": "", "prompt": "q", "answer": "a"}\n')
    from e2llm.train.corpus import DataError

    with pytest.raises(DataError, match=r"d.jsonl:2"):
        load_reason(str(p), on_error="raise")
    with pytest.warns(UserWarning, match=r"d.jsonl:3"):
        assert len(load_reason(str(p), on_error="skip")) == 1
    assert len(load_reason([{"context": "x", "prompt": "y", "answer": "z"}])) == 1


def test_batched_loss_equals_one_sample_at_a_time(make_tiny_engine):
    """Padding, the logits kept for the answer span only and the per-sample sums must not mix
    samples: a batch of mixed lengths gives each sample the loss it gets alone."""
    from e2llm.train.trainer import ObjectiveLoss

    engine = make_tiny_engine()
    with torch.no_grad():  # a non-zero decoder LoRA, so the soft prompts and LoRA both matter
        for name, p in engine.decoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    data = tiny_data()
    samples = data.recon_train[:3] + data.reason_train[:3]
    samples[0] = Sample("recon", TEXTS[0] + " " + TEXTS[1], "Repeat the document word for word.", TEXTS[0] + " " + TEXTS[1])
    loss_fn = ObjectiveLoss(engine)
    with torch.no_grad():
        ce, count = loss_fn(samples)
        alone = [loss_fn([s]) for s in samples]
    assert count.tolist() == [int(n) for _, n in alone]
    assert ce.tolist() == pytest.approx([float(c) for c, _ in alone], rel=1e-4, abs=1e-4)
    # and alone, it is the textbook loss: all logits, shifted by one, summed over the answer
    from e2llm.softprompts import SoftPrompts
    from e2llm.splice import IGNORE_INDEX, splice

    for s, (c, _) in zip(samples, alone):
        chunks = engine.chunk(s.context)
        with torch.no_grad():
            groups = SoftPrompts(engine.soft_prompts([ch.text for ch in chunks]), chunks).groups()
            pieces = engine.layout.pieces(engine.layout.ids(s.prompt, []), groups, engine.layout.answer_ids(s.answer))
            b = splice([pieces], engine._decoder_base.get_input_embeddings())
            logits = engine.decoder(inputs_embeds=b.inputs_embeds).logits[0, :-1]
            ref = torch.nn.functional.cross_entropy(logits, b.labels[0, 1:], ignore_index=IGNORE_INDEX, reduction="sum")
        assert float(c) == pytest.approx(float(ref), rel=1e-4, abs=1e-4)


def test_the_head_reads_contiguous_answer_positions_in_a_training_step(make_tiny_engine):
    """The answer positions reach the LM head as one contiguous block: a strided slice that
    needs a gradient makes torch multiply by a per-sample copy of the whole head (most of a
    small CPU step's time, seen in a profile), and the same loss either way."""
    from e2llm.train.trainer import ObjectiveLoss

    engine = make_tiny_engine()
    data = tiny_data()
    samples = data.recon_train[:3]
    seen = []
    head = engine._decoder_base.get_output_embeddings()
    hook = head.register_forward_pre_hook(lambda m, args: seen.append((args[0].is_contiguous(), args[0].shape[:2])))
    loss_fn = ObjectiveLoss(engine)
    try:
        ce, _ = loss_fn(samples)
        ce.sum().backward()
    finally:
        hook.remove()
    n = max(len(engine.layout.answer_ids(s.answer)) for s in samples)
    assert seen == [(True, (3, n + 1))]  # (B, longest answer + 1) positions, contiguous
    with torch.no_grad():
        assert ce.detach().tolist() == pytest.approx([float(loss_fn([s])[0]) for s in samples], rel=1e-4, abs=1e-4)


def test_training_lowers_the_loss_and_writes_a_loadable_model(tiny_backbones, tmp_path):
    cfg = tiny_train_config(tiny_backbones, tmp_path / "run", max_steps=25, lr=3e-2)
    final = Trainer(cfg, data=tiny_data()).train()
    curve = losses(tmp_path / "run")
    assert curve[-1][1] < curve[0][1] - 0.5 and curve[-1][2] < curve[0][2] - 2.0
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    model = E2LLM.from_pretrained(final)
    assert model.config.trained
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["step-000022", "step-000024", "step-000025"]  # keep_last = 3


def test_a_run_from_init_from_keeps_its_weights_config_but_applies_and_saves_the_reading_options_it_sets(
        tiny_backbones, tmp_path):
    first = Trainer(tiny_train_config(tiny_backbones, tmp_path / "a", max_steps=2), data=tiny_data()).train()
    raw = tiny_train_config(tiny_backbones, tmp_path / "b", max_steps=2).model_dump(mode="json")
    model = {"ranker": "bm25", "raw_top_n": 2, "adapter": {**raw["model"]["adapter"], "num_heads": 1}}
    cfg = TrainConfig.model_validate({**raw, "init_from": str(first), "model": model})
    trainer = Trainer(cfg, data=tiny_data())
    assert (trainer.engine.config.ranker, trainer.engine.config.raw_top_n) == ("bm25", 2)
    assert trainer.engine.config.adapter == E2LLM.from_pretrained(first).config.adapter  # weights' shape: the checkpoint's
    saved = E2LLM.from_pretrained(trainer.train()).config
    assert (saved.ranker, saved.raw_top_n, saved.ranker_candidates) == ("bm25", 2, None)


def test_reconstruction_can_be_kept_from_the_decoder_lora(tiny_backbones, tmp_path):
    def trained(name, **objective):
        cfg = tiny_train_config(tiny_backbones, tmp_path / name, max_steps=3)
        cfg.objective = cfg.objective.model_copy(update=objective)
        trainer = Trainer(cfg, data=tiny_data())
        before = {k: v.clone() for k, v in trainer.engine.trained_state_dict().items()}
        after = E2LLM.from_pretrained(trainer.train()).trained_state_dict()
        changed = lambda prefix: any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))  # noqa: E731
        return trainer, changed

    trainer, changed = trained("recon-only", recon_trains_decoder=False, reason=False)
    assert changed("adapter.") and changed("encoder_lora.") and not changed("decoder_lora.")
    assert _part_kinds(trainer, 0) == [{"recon"}]
    _, changed = trained("both", recon_trains_decoder=False)
    assert changed("decoder_lora.")  # QA still tunes it
    trainer, changed = trained("default")
    assert changed("decoder_lora.")
    assert _part_kinds(trainer, 0) == [{"recon", "reason"}]


def _part_kinds(trainer, step):
    """The kinds of the step's micro-batches, in order."""
    rows = trainer.batches.step_rows(step)
    return [{("recon", "reason")[rows[p][0]] for p in part} for part in trainer.batches.micro_batches(rows)]


def _nan_gradients_at(trainer, steps):
    """Make the adapter's gradient NaN during the given steps (counted from 0; one backward pass
    a step: these tests' steps are one micro-batch)."""
    state = {"backward": -1}
    first = next(trainer.engine.adapter.parameters())

    def hook(g):
        state["backward"] += 1
        return g * float("nan") if state["backward"] in steps else g

    first.register_hook(hook)


def test_a_nan_gradient_step_is_skipped(tiny_backbones, tmp_path):
    trainer = Trainer(tiny_train_config(tiny_backbones, tmp_path / "run", max_steps=4), data=tiny_data())
    _nan_gradients_at(trainer, {2})
    final = E2LLM.from_pretrained(trainer.train()).trained_state_dict()  # loads: every weight finite
    assert all(torch.isfinite(v).all() for v in final.values())
    recs = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if "grad_norm" in l]
    assert [r.get("nonfinite_steps_skipped", 0) for r in recs] == [0, 0, 1, 1]
    assert recs[2]["grad_norm"] != recs[2]["grad_norm"] and all(r["grad_norm"] == r["grad_norm"] for r in recs[3:])


def test_nan_gradients_in_a_row_stop_the_run(tiny_backbones, tmp_path):
    cfg = tiny_train_config(tiny_backbones, tmp_path / "run", max_steps=8, max_nonfinite_steps=3)
    trainer = Trainer(cfg, data=tiny_data())
    _nan_gradients_at(trainer, {3, 4, 5, 6, 7})
    with pytest.raises(TrainingError, match=r"3 steps in a row \(up to step 6\) gave NaN .* checkpoint is .*step-000004"):
        trainer.train()


def test_training_on_cuda_avoids_cudnn_attention():
    from e2llm.train.trainer import attention_without_cudnn

    with attention_without_cudnn("cpu"):
        assert torch.backends.cuda.cudnn_sdp_enabled()  # the CPU has no such kernel: nothing changes
    with attention_without_cudnn("cuda:0"):  # the flags exist on CPU builds too
        assert not torch.backends.cuda.cudnn_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_overlong_samples_are_skipped(tiny_backbones, tmp_path, capsys):
    cfg = tiny_train_config(tiny_backbones, tmp_path / "run", max_steps=1)
    data = tiny_data()
    data.reason_train.append(Sample("reason", "short", "q", "word " * 2000))
    trainer = Trainer(cfg, data=data)
    assert len(trainer.data.reason_train) == len(TEXTS)
    assert "skipped 1 reasoning samples longer than the decoder window" in capsys.readouterr().out


def test_resume_refuses_another_config(tiny_backbones, tmp_path):
    Trainer(tiny_train_config(tiny_backbones, tmp_path / "run", max_steps=2), data=tiny_data()).train()
    other = tiny_train_config(tiny_backbones, tmp_path / "run", max_steps=4, lr=1e-2)
    with pytest.raises(InputError, match="optim.lr"):
        Trainer(other, data=tiny_data()).train(resume=True)


# ------------------------------------------------------------------ processes
SCRIPT = """
import sys, json
import torch
import torch.distributed as dist
from e2llm.train import TrainConfig, Trainer, Sample, TrainData
sys.path.insert(0, {tests!r})
from test_train import tiny_data, audit_collectives
cfg = TrainConfig.model_validate(json.load(open(sys.argv[1])))
trainer = Trainer(cfg, data=tiny_data())
calls = audit_collectives(torch.device(trainer.device))
trainer.train(resume="--resume" in sys.argv)
print(f"collectives audited: {{len(calls)}} on {{sorted(set(calls))}}")
assert not dist.is_initialized()  # the trainer joined the group, so it left it before exit
"""


def audit_collectives(model_device):
    """From now on, every torch.distributed collective (the trainer's own and FSDP's) fails
    unless its tensors are on the model's device: NCCL rejects host tensors, so a tensor made
    without naming the device breaks the first multi-GPU step. Returns the devices seen."""
    import torch.distributed as dist

    seen = []

    def audited(name, collective):
        def call(*args, **kwargs):
            tensors = [t for a in args for t in (a if isinstance(a, (list, tuple)) else [a]) if torch.is_tensor(t)]
            for t in tensors:
                seen.append(str(t.device))
                assert t.device == model_device, f"dist.{name} was handed a tensor on {t.device}; the model is on {model_device}"
            return collective(*args, **kwargs)
        return call

    for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor",
                 "broadcast", "reduce", "all_to_all_single"):
        setattr(dist, name, audited(name, getattr(dist, name)))
    return seen


def _env():
    return dict(os.environ, PYTHONPATH=f"{ROOT / 'core'}{os.pathsep}{ROOT}", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def _script(tmp_path, cfg):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests")))
    cfg_path = tmp_path / f"cfg-{Path(cfg.output_dir).name}.json"
    cfg_path.write_text(cfg.model_dump_json())
    return script, cfg_path


def test_sigkill_then_resume_matches_uninterrupted(tiny_backbones, tmp_path):
    steps = 8
    ref = tiny_train_config(tiny_backbones, tmp_path / "ref", max_steps=steps)
    Trainer(ref, data=tiny_data()).train()

    cfg = tiny_train_config(tiny_backbones, tmp_path / "killed", max_steps=steps)
    script, cfg_path = _script(tmp_path, cfg)
    proc = subprocess.Popen([sys.executable, str(script), str(cfg_path)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ck = tmp_path / "killed" / "checkpoints" / "step-000004"
    deadline = time.time() + 240
    while not ck.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-run, possibly mid-write of the next checkpoint
    proc.wait()
    assert ck.exists(), proc.stderr.read().decode()[-2000:]
    assert json.loads((ck / "config.json").read_text())["trained"] is True  # loads as a trained model, no warning
    done = subprocess.run([sys.executable, str(script), str(cfg_path), "--resume"], env=_env(), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    a, b = losses(tmp_path / "ref"), losses(tmp_path / "killed")
    assert [s for s, *_ in b] == list(range(1, steps + 1))  # no step lost or repeated in the log
    for (_, ra, rb), (_, ka, kb) in zip(a, b):
        assert ka == pytest.approx(ra, rel=1e-4) and kb == pytest.approx(rb, rel=1e-4)


def _torchrun(script, cfg_path, *args, nproc=2):
    # --standalone: the rendezvous takes a free port, so two test runs at once never collide
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                           str(script), str(cfg_path), *args], env=_env(), capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return proc.stdout.decode()


@pytest.mark.parametrize("objective", [{}, {"recon_trains_decoder": False, "reason_trains_encoder": False}],
                         ids=["default", "encoder-free-qa"])
def test_two_processes_follow_the_single_process_curve(tiny_backbones, tmp_path, objective):
    """encoder-free-qa: the last (synchronising) micro-batch is QA, whose graph skips the encoder
    LoRA; its gradient from the reconstruction micro-batches must still be averaged."""
    configs = []
    for name in ("one", "two"):
        cfg = tiny_train_config(tiny_backbones, tmp_path / name, max_steps=4)
        cfg.objective = cfg.objective.model_copy(update=objective)
        configs.append(cfg)
    final = Trainer(configs[0], data=tiny_data()).train()
    out = _torchrun(*_script(tmp_path, configs[1]))
    assert int(out.split("collectives audited: ")[1].split()[0]) >= 4  # the loss sums, a step each
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == 4
    for (_, ra, rb), (_, ka, kb) in zip(a, b):
        assert ka == pytest.approx(ra, rel=1e-3) and kb == pytest.approx(rb, rel=1e-3)
    ref, got = E2LLM.from_pretrained(final).trained_state_dict(), E2LLM.from_pretrained(tmp_path / "two" / "model").trained_state_dict()
    # The key half of the pooling's kv bias shifts every attention logit of a query alike: its exact
    # gradient is zero, and Adam turns the float noise there into lr-sized steps that differ with
    # the reduction order (threads, processes; 1.1e-3 of its scale once with one OpenMP thread)
    # and change no output. Compare its value half only; every other tensor against its scale.
    for k in [k for k in ref if k.endswith("kv_proj.bias")]:
        half = ref[k].shape[0] // 2
        ref[k], got[k] = ref[k][half:], got[k][half:]
    off = {k: float((got[k] - ref[k]).abs().max() / ref[k].abs().max()) for k in ref}
    assert max(off.values()) < 1e-3, sorted(off.items(), key=lambda kv: -kv[1])[:3]


def test_fsdp_shards_follow_the_single_process_curve_and_resume(tiny_backbones, tmp_path):
    """Two FSDP processes (decoder layers sharded) follow one process's curve, write the same
    whole-tensor checkpoints, and resume from them (shards split again) onto the same curve."""
    steps = 6
    one = tiny_train_config(tiny_backbones, tmp_path / "one", max_steps=steps)
    Trainer(one, data=tiny_data()).train()
    cfg = tiny_train_config(tiny_backbones, tmp_path / "fsdp", max_steps=steps)
    cfg.parallelism = "fsdp"
    script, cfg_path = _script(tmp_path, cfg)
    assert "fsdp shards the decoder's 2 layers over 2 processes" in _torchrun(script, cfg_path)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "fsdp")
    assert len(a) == len(b) == steps
    for (_, ra, rb), (_, ka, kb) in zip(a, b):
        assert ka == pytest.approx(ra, rel=1e-3) and kb == pytest.approx(rb, rel=1e-3)
    # the final model holds whole tensors, equal to the one-process run's
    ref = E2LLM.from_pretrained(tmp_path / "one" / "model").trained_state_dict()
    got = E2LLM.from_pretrained(tmp_path / "fsdp" / "model").trained_state_dict()
    assert ref.keys() == got.keys() and any("decoder_lora" in k for k in got)
    # The PMA adapter's key bias adds the same q.b to every attention logit of a row, which the
    # softmax ignores: its exact gradient is 0, what reaches it is float noise, and Adam turns
    # noise into steps of up to lr * (1 - beta1) / sqrt(1 - beta2) (Kingma & Ba, sec. 2.1)
    # whatever its scale. Two runs that round differently (FSDP sums the shards' gradients in
    # another order) may move it apart by twice that per step; nothing else may differ.
    key_bias = got["adapter.kv_proj.bias"].shape[0] // 2  # (2 * Dd,): keys first, then values
    beta1, beta2 = 0.9, 0.999  # torch.optim.AdamW's defaults, which the trainer uses
    bound = 2 * sum(one.optim.lr * lr_at(s, one) for s in range(steps)) * (1 - beta1) / (1 - beta2) ** 0.5
    for k in ref:
        if k == "adapter.kv_proj.bias":
            assert float((got[k][:key_bias] - ref[k][:key_bias]).abs().max()) <= bound
            got[k], ref[k] = got[k][key_bias:], ref[k][key_bias:]
        torch.testing.assert_close(got[k], ref[k], rtol=1e-3, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    # resume from step 4 as if killed after it: the last two steps land on the same curve
    shutil.rmtree(tmp_path / "fsdp" / "checkpoints" / f"step-{steps:06d}")
    shutil.rmtree(tmp_path / "fsdp" / "model")
    _torchrun(script, cfg_path, "--resume")
    c = losses(tmp_path / "fsdp")
    assert [s for s, *_ in c] == list(range(1, steps + 1))
    for (_, ra, rb), (_, ka, kb) in zip(a, c):
        assert ka == pytest.approx(ra, rel=1e-3) and kb == pytest.approx(rb, rel=1e-3)


def test_validate_separates_soft_prompt_from_decoder_tuning(make_tiny_engine):
    from e2llm.train.validate import reconstruction_report

    engine = make_tiny_engine()
    fresh = reconstruction_report(engine, num_texts=4, words=12, batch=4)
    # LoRA B starts at zero: the tuned and the untuned decoder are the same function
    assert fresh["loss_without"] == pytest.approx(fresh["loss_untuned_without"], abs=1e-5)
    assert fresh["loss_with_soft_prompt"] != pytest.approx(fresh["loss_without"], abs=1e-3)
    assert 0.0 <= fresh["rouge_l"] <= 1.0
    with torch.no_grad():
        for name, p in engine.decoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    tuned = reconstruction_report(engine, num_texts=4, words=12, batch=4)
    assert tuned["loss_untuned_without"] == pytest.approx(fresh["loss_untuned_without"], abs=1e-5)
    assert tuned["loss_without"] != pytest.approx(tuned["loss_untuned_without"], abs=1e-3)


def test_validate_reports_a_collapsed_adapter(make_tiny_engine):
    from e2llm.train.validate import reconstruction_report

    engine = make_tiny_engine()
    assert reconstruction_report(engine, num_texts=4, words=12, batch=4)["soft_prompt_spread"] > 1e-3  # tiny random models: ~0.01
    with torch.no_grad():  # the adapter's output no longer depends on the chunk
        engine.adapter.o_proj.weight.zero_()
        engine.adapter.o_proj.bias.zero_()
    assert reconstruction_report(engine, num_texts=4, words=12, batch=4)["soft_prompt_spread"] < 1e-6


def test_adapter_anatomy_steps_rebuild_the_adapter_output(make_tiny_engine):
    # scripts/research/adapter_anatomy.py catches PMAAdapter's steps with hooks; its last step must be
    # the engine's soft prompts, or the research log's table would describe another function
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "research" / "adapter_anatomy.py"
    spec = importlib.util.spec_from_file_location("adapter_anatomy", path)
    anatomy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anatomy)
    engine = make_tiny_engine()
    texts = ["a short chunk", "another, somewhat longer chunk of text"]
    parts = anatomy.steps(engine, texts)
    with torch.no_grad():
        expected = engine.soft_prompts(texts, encoder_grad=False)  # (N, k, Dd)
    assert list(parts) == list(anatomy.STEP_NAMES) and all(v.shape == expected.shape for v in parts.values())
    assert torch.allclose(parts["norm2 (soft prompt)"], expected, atol=1e-6)
    assert not any(h for m in engine.adapter.modules() for h in m._forward_hooks.values())  # hooks removed
    with torch.no_grad():  # the collapsed case: every step after the attention is the same for each chunk
        engine.adapter.o_proj.weight.zero_()
    parts = anatomy.steps(engine, texts)
    assert float(parts["norm2 (soft prompt)"].std(0).max()) < 1e-6


def test_merge_checkpoints_script_combines_parts_and_adds_queries(make_tiny_engine, tmp_path):
    from e2llm.checkpoint import read_tensors

    a, b = make_tiny_engine(seed=0), make_tiny_engine(seed=1)
    with torch.no_grad():  # make every part differ between the two
        for engine, value in ((a, 0.1), (b, 0.2)):
            for name, p in engine.decoder.named_parameters():
                if "lora_B" in name:
                    p.fill_(value)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    script = Path(__file__).resolve().parents[1] / "scripts" / "research" / "merge_checkpoints.py"
    for k in (None, 3):
        out = tmp_path / f"merged-{k}"
        args = [sys.executable, str(script), str(tmp_path / "a"), str(tmp_path / "b"), str(out)] + (["--tokens-per-chunk", str(k)] if k else [])
        subprocess.run(args, check=True, capture_output=True)
        merged, ta, tb = read_tensors(out), read_tensors(tmp_path / "a"), read_tensors(tmp_path / "b")
        for name, t in merged.items():
            source = ta if name.startswith("decoder_lora.") else tb
            if name == "adapter.queries" and k:
                assert t.shape[0] == k and torch.equal(t[:1], source[name]) and not torch.equal(t[1], t[0])
            else:
                assert torch.equal(t, source[name]), name
        engine = E2LLM.from_pretrained(out)  # loads: names and shapes match its config
        assert engine.encode("A short document.").vectors.shape[1] == (k or 1)
    for bad, needle in (([str(tmp_path / "nope"), str(tmp_path / "b")], "checkpoint folder not found"),
                        ([str(tmp_path / "a"), str(tmp_path / "b"), "--tokens-per-chunk", "0"], "queries can be added, not removed")):
        proc = subprocess.run([sys.executable, str(script), *bad[:2], str(tmp_path / "bad"), *bad[2:]], capture_output=True, text=True)
        assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [proc.stderr.strip()] and needle in proc.stderr
        assert "Traceback" not in proc.stderr and not (tmp_path / "bad").exists()


def test_a_collective_on_another_device_than_the_model_is_refused():
    """The trainer's collectives all go through Parallel.all_reduce, which refuses a tensor on
    another device than the model's (on GPUs: a host tensor, which NCCL rejects mid-step)."""
    import torch.distributed as dist
    from e2llm.train.distributed import Parallel

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        parallel = Parallel(torch.nn.Linear(2, 2), "ddp", 1, "cpu")
        assert parallel.all_reduce(torch.ones(3)).tolist() == [1.0, 1.0, 1.0]
        with pytest.raises(TrainingError, match="collective was handed a tensor on meta, but the model is on cpu"):
            parallel.all_reduce(torch.zeros(5, device="meta"))
    finally:
        dist.destroy_process_group()


def test_one_launched_process_goes_through_the_process_group(tiny_backbones, tmp_path):
    """torchrun --nproc_per_node 1: DDP and the collectives run (on GPUs: the world-size-1 NCCL
    check in scripts/gpu_check.sh), every collective on the model's device, and the curve is
    the unlaunched run's."""
    one = tiny_train_config(tiny_backbones, tmp_path / "one", max_steps=2)
    Trainer(one, data=tiny_data()).train()
    out = _torchrun(*_script(tmp_path, tiny_train_config(tiny_backbones, tmp_path / "launched", max_steps=2)), nproc=1)
    assert int(out.split("collectives audited: ")[1].split()[0]) >= 2
    for (_, ra, rb), (_, ka, kb) in zip(losses(tmp_path / "one"), losses(tmp_path / "launched")):
        assert ka == pytest.approx(ra, rel=1e-5) and kb == pytest.approx(rb, rel=1e-5)


def test_fsdp_places_the_decoder_layers_last(make_tiny_engine):
    """Before sharding, everything but the decoder's layers goes to the device ("meta" stands in
    for a GPU here); the layers stay on the CPU for fully_shard to move one at a time, so no GPU
    ever holds the whole decoder."""
    from e2llm.train.distributed import decoder_layers, move_all_but

    engine = make_tiny_engine()
    layers = decoder_layers(engine._decoder_base)
    inside = {id(p) for layer in layers for p in layer.parameters()}
    params = dict(engine.named_parameters())
    move_all_but(engine, layers, "meta")
    assert len(layers) == 2 and inside
    for name, p in engine.named_parameters():
        assert p is params[name]  # the same Parameter objects: optimizer groups stay valid
        assert p.device.type == ("cpu" if id(p) in inside else "meta"), name
    assert all(b.device.type == "meta" for n, b in engine._decoder_base.named_buffers() if ".layers." not in n)


def test_fsdp_without_known_layers_is_a_config_error():
    from e2llm.train.distributed import shard_decoder

    class NoLayers(torch.nn.Module):  # a decoder that names no layer classes to shard
        _no_split_modules = None

    with pytest.raises(ConfigError, match="parallelism 'fsdp'.*use parallelism 'ddp'"):
        shard_decoder(NoLayers(), world=2, device="cpu", compute_dtype=None)


def test_qa_can_run_the_encoder_without_gradients(make_tiny_engine):
    """reason_trains_encoder=False: QA samples give the adapter and decoder LoRA the same
    gradients as before, and the encoder's LoRA none; reconstruction still reaches it."""
    from e2llm.train.trainer import ObjectiveLoss

    engine = make_tiny_engine()
    engine.autocast_encoder = False  # without gradients the encoder may run in bf16, as at inference: compare exactly
    for name, p in engine.named_parameters():
        p.requires_grad_("lora_" in name or name.startswith("adapter."))
    data = tiny_data()

    def grads(samples, reason_trains_encoder):
        engine.zero_grad(set_to_none=True)
        ce, n = ObjectiveLoss(engine, reason_trains_encoder)(samples)
        (ce.sum() / n.sum()).backward()
        return float(ce.sum()), {k: p.grad for k, p in engine.named_parameters() if p.requires_grad}

    loss_on, on = grads(data.reason_train, True)
    loss_off, off = grads(data.reason_train, False)
    assert loss_off == pytest.approx(loss_on, rel=1e-5)
    encoder = [k for k in on if k.startswith("encoder.")]
    assert encoder and all(on[k] is not None for k in encoder) and all(off[k] is None for k in encoder)
    for k in on:
        if not k.startswith("encoder.") and on[k] is not None:
            torch.testing.assert_close(off[k], on[k], rtol=1e-4, atol=1e-6)
    _, recon = grads(data.recon_train, False)
    assert all(recon[k] is not None for k in encoder)


def test_qa_without_encoder_gradients_gets_its_own_micro_batches(tiny_backbones, tmp_path):
    """Even where reconstruction trains the decoder (kinds would share micro-batches), QA must
    not share one with reconstruction, or its encoder pass would record gradients after all."""
    cfg = tiny_train_config(tiny_backbones, tmp_path / "run", max_steps=1)
    cfg.objective = cfg.objective.model_copy(update={"reason_trains_encoder": False})
    trainer = Trainer(cfg, data=tiny_data())
    assert _part_kinds(trainer, 0) == [{"recon"}, {"reason"}]


def test_long_qa_samples_are_added_without_changing_the_short_ones():
    from e2llm.train.config import DataConfig
    from e2llm.train.data import build_data

    builtin = {"num_qa_train": 3, "num_qa_val": 0, "num_recon_train": 0, "num_recon_val": 0, "qa_context_tokens": [300, 400]}
    short = build_data(DataConfig.model_validate({"builtin": builtin}), "Repeat.").reason_train
    both = build_data(DataConfig.model_validate({"builtin": {**builtin, "num_long_qa_train": 2,
                                                             "long_qa_context_tokens": [3000, 3500]}}), "Repeat.").reason_train
    assert both[:3] == short and len(both) == 5
    assert all(len(s.context.split()) > 5 * max(len(t.context.split()) for t in short) for s in both[3:])


def test_builtin_qa_can_draw_its_contexts_from_a_folder(tmp_path):
    from e2llm.train.config import DataConfig
    from e2llm.train.data import build_data

    words = "granite harbour lantern meadow orchard pebble quarry saddle thimble velvet".split()
    for d in range(12):  # documents of words no Python doc holds, so a context shows where it came from
        text = " ".join(f"{words[(d + i) % 10]}{d}" for i in range(300))
        (tmp_path / f"doc{d}.txt").write_text(f"Doc {d}\n\n{text}.", encoding="utf-8")
    builtin = {"paths": [str(tmp_path)], "num_qa_train": 4, "num_qa_val": 1, "num_recon_train": 0,
               "num_recon_val": 0, "qa_context_tokens": [200, 300], "qa_kinds": ["unanswerable"]}
    data = build_data(DataConfig.model_validate({"builtin": builtin}), "Repeat.")
    assert len(data.reason_train) == 4 and len(data.reason_val) == 1
    for sample in data.reason_train + data.reason_val:
        assert re.search(r"(granite|harbour|lantern|meadow|orchard|pebble|quarry|saddle|thimble|velvet)\d", sample.context)
        assert "def " not in sample.context and sample.answer == "The document does not say."


def test_spread_term_pushes_a_collapsing_adapter_apart(make_tiny_engine):
    """objective.min_spread: the penalty is max(0, min_spread - spread) of the micro-batch's
    soft prompts; a step against its gradient spreads them; no penalty without gradients."""
    from e2llm.softprompts import spread
    from e2llm.train.trainer import ObjectiveLoss

    engine = make_tiny_engine()
    with torch.no_grad():  # nearly collapsed: the chunk-dependent part is tiny
        engine.adapter.o_proj.weight.mul_(0.01)
    for name, p in engine.named_parameters():
        p.requires_grad_(name.startswith("adapter."))
    texts = [s.context for s in tiny_data().recon_train]
    loss_fn = ObjectiveLoss(engine, min_spread=0.5)
    loss_fn(tiny_data().recon_train)
    before = float(spread(engine.soft_prompts(texts)))
    assert loss_fn.spread_penalty is not None and float(loss_fn.spread_penalty) == pytest.approx(0.5 - before, rel=1e-4)
    loss_fn.spread_penalty.backward()
    with torch.no_grad():
        for p in engine.adapter.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad / p.grad.norm().clamp(min=1e-12)
    assert float(spread(engine.soft_prompts(texts))) > before
    with torch.no_grad():
        loss_fn(tiny_data().recon_train)
    assert loss_fn.spread_penalty is None
    assert ObjectiveLoss(engine)(tiny_data().recon_train) and ObjectiveLoss(engine).spread_penalty is None


def test_trainer_logs_the_spread(tiny_backbones, tmp_path):
    cfg = tiny_train_config(tiny_backbones, tmp_path / "run", max_steps=2)
    cfg = cfg.model_copy(update={"eval_every": 2, "objective": cfg.objective.model_copy(update={"min_spread": 0.99})})
    trainer = Trainer(cfg, data=tiny_data())
    trainer.train()
    recs = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["spread_penalty"] > 0 for r in recs if "loss_recon" in r)
    last = [r for r in recs if "val_soft_prompt_spread" in r][-1]
    assert 0 < last["val_soft_prompt_spread"] < 0.99
    # the logged content is the held-out loss with the next chunk's soft prompt minus with its own
    from e2llm.train.trainer import mean_loss, swap_contexts

    val = trainer.data.recon_val
    trainer.engine.cache.clear()
    expected = mean_loss(trainer.loss_fn, swap_contexts(val)) - mean_loss(trainer.loss_fn, val)
    assert swap_contexts(val)[0].context == val[1].context and swap_contexts(val)[0].answer == val[0].answer
    assert last["val_recon_content"] == pytest.approx(expected, abs=1e-6)


def test_tokenized_samples_are_cached_by_data_tokenizers_and_chunking(make_tiny_engine, tmp_path):
    """The arrays a run tokenizes are read back equal; another sample set, chunking or k is
    another cache entry (a stale cache would train on the wrong tokens)."""
    import numpy as np

    from e2llm.train.batches import cache_key, cached_tokenize

    engine = make_tiny_engine()
    samples = tiny_data().recon_train + tiny_data().reason_train
    first, hit = cached_tokenize(engine, samples, tmp_path)
    assert not hit and len(list(tmp_path.glob("*.safetensors"))) == 1
    again, hit = cached_tokenize(engine, samples, tmp_path)
    assert hit and all(np.array_equal(v, again.arrays()[k]) for k, v in first.arrays().items())
    key = cache_key(engine, samples)
    assert cache_key(engine, samples[:-1]) != key
    assert cache_key(make_tiny_engine(chunking={"tokens_per_chunk": 12}), samples) != key
    assert cache_key(make_tiny_engine(adapter={"tokens_per_chunk": 2}), samples) != key
    hybrid = samples + [Sample("reason", TEXTS[0] * 3, "What does the fox hunt?", "night", raw_top_n=2)]
    bm25 = make_tiny_engine()
    bm25.config.ranker = "bm25"  # another ranker picks other raw chunks for the hybrid sample
    assert cache_key(bm25, hybrid) != cache_key(engine, hybrid) and cache_key(bm25, samples) == key


def test_a_step_is_collated_ahead_by_workers_as_in_process(tiny_backbones, tmp_path):
    """DataLoader workers hand the step exactly what the training process would collate itself."""
    trainer = Trainer(tiny_train_config(tiny_backbones, tmp_path / "run", max_steps=3), data=tiny_data())
    ahead = list(trainer._loader(1))  # steps 1 and 2, from a worker
    for step, parts in zip((1, 2), ahead):
        here = trainer.batches[step]
        assert len(parts) == len(here)
        for a, b in zip(parts, here):
            assert a.keys() == b.keys()
            assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def test_gradient_checkpointing_option_follows_the_plain_curve(tiny_backbones, tmp_path):
    # Recomputing activations changes when, not what, the backward pass computes: same losses.
    plain = Trainer(tiny_train_config(tiny_backbones, tmp_path / "plain", max_steps=3), data=tiny_data())
    plain.train()
    ckpt = Trainer(tiny_train_config(tiny_backbones, tmp_path / "ckpt", max_steps=3, gradient_checkpointing=True),
                   data=tiny_data())
    assert ckpt.engine._decoder_base.is_gradient_checkpointing
    ckpt.train()
    for (s1, r1, q1), (s2, r2, q2) in zip(losses(tmp_path / "plain"), losses(tmp_path / "ckpt")):
        assert s1 == s2 and r1 == pytest.approx(r2, rel=1e-4) and q1 == pytest.approx(q2, rel=1e-4)


def _attention_modules(engine):
    """The first layer's attention of the decoder and of the encoder."""
    names = ("layers.0.self_attn", "layer.0.attention")
    return [next(m for n, m in part.named_modules() if n.endswith(names)) for part in (engine.decoder, engine.encoder)]


def test_gradient_checkpointing_recomputes_activations_in_training_steps(tiny_backbones, tmp_path):
    """Hugging Face layers recompute only in training mode: with checkpointing each layer's
    attention runs twice per micro-batch with gradients on (forward, then again in backward),
    once without. In eval mode the option silently saves nothing."""
    runs = {}
    for ckpt in (False, True):
        cfg = tiny_train_config(tiny_backbones, tmp_path / f"ckpt-{ckpt}", max_steps=2, gradient_checkpointing=ckpt)
        trainer = Trainer(cfg, data=tiny_data())
        calls = {"decoder": 0, "encoder": 0}
        for part, module in zip(calls, _attention_modules(trainer.engine)):
            def count(*_, part=part):
                calls[part] += torch.is_grad_enabled()  # validation runs without gradients
            module.register_forward_hook(count)
        trainer.train()
        runs[ckpt] = calls, sum(len(trainer.batches[s]) for s in range(2))
    (plain, micro), (ckpt, micro_ckpt) = runs[False], runs[True]
    assert micro == micro_ckpt and plain["decoder"] == micro and plain["encoder"] >= micro  # encoder: batches of chunks
    assert ckpt == {part: 2 * n for part, n in plain.items()}
    assert not trainer.engine.training  # left in eval mode for inference


def _step_losses_in_eval_mode(trainer, step=0):
    """The step's losses per objective as the eval-mode engine computes them."""
    from e2llm.train.batches import to_device

    sums = torch.zeros(4)
    trainer.engine.eval()
    with torch.no_grad():
        for part in trainer.batches[step]:
            ce, n = trainer.loss_fn(to_device(part, trainer.device))
            recon = (part["kind"] == 0).float()
            sums += torch.stack([(ce * recon).sum(), (n * recon).sum(), (ce * (1 - recon)).sum(), (n * (1 - recon)).sum()])
    return float(sums[0] / sums[1]), float(sums[2] / sums[3])


@pytest.mark.parametrize("lora_dropout, backbone_dropout, changes", [(0.0, False, False), (0.5, False, True), (0.0, True, True)],
                         ids=["no-dropout", "lora-dropout", "backbone-dropout"])
def test_training_steps_apply_lora_dropout_and_keep_backbone_dropout_off(tiny_backbones, tmp_path, lora_dropout, backbone_dropout,
                                                                         changes):
    """A training step's loss is the eval-mode loss of its batch unless dropout applies: LoRA's
    (lora.dropout) always in training steps, the frozen backbones' own (the tiny BERT's 0.1)
    only with backbone_dropout. LoRA B is made non-zero so LoRA's dropout changes outputs."""
    from e2llm.testing import tiny_config

    lora = {"r": 4, "alpha": 8, "dropout": lora_dropout}
    torch.manual_seed(0)
    engine = E2LLM.build(tiny_config(*tiny_backbones, encoder={"lora": {**lora, "target_modules": ["query", "value"]}},
                                     decoder={"lora": {**lora, "target_modules": ["q_proj", "v_proj"]}}))
    with torch.no_grad():
        for name, p in engine.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    cfg = tiny_train_config(tiny_backbones, tmp_path / "run", max_steps=1)
    cfg.backbone_dropout = backbone_dropout
    trainer = Trainer(cfg, engine=engine, data=tiny_data())
    expected = _step_losses_in_eval_mode(trainer)
    trainer.train()
    (_, recon, reason), = losses(tmp_path / "run")
    same = recon == pytest.approx(expected[0], rel=1e-5) and reason == pytest.approx(expected[1], rel=1e-5)
    assert same != changes, (recon, reason, expected)


KEPT_OUT_SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_train import tiny_data
from e2llm.train import TrainConfig, Trainer
from e2llm.train.distributed import full

dist.init_process_group("gloo")  # joined here: each trainer uses the group and leaves it joined
out = {{}}
for name, cfg in json.load(open(sys.argv[1])).items():
    trainer = Trainer(TrainConfig.model_validate(cfg), data=tiny_data())
    decoder = [(n, p) for n, p in trainer.engine.decoder.named_parameters() if p.requires_grad]
    before = {{n: full(p.detach()).clone() for n, p in decoder}}
    grads, step = {{}}, trainer.opt.step

    def record(*a, step=step, decoder=decoder, grads=grads, **k):  # the reduced gradients the update uses
        grads.update({{n: None if p.grad is None else full(p.grad).clone() for n, p in decoder}})
        return step(*a, **k)

    trainer.opt.step = record
    trainer.train()
    out[name] = {{"grads": grads, "before": before, "after": {{n: full(p.detach()).clone() for n, p in decoder}}}}
if dist.get_rank() == 0:
    torch.save(out, sys.argv[2])
dist.destroy_process_group()
"""


def test_reconstruction_gradients_stay_out_of_the_decoder_under_ddp_and_fsdp(tiny_backbones, tmp_path):
    """recon_trains_decoder false, two processes: the decoder LoRA's reduced gradient in a step
    with reconstruction and QA micro-batches is the QA part's alone (the same step with
    reconstruction weighted 0), and a reconstruction-only step of two micro-batches leaves the
    decoder's weights as they were. FSDP defers the first micro-batch's reduction to the last
    one's: a gradient cleared after each backward pass would still reach the decoder."""
    def cfg(name, parallelism, recon_weight=0.5, **objective):
        c = tiny_train_config(tiny_backbones, tmp_path / name, max_steps=1, clip_norm=1e9, grad_accum=2)
        c.parallelism = parallelism
        c.objective = c.objective.model_copy(update={"recon_trains_decoder": False, "recon_weight": recon_weight, **objective})
        return c.model_dump(mode="json")

    configs = {"ddp-qa-only": cfg("a", "ddp", recon_weight=0.0)}
    for parallelism in ("ddp", "fsdp"):
        configs[f"{parallelism}-mixed"] = cfg(f"{parallelism}-mixed", parallelism)
        configs[f"{parallelism}-recon"] = cfg(f"{parallelism}-recon", parallelism, reason=False)
    script, cfg_path = tmp_path / "kept_out.py", tmp_path / "configs.json"
    script.write_text(KEPT_OUT_SCRIPT.format(tests=str(ROOT / "tests")))
    cfg_path.write_text(json.dumps(configs))
    _torchrun(script, cfg_path, str(tmp_path / "out.pt"))
    runs = torch.load(tmp_path / "out.pt")
    reference = runs["ddp-qa-only"]["grads"]
    assert any(g is not None and g.abs().sum() > 0 for g in reference.values())  # QA trains the decoder's LoRA B
    for parallelism in ("ddp", "fsdp"):
        got = runs[f"{parallelism}-mixed"]["grads"]
        for name, g in reference.items():
            if g is None:
                assert got[name] is None or not got[name].any(), name
            else:
                torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-7, msg=lambda m, n=name: f"{parallelism} {n}: {m}")
        recon = runs[f"{parallelism}-recon"]
        assert all(g is None or not g.any() for g in recon["grads"].values()), parallelism
        assert all(torch.equal(recon["before"][n], recon["after"][n]) for n in recon["before"]), parallelism


VALIDATE_SCRIPT = """
import json, sys
import torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_train import tiny_data
import e2llm.train.trainer as trainer_module
from e2llm.train import TrainConfig, Trainer

tokenize, tokenized = trainer_module.tokenize, []
trainer_module.tokenize = lambda engine, samples, *a, **k: (tokenized.append([s.context for s in samples]), tokenize(engine, samples, *a, **k))[1]
dist.init_process_group("gloo")
for cfg in json.load(open(sys.argv[1])):
    tokenized.clear()
    trainer = Trainer(TrainConfig.model_validate(cfg), data=tiny_data())
    copies = []
    inner = "_validate" if hasattr(trainer, "_validate") else "validate"  # the part before validate() frees copies
    validate = getattr(trainer, inner)
    def spy(validate=validate, trainer=trainer, copies=copies):  # the copies generation made
        out = validate()
        copies.append(len(getattr(trainer.engine, "_inference_copies", None)._copies) if hasattr(trainer.engine, "_inference_copies") else 0)
        return out
    setattr(trainer, inner, spy)
    trainer.train()
    left = len(trainer.engine._inference_copies._copies) if hasattr(trainer.engine, "_inference_copies") else 0
    with open(f"{{sys.argv[2]}}/{{cfg['parallelism']}}-{{dist.get_rank()}}.json", "w") as f:  # two processes' stdout interleave
        json.dump({{"rank": dist.get_rank(), "parallelism": cfg["parallelism"], "tokenized": tokenized,
                   "copies_during": copies, "copies_left": left, "training": trainer.engine.training}}, f)
dist.destroy_process_group()
"""


def test_two_processes_share_the_tokenizing_and_validate_with_generation_checks(tiny_backbones, tmp_path):
    """Under DDP and FSDP (two gloo processes): each process tokenizes its half of the training
    samples (none waits for another's whole pass), validation runs with generation checks (the
    first process generates under DDP, all do under FSDP, from the sharded decoder) and the
    merged decoder copy generation builds is freed after."""
    configs = []
    for parallelism in ("ddp", "fsdp"):
        cfg = tiny_train_config(tiny_backbones, tmp_path / parallelism, max_steps=1)
        cfg.parallelism, cfg.num_generation_checks, cfg.data.cache_dir = parallelism, 2, "off"
        configs.append(cfg.model_dump(mode="json"))
    script, cfg_path = tmp_path / "validate.py", tmp_path / "configs.json"
    script.write_text(VALIDATE_SCRIPT.format(tests=str(ROOT / "tests")))
    cfg_path.write_text(json.dumps(configs))
    _torchrun(script, cfg_path, str(tmp_path))
    results = [json.loads((tmp_path / f"{p}-{rank}.json").read_text()) for p in ("ddp", "fsdp") for rank in (0, 1)]
    assert len(results) == 4
    for r in results:
        half = TEXTS[:2] if r["rank"] == 0 else TEXTS[2:]
        assert r["tokenized"][:2] == [half, half], r  # recon_train, reason_train: this process's share only
        assert all(len(call) <= 2 for call in r["tokenized"]), r  # validation sets (2 samples) aside, nothing whole
        generated = r["rank"] == 0 and r["parallelism"] == "ddp"  # under fsdp generation decodes on the sharded decoder
        assert r["copies_during"] == [1 if generated else 0] and r["copies_left"] == 0 and not r["training"], r
    for parallelism in ("ddp", "fsdp"):
        recs = [json.loads(l) for l in (tmp_path / parallelism / "log.jsonl").read_text().splitlines()]
        val = [r for r in recs if "val_loss_recon" in r]
        assert len(val) == 1 and 0 <= val[0]["val_answer_contained"] <= 1 and val[0]["val_loss_reason"] > 0, recs


def test_the_process_group_is_joined_with_the_configured_timeout(monkeypatch):
    """process_group_timeout_s reaches init_process_group (NCCL's default, 10 minutes, is what a
    process waiting for another's data preparation or checkpoint would otherwise get)."""
    from datetime import timedelta

    import torch.distributed as dist

    import e2llm.train.trainer as trainer_module
    from e2llm.train.distributed import dist_info

    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    for key, value in {"WORLD_SIZE": "2", "LOCAL_RANK": "0", "TORCHELASTIC_RUN_ID": "x"}.items():
        monkeypatch.setenv(key, value)
    assert dist_info("cpu", 42) == (0, 1)  # (init_process_group mocked: no group joined)
    assert calls == [("gloo", {"timeout": timedelta(seconds=42)})]

    class Joined(Exception):
        pass

    def joined(device, timeout_s):
        raise Joined(device, timeout_s)

    monkeypatch.setattr(trainer_module, "dist_info", joined)
    with pytest.raises(Joined) as e:
        Trainer(TrainConfig.model_validate({"device": "cpu", "process_group_timeout_s": 42}))
    assert e.value.args == (torch.device("cpu"), 42)


def test_reconstruction_kept_from_the_decoder_under_gradient_checkpointing(tiny_backbones, tmp_path):
    """The decoder LoRA's weights are detached for reconstruction micro-batches during their
    backward pass too, where checkpointed layers run their forward again."""
    cfg = tiny_train_config(tiny_backbones, tmp_path / "run", max_steps=2, gradient_checkpointing=True)
    cfg.objective = cfg.objective.model_copy(update={"recon_trains_decoder": False, "reason": False})
    trainer = Trainer(cfg, data=tiny_data())
    with torch.no_grad():  # a non-zero LoRA B, so LoRA A would get a gradient too if the decoder were in the graph
        for name, p in trainer.engine.decoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    decoder = {n: p for n, p in trainer.engine.decoder.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in decoder.items()}
    grads = []
    for p in decoder.values():
        p.register_hook(lambda g: grads.append(g))
    trainer.train()
    assert not grads and all(torch.equal(before[n], p) for n, p in decoder.items())
    assert trainer.engine.decoder.base_model.model.model.layers[0].self_attn.q_proj.lora_A.default.forward.__func__ \
        is torch.nn.Linear.forward  # the layers' own forward back after the step
