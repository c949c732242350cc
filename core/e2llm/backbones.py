"""Loading any encoder or causal-LM decoder, and what each architecture needs from us:
its pooling (from the sentence-transformers folder), its LoRA target layers (from peft's
per-architecture table), its attention kernel and whether its own code may run.

Errors are one line that names the setting to change (the CLI exits 2 on them).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from . import defaults
from .config import DecoderConfig, EncoderConfig, LoraSettings
from .errors import ConfigError, DeviceError, ModelNotFoundError

# sentence-transformers' 1_Pooling/config.json keys -> our pooling names (first true one wins;
# mean_sqrt_len differs from mean by a scale only, which the cosine similarity ignores)
_ST_POOLING = (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
               ("pooling_mode_mean_sqrt_len_tokens", "mean"), ("pooling_mode_max_tokens", "max"),
               ("pooling_mode_lasttoken", "last"))

ENCODER_IS_DECODER = "decoder"  # encoder.name_or_path that reuses the decoder's backbone

# peft's defaults adapt only the query and value projections; E2LLM also adapts the key (and,
# where the names say so, the output) projection, as its reference recipe did for BERT and Llama
_LORA_SIBLINGS = {"q_proj": ("k_proj", "o_proj"), "query": ("key",), "query_proj": ("key_proj",),
                  "q": ("k",), "q_lin": ("k_lin",)}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def bnb_4bit_config():
    """QLoRA's storage (Dettmers et al., 2023): NF4 base weights with double-quantized scales,
    dequantized to bfloat16 for each product. Built without bitsandbytes (transformers' config
    object needs it only when a model loads)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def quantized_load_kwargs(quantization: str, device: torch.device | None) -> dict:
    """from_pretrained's extra arguments for the decoder's base weights: none, or 4-bit on `device`.
    bitsandbytes quantizes each weight as it is loaded onto the GPU, so the whole decoder loads
    straight onto the CUDA device in use (left unset, transformers would pick the current one)."""
    if quantization == "none":
        return {}
    if device is None or device.type != "cuda":  # check_quantization says this in user terms first
        raise DeviceError(f"4-bit weights load on a CUDA device, not {device}")
    return {"quantization_config": bnb_4bit_config(), "device_map": {"": str(device)}}


def load_backbone(part: str, cfg: EncoderConfig | DecoderConfig, dtype: torch.dtype, device: torch.device | None = None,
                  decoder: DecoderConfig | None = None):
    """(model, fast tokenizer, resolved folder or hub id) for part "encoder" or "decoder".
    device: where a quantized decoder loads (unquantized ones load on the CPU and are moved).
    decoder: the decoder's config, for an encoder named "decoder" (the decoder's backbone, without
    its LM head, as a second copy: ICAE's encoder)."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    name = cfg.name_or_path
    if part == "encoder" and name == ENCODER_IS_DECODER:
        if decoder is None:
            raise ConfigError("encoder.name_or_path: decoder needs the decoder's config to find its files")
        name, path = decoder.name_or_path, defaults.resolve_decoder(decoder.name_or_path)
    else:
        path = defaults.resolve_encoder(name) if part == "encoder" else defaults.resolve_decoder(name)
    cls = AutoModel if part == "encoder" else AutoModelForCausalLM
    quantization = getattr(cfg, "quantization", "none")  # the decoder's setting; encoders stay unquantized
    kwargs = dict(dtype=dtype, trust_remote_code=cfg.trust_remote_code, **quantized_load_kwargs(quantization, device))
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
        model = cls.from_pretrained(path, **kwargs)
    except ImportError as e:  # a kernel or a model's own dependency that is not installed
        raise DeviceError(f"could not load the {part} '{name}': {_first_line(e)}") from None
    except (OSError, ValueError, KeyError) as e:
        first = _first_line(e)
        if "trust_remote_code" in first:
            raise ConfigError(f"the {part} '{name}' ships its own model code; set {part}.trust_remote_code: true "
                              "if you trust it, or pick a model transformers supports natively") from None
        if cfg.attn_implementation and ("attn" in first.lower() or "attention" in first.lower()):
            raise ConfigError(f"{part}.attn_implementation '{cfg.attn_implementation}' does not work with '{name}' "
                              f"({first}); use eager, or leave it unset for the model's default") from None
        raise ModelNotFoundError(f"could not load the {part} '{name}' ({first}); pass a local model folder, "
                                 "or a hub id on a machine that can reach the hub") from None
    if not getattr(tok, "is_fast", False):
        raise ModelNotFoundError(f"the {part} '{name}' has no fast tokenizer; chunk offsets need one")
    if tok.pad_token_id is None:  # decoder tokenizers often have none; batches of chunks need one
        tok.pad_token = tok.eos_token
    if quantization != "none":
        model = prepare_quantized(model)
    return model, tok, str(path)


def keep_first_layers(model: nn.Module, n: int, name: str) -> nn.Module:
    """The model with only its first n transformer layers (encoder.num_layers): its one list of
    config.num_hidden_layers blocks is cut, and the config says so (masks and caches read it)."""
    total = model.config.num_hidden_layers
    stacks = [(owner, attr) for owner in model.modules() for attr, child in owner.named_children()
              if isinstance(child, nn.ModuleList) and len(child) == total]
    if len(stacks) != 1:
        raise ConfigError(f"encoder.num_layers: cannot find the layer stack of '{name}' ({len(stacks)} lists of "
                          f"{total} modules); leave num_layers unset for this encoder")
    if n > total:
        raise ConfigError(f"encoder.num_layers is {n}, but '{name}' has {total} layers; use at most {total}")
    owner, attr = stacks[0]
    setattr(owner, attr, getattr(owner, attr)[:n])
    model.config.num_hidden_layers = n
    if isinstance(getattr(model.config, "layer_types", None), list):  # per-layer attention kinds (newer configs)
        model.config.layer_types = model.config.layer_types[:n]
    return model


def prepare_quantized(model: nn.Module) -> nn.Module:
    """peft's preparation of a k-bit model for LoRA training: every base weight frozen, and the
    layers left unquantized (norms, embeddings, lm_head) upcast to float32 for stable gradients.
    Gradient checkpointing stays off here: peft would switch it on by default, with reentrant
    checkpoints; the trainer's optim.gradient_checkpointing decides (E2LLM.enable_gradient_checkpointing)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def sentence_transformers_pooling(path: str) -> str | None:
    """The pooling an encoder folder (or a hub id already in the local cache) was trained with,
    read from sentence-transformers' modules.json -> <Pooling>/config.json; None if it has none."""
    modules = _local_file(path, "modules.json")
    folder = "1_Pooling"
    if modules is not None:
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
            folder = next((m["path"] for m in entries if str(m.get("type", "")).endswith(".Pooling")), folder)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    config = _local_file(path, f"{folder}/config.json")
    if config is None:
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return next((mode for key, mode in _ST_POOLING if data.get(key)), None)


def _local_file(path: str, name: str) -> Path | None:
    if Path(path).is_dir():
        f = Path(path) / name
        return f if f.is_file() else None
    try:  # a hub id: only what is already cached, never a download
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(path, name)
        return Path(found) if isinstance(found, str) else None
    except Exception:  # an id the cache cannot parse: no pooling config
        return None


def linear_layer_names(model: nn.Module) -> list[str]:
    """Distinct last names of the model's linear layers (what LoRA can target), lm_head aside."""
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, _linear_types())}
    return sorted(names - {"lm_head"})


ALL_LINEAR = "all-linear"  # lora.target_modules: ["all-linear"], as peft spells it
_logged_defaults: set = set()


def _linear_types() -> tuple:
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

    return nn.Linear, Conv1D


def transformer_layers(model: nn.Module) -> list[nn.Module]:
    """The model's stacked transformer layers: the elements of its nn.ModuleLists whose class it
    names in _no_split_modules (any ModuleList's elements where it names none that is one)."""
    stacked = [m for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst]
    named = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in stacked if type(m).__name__ in named]
    return layers or stacked


def layer_linear_targets(model: nn.Module) -> list[str]:
    """LoRA target names for every linear layer of the attention and MLP blocks (inside the
    transformer layers; never the output head, embeddings or a pooler), each the shortest
    name ending that matches those layers only: peft matches targets by name ending, and
    BERT's "dense" would also take its pooler, so its feed-forward is "intermediate.dense"."""
    linear_types = _linear_types()
    inside = {id(m) for layer in transformer_layers(model) for m in layer.modules() if isinstance(m, linear_types)}
    names = [n for n, _ in model.named_modules()]
    wanted = {n for n, m in model.named_modules() if id(m) in inside}
    chosen: list[str] = []
    for name in (n for n in names if n in wanted):  # in the model's order: the first layer's q, k, v, ... first
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if suffix in chosen:
                break
            if all(n in wanted for n in names if n == suffix or n.endswith("." + suffix)):
                chosen.append(suffix)
                break
    return chosen


def lora_targets(model: nn.Module, lora: LoraSettings, part: str) -> list[str]:
    """The configured target names, checked against the model; empty: the architecture's
    default (peft's table, with the key and output projections beside its query and value;
    where peft has none, every linear layer of the attention and MLP blocks, said once);
    ["all-linear"]: every linear layer of the attention and MLP blocks, by name."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    model_type = getattr(model.config, "model_type", type(model).__name__)
    linear = linear_layer_names(model)
    choose = f"its linear layers are: {', '.join(linear)}"
    if ALL_LINEAR in lora.target_modules:
        if len(lora.target_modules) > 1:
            raise ConfigError(f"{part}.lora.target_modules: '{ALL_LINEAR}' means every linear layer of the attention and MLP "
                              f"blocks; give it alone, or name layers instead ({', '.join(linear)})")
        return _layer_linears_or_fail(model, part, model_type)
    if lora.target_modules:
        module_names = [n for n, _ in model.named_modules()]
        for target in lora.target_modules:
            if not any(n == target or n.endswith("." + target) for n in module_names):
                raise ConfigError(f"{part}.lora.target_modules: '{target}' matches no layer of this {model_type} model; {choose}")
        return list(lora.target_modules)
    base = PEFT_DEFAULTS.get(model_type)
    if not base:
        targets = _layer_linears_or_fail(model, part, model_type)
        if (part, model_type) not in _logged_defaults:
            _logged_defaults.add((part, model_type))
            logging.getLogger("e2llm").warning(
                "e2llm: peft has no LoRA default for '%s'; the %s's LoRA adapts every linear layer of its attention and MLP "
                "blocks: %s (set %s.lora.target_modules to choose)", model_type, part, ", ".join(targets), part)
        return targets
    targets = list(base)
    for name in base:
        targets += [s for s in _LORA_SIBLINGS.get(name, ()) if s in linear and s not in targets]
    return targets


def _layer_linears_or_fail(model: nn.Module, part: str, model_type: str) -> list[str]:
    targets = layer_linear_targets(model)
    if not targets:
        raise ConfigError(f"{part}.lora.target_modules: cannot find the linear layers of this {model_type} model's attention and "
                          f"MLP blocks; name some of its linear layers ({', '.join(linear_layer_names(model))}), or lora.r: 0 for no LoRA")
    return targets


def with_lora(model: nn.Module, lora: LoraSettings, task_type: str, part: str) -> nn.Module:
    """Freeze the backbone and attach LoRA; the resolved targets are written into `lora`."""
    for p in model.parameters():
        p.requires_grad_(False)
    if lora.r == 0:
        return model
    from peft import LoraConfig, get_peft_model

    lora.target_modules = lora_targets(model, lora, part)
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=list(lora.target_modules), task_type=task_type)
    return get_peft_model(model, cfg)
