"""The decode loop: one prefill of the spliced prompt, then one token a step on a pre-allocated KV cache
(or, for a greedy answer on the lean forward, a token and a draft copied from the prompt a step).

Greedy, sampling (temperature, top-p), end-of-turn ids, stop strings, a minimum length, a
streamer and left-padded batches all run through :func:`decode`, so generate_batch and
stream share one path. Semantics follow transformers' ``generate`` (greedy answers match it
token for token in float32; tests/test_decoding.py checks this): finished rows are padded,
positions count real tokens only, a sampled step draws ``multinomial(softmax(warped logits))``.

Speed: the decoder is memory-bound at one token a step, so :class:`InferenceCopies` keeps a
copy of it for inference with the LoRA merged into the weights (no extra adapter matmuls) and,
where the CPU has bf16 units, in bfloat16 with oneDNN-packed weights for one-row products
(plain bf16 ``F.linear`` at one row is no faster than float32 on this CPU; the packed product
is about 2x faster, see docs/speed.md); without bf16 units, in float32 with packed weights (plain
float32 products of 2-9 rows cost twice one row's). A Llama-family copy (Llama, SmolLM, Qwen2,
Mistral without a sliding window) then runs :class:`e2llm.lean.LeanDecoder`, the same arithmetic with
fused products and a few hundred fewer small ops a step; other decoders run transformers'
forward through the same loop. Since a step reads all the weights whether it carries one row or
nine, a greedy answer on the lean forward also checks up to ``draft_tokens`` tokens copied from
the prompt (:class:`PromptLookup`) in the same pass and keeps those the model itself picks.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from .lean import LeanDecoder
from .lean import supports as lean_supports
from .packed import PACKED_MAX_ROWS, PackedLinear  # noqa: F401  (PACKED_MAX_ROWS: e2llm.decoding's public name)


@dataclass
class DecodeSettings:
    max_new_tokens: int
    eos_token_ids: list[int]
    pad_token_id: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    min_new_tokens: int = 0
    stop_strings: list[str] = field(default_factory=list)
    tokenizer: object = None  # needed for stop strings
    draft_tokens: int = 0  # greedy, one row, lean forward: check up to this many tokens copied from the prompt a pass


def cpu_has_bf16() -> bool:
    try:  # oneDNN's own check for bf16 kernels (AVX-512 BF16 or AMX)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def fast_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """bf16 for inference where the hardware has bf16 matmuls, else the weights' own dtype."""
    if dtype != torch.float32:
        return dtype
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return dtype


def lora_enabled(model: nn.Module) -> bool:
    """False inside peft's ``disable_adapter()`` (or without any LoRA layer)."""
    for m in model.modules():
        if hasattr(m, "disable_adapters") and hasattr(m, "lora_A"):
            return not m.disable_adapters
    return False


def is_quantized(model: nn.Module) -> bool:
    """Whether transformers loaded the model with quantized weights (peft models pass the
    attributes through from their base model)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
                or getattr(model, "quantization_method", None))


def _weights_version(model: nn.Module) -> tuple:
    # in-place updates (optimizer steps, load_state_dict) bump _version; .to() makes new tensors
    return tuple((id(p), p._version) for p in model.parameters())


class InferenceCopies:
    """Inference copies of a backbone (the decoder; the encoder too, with lean=False and
    pack=False), rebuilt whenever its weights change: LoRA merged (or left out while the LoRA
    is switched off), in the fast dtype where asked."""

    def __init__(self, lean: bool = True, pack: bool = True, fuse_gelu: bool = False):
        self._copies: dict[tuple, tuple[tuple, nn.Module]] = {}
        self.lean = lean  # Llama-family copies run e2llm.lean's forward (same arithmetic, fewer ops)
        self.pack = pack  # oneDNN-packed weights for products up to PACKED_MAX_ROWS rows (decode steps, short prefills)
        self.fuse_gelu = fuse_gelu  # BERT-style feed-forwards: GELU inside the packed product (encoders)

    def get(self, decoder: nn.Module, fast: bool) -> nn.Module:
        if is_quantized(decoder):
            # 4-bit (bitsandbytes) weights cannot be deep-copied into a merged bf16 copy: merging
            # LoRA into them would dequantize the whole model. Decode on the decoder itself, its
            # LoRA unmerged (and so following its switch), as with fast_decode off.
            return decoder.get_base_model() if hasattr(decoder, "get_base_model") else decoder
        param = next(decoder.parameters())
        dtype = fast_dtype(param.device, param.dtype) if fast else param.dtype
        lora_on = lora_enabled(decoder)
        key, version = (lora_on, dtype), _weights_version(decoder)
        hit = self._copies.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        self._copies = {k: v for k, v in self._copies.items() if v[0] == version}  # stale copies go
        copy_ = build_inference_copy(decoder, lora_on, dtype, pack=self.pack, fuse_gelu=self.fuse_gelu)
        self._copies[key] = (version, LeanDecoder(copy_) if self.lean and lean_supports(copy_) else copy_)
        return self._copies[key][1]

    def clear(self) -> None:
        self._copies.clear()


@torch.no_grad()
def build_inference_copy(decoder: nn.Module, lora_on: bool, dtype: torch.dtype, pack: bool = True,
                         fuse_gelu: bool = False) -> nn.Module:
    if hasattr(decoder, "merge_and_unload"):  # a peft model: merge into a copy, never in place
        dup = copy.deepcopy(decoder)
        plain = dup.merge_and_unload() if lora_on else dup.unload()
    else:
        plain = copy.deepcopy(decoder)
    plain = plain.to(dtype).eval()
    for p in plain.parameters():
        p.requires_grad_(False)
    on_cpu = next(plain.parameters()).device.type == "cpu"
    bf16 = dtype == torch.bfloat16 and on_cpu and cpu_has_bf16()
    if bf16 and fuse_gelu:
        _fuse_gelu(plain)
    # oneDNN packs bf16 where the CPU has bf16 units, and float32 anywhere (the fast copy's dtype
    # on CPUs without them)
    if pack and (bf16 or (dtype == torch.float32 and on_cpu)):
        _pack_linears(plain, dtype)
    return plain


def _is_exact_gelu(act: nn.Module) -> bool:
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    # transformers' GELUActivation ("gelu" in ACT2FN): F.gelu, or the same erf formula in Python
    return type(act).__name__ == "GELUActivation" and getattr(act, "act", None) in (nn.functional.gelu, getattr(act, "_gelu_python", None))


def _fuse_gelu(model: nn.Module) -> None:
    """BERT-family feed-forwards (BertIntermediate, RobertaIntermediate, ...: ``dense`` then
    ``intermediate_act_fn``) with an exact GELU: the GELU moves into the packed product."""
    for m in model.modules():
        dense, act = getattr(m, "dense", None), getattr(m, "intermediate_act_fn", None)
        if type(dense) is nn.Linear and isinstance(act, nn.Module) and _is_exact_gelu(act):
            m.dense, m.intermediate_act_fn = PackedLinear(dense, gelu=True), nn.Identity()


def _pack_linears(model: nn.Module, dtype: torch.dtype) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear(child, dtype=dtype))


def _make_cache(model: nn.Module, max_len: int, batch: int):
    from transformers import DynamicCache, StaticCache

    try:  # pre-allocated: no per-step concatenation of every layer's keys and values
        return StaticCache(config=model.config, max_cache_len=max_len)
    except (TypeError, ValueError, NotImplementedError):
        return DynamicCache(config=model.config)


def _warp(logits: torch.Tensor, s: DecodeSettings) -> torch.Tensor:
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    if s.temperature is not None and s.temperature != 1.0:
        logits = TemperatureLogitsWarper(s.temperature)(None, logits)
    if s.top_p is not None and s.top_p < 1.0:
        logits = TopPLogitsWarper(s.top_p)(None, logits)
    return logits


def _stopped_by_string(tokenizer, ids: Sequence[int], stop: Sequence[str]) -> bool:
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return any(s in text for s in stop if s)


class _TransformersSteps:
    """transformers' forward with a pre-allocated cache, behind LeanDecoder's prefill/step."""

    def __init__(self, model: nn.Module):
        self.model = model

    def prefill(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, max_len: int) -> torch.Tensor:
        B, T = attention_mask.shape
        self.cache = _make_cache(self.model, max_len, B)
        self.mask = attention_mask.long()
        self.position_ids = (self.mask.cumsum(-1) - 1).masked_fill(self.mask == 0, 0)  # (B, T) as transformers' generate
        self.length = T
        dtype = next(self.model.parameters()).dtype
        return self.model(inputs_embeds=inputs_embeds.to(dtype), attention_mask=self.mask, position_ids=self.position_ids,
                          cache=self.cache, use_cache=True, cache_position=torch.arange(T, device=inputs_embeds.device),
                          logits_to_keep=1).logits[:, -1].float()  # (B, V)

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        B = ids.shape[0]
        self.mask = torch.cat([self.mask, self.mask.new_ones(B, 1)], dim=-1)
        self.position_ids = self.position_ids[:, -1:] + 1
        logits = self.model(input_ids=ids[:, None], attention_mask=self.mask, position_ids=self.position_ids, cache=self.cache,
                            use_cache=True, cache_position=torch.tensor([self.length], device=ids.device)).logits[:, -1]
        self.length += 1
        return logits.float()


class PromptLookup:
    """Drafts for greedy decoding copied from the prompt and the answer so far (prompt lookup,
    Saxena 2023): the tokens that followed the latest earlier occurrence of the last n tokens
    (n = max_ngram down to 1). Answers about a document copy names, numbers and phrases from its
    raw passages and the question, so a draft is often right; the decoder checks every drafted
    token, so the answer is the one plain greedy decoding gives. -1 marks a position without a
    token id (a soft token, padding): no draft runs across it."""

    def __init__(self, ids: Sequence[int], max_ngram: int = 3):
        self.ids: list[int] = []
        self.where: dict[int, list[int]] = {}  # token id -> its positions in ids
        self.max_ngram = max_ngram
        for t in ids:
            self.append(t)

    def append(self, token: int) -> None:
        self.where.setdefault(token, []).append(len(self.ids))
        self.ids.append(token)

    def draft(self, max_tokens: int) -> list[int]:
        ids, end = self.ids, len(self.ids)
        if max_tokens <= 0 or not end or ids[-1] < 0:
            return []
        for n in range(min(self.max_ngram, end - 1), 0, -1):
            tail = ids[end - n:]
            for p in reversed(self.where[ids[-1]]):  # p: where an earlier copy of the tail ends
                if p == end - 1 or p + 1 < n or ids[p + 1 - n:p + 1] != tail:
                    continue
                follow = ids[p + 1:p + 1 + max_tokens]
                if -1 in follow:
                    follow = follow[:follow.index(-1)]
                if follow:
                    return follow
        return []


class _Emitted:
    """New tokens as they are chosen: pads finished rows, streams, ends rows on an end-of-turn id
    or a stop string."""

    def __init__(self, B: int, s: DecodeSettings, streamer, device: torch.device):
        self.s, self.streamer = s, streamer
        self.eos = torch.tensor(sorted(set(s.eos_token_ids)), dtype=torch.long, device=device)
        self.unfinished = torch.ones(B, dtype=torch.bool, device=device)
        self.rows: list[list[int]] = [[] for _ in range(B)]
        self.out: list[torch.Tensor] = []

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) logits -> (B,) the next token of each row."""
        if len(self.out) < self.s.min_new_tokens and self.eos.numel():
            logits[:, self.eos] = -float("inf")
        if self.s.do_sample:
            probs = torch.softmax(_warp(logits, self.s), dim=-1)
            return torch.multinomial(probs, num_samples=1).squeeze(1)
        return logits.argmax(-1)

    def put(self, nxt: torch.Tensor) -> bool:
        """Records (B,) next tokens; True while some row goes on and the budget is not spent."""
        s = self.s
        nxt = torch.where(self.unfinished, nxt, torch.full_like(nxt, s.pad_token_id))
        self.out.append(nxt)
        if self.streamer is not None:
            self.streamer.put(nxt.cpu())
        self.unfinished &= ~torch.isin(nxt, self.eos)
        if s.stop_strings:
            for b in range(len(self.rows)):
                self.rows[b].append(int(nxt[b]))
                if self.unfinished[b] and _stopped_by_string(s.tokenizer, self.rows[b], s.stop_strings):
                    self.unfinished[b] = False
        return bool(self.unfinished.any()) and len(self.out) < s.max_new_tokens


@torch.no_grad()
def decode(model: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, s: DecodeSettings,
           streamer=None, prompt_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, Dd) left-padded prompt embeddings -> (B, new) token ids (pad after a row ends).

    prompt_ids: (B, T) the prompt's token ids, -1 where it has none (soft tokens, padding); with
    ``s.draft_tokens`` > 0, greedy decoding of one row on the lean forward checks drafts copied
    from them (:class:`PromptLookup`) several tokens a pass."""
    B, T = attention_mask.shape
    if s.max_new_tokens < 1:
        return torch.empty(B, 0, dtype=torch.long, device=inputs_embeds.device)
    steps = model if isinstance(model, LeanDecoder) else _TransformersSteps(model)
    emitted = _Emitted(B, s, streamer, inputs_embeds.device)
    if streamer is not None:
        streamer.put(torch.empty(B, 0, dtype=torch.long))  # the prompt: no ids with inputs_embeds
    logits = steps.prefill(inputs_embeds, attention_mask, T + s.max_new_tokens)  # (B, V)
    if s.draft_tokens > 0 and not s.do_sample and B == 1 and isinstance(steps, LeanDecoder) and prompt_ids is not None:
        _decode_with_drafts(steps, logits, emitted, PromptLookup(prompt_ids[0].tolist()), s.draft_tokens)
    else:
        while emitted.put(nxt := emitted.pick(logits)):
            logits = steps.step(nxt)
    if streamer is not None:
        streamer.end()
    return torch.stack(emitted.out, dim=1)


def _decode_with_drafts(lean: LeanDecoder, logits: torch.Tensor, emitted: _Emitted, lookup: PromptLookup,
                        draft_tokens: int) -> None:
    """One row, greedy: feed the last token and a draft in one pass, keep the drafted tokens the
    model itself picks, then the first token it picks otherwise; the cache forgets the rest."""
    nxt = emitted.pick(logits)  # (1,)
    going = emitted.put(nxt)
    while going:
        lookup.append(int(nxt))
        draft = lookup.draft(min(draft_tokens, emitted.s.max_new_tokens - len(emitted.out) - 1))
        fed = torch.tensor([[int(nxt)] + draft], device=nxt.device)  # (1, 1 + len(draft))
        rows = lean.extend(fed)[0] if draft else lean.step(nxt)  # (1 + len(draft), V)
        accepted = 0
        for j in range(rows.shape[0]):
            nxt = emitted.pick(rows[j:j + 1])
            going = emitted.put(nxt)
            if not going or j == len(draft) or int(nxt) != draft[j]:
                break
            lookup.append(draft[j])
            accepted += 1
        lean.rewind(len(draft) - accepted)
