"""Where a training step's time goes, on the real default models: the host's share (time the
model's kernels are not running: data preparation, tokenization, Python between kernels) and
samples per second, measured with torch.profiler.

    python scripts/profile_train_step.py                       # this tree
    python scripts/profile_train_step.py --compare-with 01e78fb  # and that commit's trainer, side by side

host share = 1 - (sum of the self time of every aten op the training process ran) / wall time,
over --steps profiled steps after one warm-up step. On a GPU the aten time is what launches
kernels, so the measure is an upper bound on the GPU's busy share there; on the CPU it is the
compute itself. Each version runs in its own process (--compare-with extracts the commit's
core/ with git archive); the two alternate --rounds times so machine noise hits both alike.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def config(batch: int, grad_accum: int, workers: int, device: str):
    from e2llm.train import TrainConfig

    return TrainConfig.model_validate({
        "model": {"chunking": {"tokens_per_chunk": 64}, "adapter": {"kind": "pma", "tokens_per_chunk": 1, "num_heads": 4}},
        "data": {"builtin": {"num_qa_train": 48, "num_qa_val": 0, "num_recon_train": 48, "num_recon_val": 0,
                             "qa_context_tokens": [256, 768], "hybrid_fraction": 0.3, "hybrid_top_n": 2},
                 **({"cache_dir": str(ROOT / "build" / "token-cache"), "num_workers": workers} if workers >= 0 else {})},
        "optim": {"batch_size": batch, "grad_accum": grad_accum, "max_steps": 1000, "backbone_dtype": "float32"},
        "output_dir": str(ROOT / "build" / "profile-run"), "num_generation_checks": 0, "device": device,
    })


def from_file(path: str, device: str):
    """A recipe's own config (its batch, data and dtypes), writing nothing where its run would."""
    from e2llm.train import TrainConfig

    cfg = TrainConfig.load(path)
    cfg.output_dir, cfg.device = str(ROOT / "build" / "profile-run"), device  # num_generation_checks: for eval_s
    cfg.optim.max_steps = 1000
    return cfg


def measure(steps: int, batch: int, grad_accum: int, workers: int, device: str, config_path: str | None = None,
            eval_too: bool = False) -> dict:
    """init_s: building the trainer, of which corpus_s reading the built-in corpus, build_s making
    samples_built training samples, tokenize_s tokenizing them (or reading the token cache);
    eval_too: also eval_s, one Trainer.validate() as a run does it every eval_every steps."""
    import contextlib

    import torch
    from torch.profiler import ProfilerActivity, profile

    from e2llm.train import Trainer
    from e2llm.train import trainer as trainer_module

    new = hasattr(Trainer, "_loader")  # this tree's pre-tokenized pipeline; else the older per-sample step
    timed = {}

    class Timed(Trainer):
        def _tokenize(self, data):
            t0 = time.perf_counter()
            super()._tokenize(data)
            timed["tokenize_s"] = time.perf_counter() - t0

    def build_data(*args, **kwargs):  # the trainer's, timed, with the number of training samples it built
        t0 = time.perf_counter()
        data = built(*args, **kwargs)
        timed["build_s"] = time.perf_counter() - t0
        timed["samples_built"] = len(data.recon_train) + len(data.reason_train)
        return data

    cfg = from_file(config_path, device) if config_path else config(batch, grad_accum, workers if new else -1, device)
    t_init = time.perf_counter()
    if new and cfg.data.builtin is not None:  # the corpus first (cached per process): a fixed cost, apart
        from e2llm.train.corpus import load_corpus

        load_corpus()
        timed["corpus_s"] = time.perf_counter() - t_init
    built = trainer_module.build_data
    trainer_module.build_data = build_data
    try:
        t = (Timed if new else Trainer)(cfg)
    finally:
        trainer_module.build_data = built
    init_s = time.perf_counter() - t_init
    # as the trainer's step: bf16 autocast where the run has it, attention without cuDNN on CUDA
    precision = getattr(t, "autocast", contextlib.nullcontext)
    kernels = getattr(trainer_module, "attention_without_cudnn", lambda device: contextlib.nullcontext())(t.device)
    if new:
        from e2llm.train.batches import to_device

        batches = iter(t._loader(0))

        def step(i):
            parts = next(batches)
            for part in parts:
                if part is None:
                    continue
                b = to_device(part, t.device)
                with precision():
                    ce, _ = t.model(b)
                    loss = (ce * b["weight"]).sum()
                    if getattr(t.loss_fn, "spread_penalty", None) is not None:  # as the trainer adds it
                        loss = loss + t.loss_fn.spread_penalty / len(parts)
                loss.backward()
            t.opt.step()
            t.opt.zero_grad(set_to_none=True)
    else:
        def step(i):
            samples = t._step_samples(i)
            w = t._weights(samples)
            for idx in t._micro_batches(samples):
                ce, _ = t.model([samples[j] for j in idx])
                (ce * w[idx].to(ce.device)).sum().backward()
            t.opt.step()
            t.opt.zero_grad(set_to_none=True)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if str(t.device).startswith("cuda") else [])
    with kernels:
        step(0)  # warm-up: allocations, first-call costs
        with profile(activities=activities) as prof:
            t0, window_start = time.perf_counter(), time.time()
            for i in range(1, steps + 1):
                step(i)
            if str(t.device).startswith("cuda"):
                torch.cuda.synchronize()
            wall, window = time.perf_counter() - t0, [window_start, time.time()]
        if eval_too:
            t_eval = time.perf_counter()
            t.validate()
            eval_s = time.perf_counter() - t_eval
    main = {e.thread for e in prof.events() if e.name.startswith("aten::")}
    aten_us = sum(e.self_cpu_time_total for e in prof.events() if e.name.startswith("aten::"))
    out = {"pipeline": "pre-tokenized + DataLoader" if new else "per-sample (tokenize, chunk, splice in the step)",
           "samples_per_step": len(t._step_samples(0)), "step_s": round(wall / steps, 3),
           "samples_per_s": round(steps * len(t._step_samples(0)) / wall, 2),
           "host_share": round(max(0.0, 1 - aten_us / 1e6 / wall), 3), "threads_seen": len(main),
           "init_s": round(init_s, 1), "profiled_window_unix": [round(x, 2) for x in window]}
    out.update({k: round(v, 2) if isinstance(v, float) else v for k, v in timed.items()})
    if eval_too:
        out["eval_s"] = round(eval_s, 1)
    if str(t.device).startswith("cuda"):
        kernel_us = sum(e.self_device_time_total for e in prof.events() if e.device_type.name == "CUDA")
        out["gpu_busy_share"] = round(kernel_us / 1e6 / wall, 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8, help="samples per objective per step")
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--config", help="profile this recipe's config instead (its batch, data, dtypes)")
    ap.add_argument("--compare-with", help="a git revision whose trainer to measure side by side")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        print("RESULT " + json.dumps(measure(args.steps, args.batch, args.grad_accum, args.workers, args.device, args.config)))
        return 0
    trees = {"this tree": ROOT / "core"}
    tmp = None
    if args.compare_with:
        tmp = tempfile.TemporaryDirectory()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.compare_with, "core"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp.name], input=archive, check=True)
        trees = {args.compare_with: Path(tmp.name) / "core", **trees}
    flags = ["--steps", str(args.steps), "--batch", str(args.batch), "--grad-accum", str(args.grad_accum),
             "--workers", str(args.workers), "--device", args.device, "--worker"] + (["--config", args.config] if args.config else [])
    results: dict = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, core in trees.items():
            rest = os.environ.get("PYTHONPATH", "")
            env = dict(os.environ, PYTHONPATH=str(core) + (os.pathsep + rest if rest else ""), TOKENIZERS_PARALLELISM="true")
            proc = subprocess.run([sys.executable, __file__, *flags], env=env, capture_output=True, text=True)
            line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode or not line:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            results[name].append(json.loads(line[0][7:]))
            print(f"{name:>12}: {results[name][-1]}", flush=True)
    if len(trees) == 2:
        (old, a), (_, b) = results.items()
        ratio = sum(r["samples_per_s"] for r in b) / sum(r["samples_per_s"] for r in a)
        print(f"samples/s, this tree over {old}: {ratio:.2f}x")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
