"""The prepared accelerator check (scripts/gpu_check.sh runs it): one JSON report of

  tiny      the tiny models train a few steps on CUDA: bf16 backbones + bf16 autocast, and
            float32 backbones + bf16 autocast (float32 LoRA master weights either way)
  ddp       torchrun with one process per visible GPU, NCCL: DDP and the trainer's
            collectives run, each audited to be handed tensors on its process's GPU, every
            process on another GPU; validation with generation checks at the end
  fsdp      the same with parallelism fsdp: FSDP2 shards the decoder's layers over the GPUs
  profile   a reconstruction + QA step on the real default models: samples/s, the host's
            share, the GPU's busy share (torch.profiler kernel time) and nvidia-smi utilisation

On a machine without CUDA every part runs on the CPU instead (gloo, two processes, float32),
and the report says which parts skipped CUDA. Parts fail independently; the report records
each one's error. A part whose training loss is not finite or does not fall fails, and any
failed part makes the exit code 1.

    python scripts/gpu_check.py --out build/gpu_check.json [--skip-profile]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LAUNCHED = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from test_train import tiny_data, audit_collectives
from e2llm.train import TrainConfig, Trainer
cfg = TrainConfig.model_validate(json.load(open(sys.argv[1])))
trainer = Trainer(cfg, data=tiny_data())
rank = trainer.rank
calls = audit_collectives(torch.device(trainer.device))
trainer.train()
mem = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
with open(f"{{sys.argv[2]}}/rank-{{rank}}.json", "w") as f:  # the processes' stdout interleave
    json.dump({{"collectives": len(calls), "devices": sorted(set(calls)), "device": str(trainer.device),
               "max_memory_allocated_mb": round(mem / 2**20, 1)}}, f)
"""


def tiny_cfg(backbones, out: Path, **optim):
    from test_train import tiny_train_config

    cfg = tiny_train_config(backbones, out, max_steps=6, **optim)
    cfg.data.num_workers = 2
    return cfg


def losses(run: Path) -> list:
    recs = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    return [r.get("loss_recon") for r in recs if "loss_recon" in r]


def finite_and_falling(curve: list) -> bool:
    return bool(curve) and all(c is not None and math.isfinite(c) for c in curve) and curve[-1] < curve[0]


def check_curve(what: str, curve: list) -> None:
    """A part whose loss is not finite or does not fall fails (and so does the whole check)."""
    if not finite_and_falling(curve):
        raise RuntimeError(f"{what}: the reconstruction loss is not finite and falling: {curve}")


def part_tiny(cuda: bool, tmp: Path, backbones) -> dict:
    from test_train import tiny_data

    from e2llm.train import Trainer

    out = {}
    combos = [("bfloat16", "bf16"), ("float32", "bf16")] if cuda else [("float32", "off")]
    for dtype, amp in combos:
        cfg = tiny_cfg(backbones, tmp / f"tiny-{dtype}", backbone_dtype=dtype, autocast=amp, lr=3e-2)
        t0 = time.perf_counter()
        Trainer(cfg, data=tiny_data()).train()
        curve = losses(tmp / f"tiny-{dtype}")
        out[f"{dtype}_backbones_autocast_{amp}"] = {"loss_recon": curve, "finite_and_falling": finite_and_falling(curve),
                                                    "s": round(time.perf_counter() - t0, 1)}
    for name, result in out.items():
        check_curve(f"tiny {name}", result["loss_recon"])
    return out


def part_launched(tmp: Path, backbones, parallelism: str, nproc: int) -> dict:
    """torchrun with nproc processes (one per visible GPU): each on its own device, the loss
    finite and falling, validation with generation checks at the end."""
    from test_train import _env

    run = tmp / f"launched-{parallelism}"
    # every process needs samples in every micro-batch: at least one per process
    cfg = tiny_cfg(backbones, run, lr=3e-2, batch_size=max(4, nproc))
    cfg.parallelism, cfg.num_generation_checks = parallelism, 2
    script, cfg_path, results = tmp / "launched.py", tmp / f"launched-{parallelism}.json", tmp / f"results-{parallelism}"
    results.mkdir()
    script.write_text(LAUNCHED.format(tests=str(ROOT / "tests")))
    cfg_path.write_text(cfg.model_dump_json())
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), str(script),
                           str(cfg_path), str(results)], env=_env(), capture_output=True, text=True, timeout=300)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    ranks = [json.loads((results / f"rank-{r}.json").read_text()) for r in range(nproc)]
    devices = [r["device"] for r in ranks]
    if len(set(devices)) != nproc and devices[0].startswith("cuda"):
        raise RuntimeError(f"{nproc} processes should each train on their own GPU, but ran on {devices}")
    recs = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    out = {"processes": nproc, "ranks": ranks, "backend": "nccl" if devices[0].startswith("cuda") else "gloo",
           "fsdp_message": next((l for l in proc.stdout.splitlines() if "fsdp shards" in l), None),
           "loss_recon": losses(run), "validation": [r for r in recs if "val_loss_recon" in r]}
    if not any("val_answer_contained" in r for r in out["validation"]):
        raise RuntimeError(f"validation did not run its generation checks: {out['validation']}")
    check_curve(f"{parallelism} over {nproc} processes", out["loss_recon"])
    return out


def part_profile(cuda: bool, batch: int, steps: int) -> dict:
    """The real default models, through scripts/profile_train_step.py's measure()."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from profile_train_step import measure

    smi = None
    if cuda:  # utilisation samples, once a second, while the step runs
        smi = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-l", "1"],
                               stdout=subprocess.PIPE, text=True)
    try:
        out = measure(steps, batch, 2, 6 if cuda else 1, "cuda" if cuda else "cpu")
    finally:
        if smi:
            smi.terminate()
            rows = [l.split(",") for l in smi.communicate()[0].splitlines() if l.strip()]
            util = [float(r[0]) for r in rows]
            out["nvidia_smi_utilisation_pct"] = {"samples": len(util), "mean": round(sum(util) / max(1, len(util)), 1),
                                                 "max": max(util, default=0.0)}
            out["nvidia_smi_memory_used_mb_max"] = max((float(r[1]) for r in rows), default=0.0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="build/gpu_check.json")
    ap.add_argument("--skip-profile", action="store_true")
    ap.add_argument("--profile-batch", type=int, default=128, help="samples per objective in the profiled step (CUDA)")
    args = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    report = {"torch": torch.__version__, "cuda": cuda, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
              "note": None if cuda else "no CUDA device: every part ran on the CPU (gloo, float32); the CUDA parts were skipped"}
    from e2llm.testing import build_tiny_backbones

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        backbones = build_tiny_backbones(tmp / "backbones")
        nproc = torch.cuda.device_count() if cuda else 2  # every visible GPU; two gloo processes on a CPU
        report["processes"] = nproc
        parts = {"tiny": lambda: part_tiny(cuda, tmp, backbones),
                 "ddp": lambda: part_launched(tmp, backbones, "ddp", nproc),
                 "fsdp": lambda: part_launched(tmp, backbones, "fsdp", nproc)}
        if not args.skip_profile:
            parts["profile"] = lambda: part_profile(cuda, args.profile_batch if cuda else 4, 5 if cuda else 2)
        for name, run in parts.items():
            t0 = time.perf_counter()
            try:
                report[name] = {"ok": True, **run()}
            except Exception as e:  # noqa: BLE001 - one part's failure is recorded, the others still run
                report[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[-2000:], "trace": traceback.format_exc()[-3000:]}
            report[name]["s"] = round(time.perf_counter() - t0, 1)
            print(f"gpu_check: {name}: {'ok' if report[name]['ok'] else 'FAILED'} ({report[name]['s']} s)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0 if all(v.get("ok", True) for v in report.values() if isinstance(v, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
