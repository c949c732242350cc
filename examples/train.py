"""A standalone E2LLM training script: copy it and edit the config below.

    python examples/train.py                      # one CPU or GPU
    python examples/train.py --config my.yaml     # the same as `e2llm train --config my.yaml`
    torchrun --standalone --nproc_per_node 2 examples/train.py  # DDP (gloo on CPU, nccl on GPUs)
    torchrun --no-python --standalone --nproc_per_node 8 e2llm train --config my.yaml  # the CLI, likewise
    accelerate launch examples/train.py           # likewise
    # a decoder too big for one GPU: set "parallelism": "fsdp" below (FSDP2 shards its layers;
    # no GPU ever holds the whole decoder). On GPUs: "backbone_dtype": "bfloat16" (bf16 autocast
    # is on by default there), and a "batch_size" of hundreds: docs/training.md.

It writes OUTPUT_DIR/model, which E2LLM.from_pretrained(...) loads, and OUTPUT_DIR/checkpoints
every `save_every` steps; run it again with --resume after an interruption.
Your data: JSONL lines {"context": ..., "prompt": ..., "answer": ...} for the reasoning
objective, and folders of .txt/.md (or JSONL with "text") for reconstruction.
"""
import argparse

from e2llm.train import TrainConfig, Trainer

parser = argparse.ArgumentParser()
parser.add_argument("--config", help="YAML/JSON TrainConfig; without it, the config below")
parser.add_argument("--resume", action="store_true")
args = parser.parse_args()

if args.config:
    cfg = TrainConfig.load(args.config)
else:
    cfg = TrainConfig.model_validate({
        "model": {
            "encoder": {"name_or_path": "default"},  # or a local folder / hub id of any HF encoder
            "decoder": {"name_or_path": "default"},  # or any HF causal LM
            "chunking": {"tokens_per_chunk": 64},
            "adapter": {"kind": "pma", "tokens_per_chunk": 1},
        },
        "data": {
            "train_jsonl": [],  # e.g. ["data/train.jsonl"]
            "val_jsonl": [],
            "recon_paths": [],  # e.g. ["data/texts/"]
            "builtin": {"num_qa_train": 400, "num_recon_train": 800},  # set to None to use only your data
        },
        "optim": {"lr": 2e-4, "adapter_lr": 1e-3, "max_steps": 100, "batch_size": 8},
        "objective": {"recon_weight": 0.5},
        "output_dir": "runs/my-e2llm",
    })

trainer = Trainer(cfg)
final = trainer.train(resume=args.resume)
if trainer.rank == 0:
    print(f"trained model: {final}")
