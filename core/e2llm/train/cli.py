"""``e2llm train --config train.yaml [--resume]`` (also runs under torchrun / accelerate launch)."""
from __future__ import annotations

from pathlib import Path

from ..cli_common import QUANTIZATIONS


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train the adapter and LoRAs (reconstruction + instruction tuning)")
    p.add_argument("--config", type=Path, help="YAML or JSON TrainConfig (default: all defaults)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    p.add_argument("--output-dir", help="override output_dir")
    p.add_argument("--max-steps", type=int, help="override optim.max_steps")
    p.add_argument("--quantize", choices=QUANTIZATIONS, help="override model.decoder.quantization "
                   "(4bit: NF4 base weights, QLoRA; CUDA and bitsandbytes only)")
    p.set_defaults(func=run)


def run(args) -> int:
    from .config import TrainConfig
    from .trainer import Trainer

    cfg = TrainConfig.load(args.config) if args.config else TrainConfig()
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if args.max_steps:
        cfg.optim.max_steps = args.max_steps
    if args.quantize:
        cfg.model.decoder.quantization = args.quantize
    trainer = Trainer(cfg)
    final = trainer.train(resume=args.resume)
    if trainer.rank == 0:
        print(f"e2llm train: wrote {final} (load it with E2LLM.from_pretrained('{final}'))")
    return 0
