"""The Python half of scripts/gpu_train.sh (issue 23): size a stage's config from a measured probe
and the time its device call has left, probe a stage, and gather the run's summary.json.

    python scripts/gpu_train.py config CFG OUT RUN [STAGE]      # the stage's config: sized (STAGE), or the probe's
    python scripts/gpu_train.py probe CFG OUT STEPS             # probe-stageN.json: step time, samples/s, host share...
    python scripts/gpu_train.py summary RUN OUT                 # OUT/summary.json from what RUN holds

A stage trains steps = min(its share of TRAIN_MINUTES / step time, what its call has left /
(step time + making one step's data)), and builds only the data those steps read. The sizing
(``sized``, ``sized_data``, ``reserve_s``, ``plan_steps``) is pure: tests/test_gpu_train.py.
Environment (read by ``plan_from_env``): TRAIN_MINUTES (8: split 40/60 over the two stages),
CALL_LIMIT_S (600: the device's per-call limit), E2LLM_CALL_START (epoch seconds the call began;
gpu_train.sh sets it), VALIDATE_TIMEOUT_S (validate's cap, reserved in stage 2's call),
E2LLM_REHEARSE (1: the CPU rehearsal's tiny sizes, 2 steps a stage).
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARES = {1: 0.4, 2: 0.6}  # of TRAIN_MINUTES
REHEARSAL_STEPS = 2
PROBE_STEPS = 4  # profiled, after one warm-up step (rehearsal: 1)
DATA_SLACK = 1.1  # training samples built per sample the steps read (a few are longer than the window)
# Reserved in a stage's call besides what the probe measures: up to 3 checkpoint saves, copying to
# the output folder, and a margin for the DataLoader workers' start and the first step's allocations.
SAVES_S, COPY_S, MARGIN_S = 15.0, 10.0, 30.0
MAX_EVALS = 3  # eval_every = steps // 2: at steps // 2, at 2 * (steps // 2) and at the last step


def sized_data(cfg, steps: int) -> None:
    """Build only what ``steps`` steps read: each objective's training samples cut to steps *
    batch_size * DATA_SLACK, never above the recipe's. A step's samples are drawn from seeded
    permutations of the whole set, so the samples a run reads are alike either way; what changes
    is the time spent making and tokenizing samples it never reads (on a 2-core CPU, 40 ms a QA
    sample of 256-4K tokens and more for the long ones: tens of seconds a GPU step's worth)."""
    b = cfg.data.builtin
    if b is None:
        return
    need = math.ceil(steps * cfg.optim.batch_size * DATA_SLACK)
    b.num_recon_train = min(b.num_recon_train, -(-need // 5) * 5)  # build_data splits it over 5 window lengths
    qa = b.num_qa_train + b.num_long_qa_train
    if qa > need:  # short and long QA in the recipe's proportion, at least one long one if it has any
        long = min(b.num_long_qa_train, max(1, round(b.num_long_qa_train * need / qa))) if b.num_long_qa_train else 0
        b.num_qa_train, b.num_long_qa_train = min(b.num_qa_train, need - long), long


def sized(cfg, steps: int, run: str, rehearse: bool, data_steps: int | None = None):
    """The stage's config for this run: paths under ``run``, ``steps`` steps (rehearse:
    REHEARSAL_STEPS, with the CPU rehearsal's tiny data and batch), warm-up at most a tenth of
    them, save and eval at half-way and at the end, data for ``data_steps`` steps (default: steps)."""
    from e2llm.train import TrainConfig

    cfg = cfg.model_copy(deep=True)
    cfg.output_dir = os.path.join(run, "runs", os.path.basename(cfg.output_dir))
    if cfg.init_from and cfg.init_from.startswith("runs/"):
        cfg.init_from = os.path.join(run, cfg.init_from)
    if rehearse:  # the CPU rehearsal: same path, tiny sizes
        b = cfg.data.builtin
        b.num_recon_val, b.num_qa_val = 8, min(b.num_qa_val, 4)
        b.qa_context_tokens, b.long_qa_context_tokens = (256, 512), (2048, 3000)
        cfg.optim.grad_accum = min(cfg.optim.grad_accum, 2)  # first: batch_size must stay a multiple of it
        cfg.optim.batch_size, cfg.optim.warmup_steps = 4, 1
        cfg.optim.backbone_dtype, cfg.data.num_workers = "float32", 1
        cfg.num_generation_checks, cfg.log_every = min(cfg.num_generation_checks, 2), 1
        steps = REHEARSAL_STEPS
    steps = max(1, int(steps))
    sized_data(cfg, steps if data_steps is None else data_steps)
    cfg.optim.max_steps = steps
    cfg.optim.warmup_steps = min(cfg.optim.warmup_steps, max(1, steps // 10))
    cfg.save_every = cfg.eval_every = max(1, steps // 2)
    return TrainConfig.model_validate(cfg.model_dump())  # every field checked together once more


def reserve_s(probe: dict, validate_s: float = 0.0) -> dict:
    """What a stage's call spends after its probe besides the steps and their data, in seconds:
    the training run's start (the probe's, less making and tokenizing its samples), its
    evaluations, saves, copying, validate (stage 2) and a margin."""
    data_s = probe.get("build_s", 0.0) + probe.get("tokenize_s", 0.0)
    parts = {"start": max(0.0, probe.get("init_s", 0.0) - data_s), "evals": MAX_EVALS * probe.get("eval_s", 0.0),
             "saves": SAVES_S, "copy": COPY_S, "validate": validate_s, "margin": MARGIN_S}
    return {**{k: round(v, 1) for k, v in parts.items()}, "total": round(sum(parts.values()), 1)}


def data_s_per_step(probe: dict) -> float:
    """Making and tokenizing one step's training samples, at the probe's rate (its corpus read
    is a fixed cost, in the start)."""
    n = probe.get("samples_built", 0)
    return (probe.get("build_s", 0.0) + probe.get("tokenize_s", 0.0)) / n * probe["samples_per_step"] * DATA_SLACK if n else 0.0


def plan_steps(share_s: float, call_limit_s: float, elapsed_s: float, reserve_total_s: float, step_s: float,
               data_step_s: float = 0.0) -> int:
    """Steps a stage trains: its share of TRAIN_MINUTES at the probe's step time, cut to what its
    call has left after the time already spent (set-up, probe) and what is reserved, each step
    also costing the making of its data. At least one."""
    left = call_limit_s - elapsed_s - reserve_total_s
    return max(1, int(min(share_s / step_s, left / (step_s + data_step_s))))


def plan_from_env(stage: int, probe: dict, env=os.environ, now: float | None = None) -> dict:
    share_s = 60 * float(env.get("TRAIN_MINUTES", "8")) * SHARES[stage]
    limit = float(env.get("CALL_LIMIT_S", "600"))
    now = time.time() if now is None else now
    elapsed = now - float(env.get("E2LLM_CALL_START", now))
    reserve = reserve_s(probe, float(env.get("VALIDATE_TIMEOUT_S", "150")) if stage == 2 else 0.0)
    data_step = data_s_per_step(probe)
    steps = plan_steps(share_s, limit, elapsed, reserve["total"], probe["step_s"], data_step)
    return {"stage": stage, "share_s": share_s, "call_limit_s": limit, "elapsed_before_training_s": round(elapsed, 1),
            "reserve_s": reserve, "step_s": probe["step_s"], "data_s_per_step": round(data_step, 2), "steps": steps,
            "train_s": round(steps * probe["step_s"], 1), "data_s": round(steps * data_step, 1),
            "fits_call": elapsed + reserve["total"] + steps * (probe["step_s"] + data_step) <= limit,
            "rehearsal": bool(env.get("E2LLM_REHEARSE"))}


def cmd_config(cfg_path: str, out: str, run: str, stage: str | None = None) -> int:
    """The stage's config, sized from RUN/probe-stageN.json and the call's time left (STAGE
    given), or for the probe (no STAGE): data for its steps, paths rewritten."""
    from e2llm.train import TrainConfig

    rehearse = bool(os.environ.get("E2LLM_REHEARSE"))
    cfg = TrainConfig.load(cfg_path)
    if stage is None:
        probe_steps = 1 if rehearse else PROBE_STEPS
        cfg = sized(cfg, 1, run, rehearse, data_steps=probe_steps + 1)
        Path(out).write_text(cfg.model_dump_json(indent=1))
        return 0
    n = int(stage)
    probe = json.loads((Path(run) / f"probe-stage{n}.json").read_text())
    plan = plan_from_env(n, probe)
    if not plan["fits_call"] and not rehearse:
        print(f"gpu_train: warning: stage {n}'s call has too little time left for one {probe['step_s']:.1f}-s step "
              f"after {plan['elapsed_before_training_s']:.0f} s and {plan['reserve_s']['total']:.0f} s reserved; "
              f"training 1 step (the call may pass {plan['call_limit_s']:.0f} s)", file=sys.stderr)
    cfg = sized(cfg, plan["steps"], run, rehearse)
    if rehearse:
        plan["note"] = (f"rehearsal: {REHEARSAL_STEPS} steps whatever the plan; steps, train_s, data_s and reserve_s are "
                        "what the GPU formula gives with this machine's times")
    plan["train_samples_built"] = {"recon": cfg.data.builtin.num_recon_train,
                                   "qa": cfg.data.builtin.num_qa_train + cfg.data.builtin.num_long_qa_train} if cfg.data.builtin else None
    Path(out).write_text(cfg.model_dump_json(indent=1))
    (Path(run) / f"sizing-stage{n}.json").write_text(json.dumps(plan, indent=1))
    print(f"gpu_train: {cfg_path}: {cfg.optim.max_steps} steps (the plan: {plan['steps']} steps, {plan['train_s']:.0f} s "
          f"of the {plan['share_s']:.0f}-s share at {probe['step_s']:.2f} s a step, + {plan['data_s']:.0f} s making their "
          f"data; {plan['elapsed_before_training_s']:.0f} s into the call, {plan['reserve_s']['total']:.0f} s reserved)")
    return 0


def cmd_probe(cfg_path: str, out: str, steps: str) -> int:
    """The stage's own config for a few steps: step time, samples/s, host share, the start's and
    one evaluation's time; on CUDA also the GPU's busy share and nvidia-smi's mean utilisation
    over the profiled steps only."""
    import torch

    sys.path.insert(0, str(ROOT / "scripts"))
    from profile_train_step import measure

    cuda = torch.cuda.is_available()
    util: list[tuple[float, float]] = []
    smi = None
    if cuda and shutil.which("nvidia-smi"):
        smi = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "500"],
                               stdout=subprocess.PIPE, text=True)

        def read():
            for line in smi.stdout:
                try:
                    util.append((time.time(), float(line.split(",")[0])))
                except ValueError:
                    pass

        threading.Thread(target=read, daemon=True).start()
    r = measure(int(steps), 0, 0, 0, "cuda" if cuda else "cpu", cfg_path, eval_too=True)
    if smi is not None:
        smi.terminate()
        smi.wait(timeout=10)
        a, b = r["profiled_window_unix"]
        inside = [u for t, u in util if a <= t <= b + 0.5]
        r["nvidia_smi_utilisation_pct_mean"] = round(sum(inside) / len(inside), 1) if inside else None
        r["nvidia_smi_samples"] = len(inside)
    r["device"] = torch.cuda.get_device_name(0) if cuda else "cpu"
    r["torch"] = torch.__version__
    Path(out).write_text(json.dumps(r, indent=1))
    print("gpu_train: probe", json.dumps(r))
    return 0


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def forecast_train_s(probe: dict, steps: int, evals: int) -> float:
    """The training phase's time as the sizing reckons it, for the steps and evaluations a run
    made: its start, the steps and the making of their data at the probe's rates, the
    evaluations, the saves."""
    r = reserve_s(probe)
    return round(r["start"] + steps * (probe["step_s"] + data_s_per_step(probe)) + evals * probe.get("eval_s", 0.0) + SAVES_S, 1)


def stage_summary(run: Path, n: int, phases: dict | None = None) -> dict | None:
    cfg = _json(run / f"stage{n}.json")
    if cfg is None:
        return None
    d = Path(cfg["output_dir"])
    log = _jsonl(d / "log.jsonl")
    train = [r for r in log if "loss_recon" in r or "loss_reason" in r]
    val = [r for r in log if any(k.startswith("val_") for k in r)]
    last = train[-1] if train else {}
    out = {"config": f"stage{n}/stage{n}.json", "init_from": cfg.get("init_from"),
           "steps_planned": cfg["optim"]["max_steps"],
           "steps_run": max((r["step"] for r in log), default=0),
           "finished": (d / "model" / "config.json").exists(),
           "batch_size": cfg["optim"]["batch_size"], "grad_accum": cfg["optim"]["grad_accum"],
           "backbone_dtype": cfg["optim"]["backbone_dtype"],
           "last_logged_train": {k: last[k] for k in ("step", "loss_recon", "loss_reason", "grad_norm", "tokens_per_s", "elapsed_s")
                                 if k in last},
           "final_val": val[-1] if val else None,
           "val_recon_content": [[r["step"], r["val_recon_content"]] for r in val if "val_recon_content" in r],
           "probe": _json(run / f"probe-stage{n}.json"), "sizing": _json(run / f"sizing-stage{n}.json")}
    train_phase = (phases or {}).get(f"train-stage{n}", {})
    if train_phase.get("rc") == 124:  # stopped at its deadline: the model is the last checkpoint
        out["stopped_at_deadline"] = True
        steps = [int(c.name.split("-")[1]) for c in (d / "checkpoints").glob("step-*")]
        out["model_step"] = max(steps, default=None)
    took = train_phase.get("s")
    if out["probe"] and took is not None:  # how well the sizing's reckoning held (it should not be under)
        out["train_phase_s"] = {"forecast": forecast_train_s(out["probe"], out["steps_run"], len(val)), "took": took}
    return out


def cmd_summary(run: str, out: str) -> int:
    import torch

    run_p, out_p = Path(run), Path(out)
    phases: dict[str, dict] = {}
    for r in _jsonl(run_p / "phases.jsonl"):  # a phase run again (a retried call): its last time
        phases[r["phase"]] = {k: v for k, v in r.items() if k != "phase"}
    cuda = torch.cuda.is_available()
    stages = {f"stage{n}": st for n in (1, 2) if (st := stage_summary(run_p, n, phases)) is not None}
    s = {
        "rehearsal": bool(os.environ.get("E2LLM_REHEARSE")) or any((st["sizing"] or {}).get("rehearsal") for st in stages.values()),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__, "python": platform.python_version(),
        "load_average_1_5_15": [round(x, 1) for x in os.getloadavg()],
        "train_minutes": float(os.environ.get("TRAIN_MINUTES", "8")),
        "phases_s": {k: v["s"] for k, v in phases.items()},
        "phases": phases,
        "stages": stages,
        "validate": _json(run_p / "validate.json"),
    }
    out_p.mkdir(parents=True, exist_ok=True)
    (out_p / "summary.json").write_text(json.dumps(s, indent=1))
    print(f"gpu_train: wrote {out_p / 'summary.json'}: phases (s) {json.dumps(s['phases_s'])}")
    return 0


def main(argv: list[str]) -> int:
    cmds = {"config": cmd_config, "probe": cmd_probe, "summary": cmd_summary}
    if not argv or argv[0] not in cmds:
        print(__doc__, file=sys.stderr)
        return 2
    return cmds[argv[0]](*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
