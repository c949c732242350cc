"""E2LLM: a text encoder (+LoRA), an adapter and a decoder LLM (+LoRA), composed.

    context ──chunk──▶ chunks ──encoder──▶ (N, L, De) ──adapter──▶ (N, k, Dd) soft prompts
    [instruction] soft prompts [question] ──splice──▶ inputs_embeds ──decoder──▶ answer

The HF models are held, never subclassed: the decoder is called with ``inputs_embeds``.
Generation lives in :mod:`e2llm.generation`; this file builds, encodes, and saves.
"""
from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from . import defaults
from .adapter import build_adapter, mean_pool, span_means
from .backbones import keep_first_layers, load_backbone, sentence_transformers_pooling, with_lora
from .cache import TensorCache, content_key
from .checkpoint import check_tensors, read_config, read_tensors, save_checkpoint
from .chunking import Chunk, chunk_texts
from .config import E2LLMConfig, PromptConfig, validate_config
from .devices import DTYPES, check_attn_implementation, check_quantization, resolve_device, resolve_dtype
from .errors import CheckpointError, ConfigError, E2LLMError, InputError, check_documents
from .generation import GenerationMixin
from .softprompts import SoftPrompts
from .prompts import PromptLayout


_DTYPES = DTYPES


def _bf16_autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast for a float32 encoder where the hardware has bf16 matmuls, else nothing."""
    if _bf16_pays(device, dtype):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _spans_fit(spans: torch.Tensor, text: str) -> bool:
    """(n, 3) chunk spans (start, end, tokens) that can belong to text: ordered, inside it, non-empty."""
    if spans.dim() != 2 or spans.shape[1] != 3 or spans.dtype != torch.int64 or len(spans) == 0:
        return False
    start, end, tokens = spans.cpu().unbind(1)
    return bool((start >= 0).all() and (end > start).all() and (end <= len(text)).all() and (tokens > 0).all()
                and (start[1:] >= start[:-1]).all())


def lexical_order(question: str, texts: Sequence[str], candidates: int | None) -> list[int] | None:
    """Indices of texts by BM25 score against the question, best first (ties in text order);
    None when there is no first pass to make (candidates unset, or no more texts than that)."""
    if candidates is None or len(texts) <= candidates:
        return None
    try:
        import bm25s
    except ImportError:
        raise ConfigError("ranker_candidates needs the bm25s package (an e2llm dependency): pip install bm25s, "
                          "or set ranker_candidates: null") from None
    index = _bm25_index(tuple(texts))
    query = bm25s.tokenize([question], stopwords="en", show_progress=False, return_ids=False)[0]
    scores = index.get_scores(query) if query else [0.0] * len(texts)
    return sorted(range(len(texts)), key=lambda i: -float(scores[i]))


@functools.lru_cache(maxsize=4)
def _bm25_index(texts: tuple[str, ...]):
    """The BM25 index of a document's chunks, kept for the next questions about the same
    document (a second question is the case the encoding store already makes cheap)."""
    import bm25s

    index = bm25s.BM25()
    index.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False)
    return index


def encoder_max_tokens(config: E2LLMConfig) -> int:
    """The encoder's truncation length for a chunk: its token budget plus room for the special
    tokens a tokenizer adds around it ([CLS] [SEP] for BERT; a decoder's tokenizer adds none or a BOS)."""
    return config.chunking.tokens_per_chunk + 2


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Positions of texts grouped into batches of up to batch_size, shortest texts first: a
    batch of similar lengths pads (and so computes) little. Ties keep their order."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _bf16_pays(device: torch.device, dtype: torch.dtype) -> bool:
    """A float32 model on hardware with bf16 matmuls (CUDA, or a CPU with AVX-512 BF16 / AMX)."""
    from .decoding import fast_dtype

    return dtype == torch.float32 and device.type in ("cpu", "cuda") and fast_dtype(device, dtype) == torch.bfloat16


_UNTRAINED_WARNED = False


def _warn_untrained_once(stacklevel: int = 3) -> None:
    """A freshly built adapter answers nonsense: say so once per process, not on every build."""
    global _UNTRAINED_WARNED
    if not _UNTRAINED_WARNED:
        _UNTRAINED_WARNED = True
        warnings.warn("the adapter is freshly initialised (untrained): answers are not meaningful until you "
                      "train it (e2llm train) or load a trained checkpoint", stacklevel=stacklevel)


class E2LLM(GenerationMixin, nn.Module):
    """Build with :meth:`build` / :meth:`from_pretrained`; ask with generate / stream / generate_batch."""

    def __init__(self, config: E2LLMConfig, encoder, encoder_tokenizer, decoder, decoder_tokenizer, adapter,
                 cache_bytes: int = 256 * 2**20):
        super().__init__()
        self.config = config
        self.encoder, self.encoder_tokenizer = encoder, encoder_tokenizer
        self.decoder, self.decoder_tokenizer = decoder, decoder_tokenizer
        self.adapter = adapter
        self.layout = PromptLayout(decoder_tokenizer, config.prompt)
        self.cache = TensorCache(cache_bytes)
        self.lock = threading.RLock()  # LoRA on/off toggles and attention switches are global state
        # Encoder passes without gradients (soft prompts at inference, hybrid ranking) run in bf16
        # autocast where the hardware has bf16 matmuls; False keeps them exact fp32.
        self.autocast_encoder = True
        if decoder_tokenizer.pad_token_id is None:
            decoder_tokenizer.pad_token = decoder_tokenizer.eos_token

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, config: E2LLMConfig | None = None, *, dtype: str = "float32", device: str | None = None,
              quantization: str | None = None, cache_bytes: int = 256 * 2**20) -> "E2LLM":
        """Backbones from `config`, LoRA attached, a freshly initialised adapter (warns once: it is untrained).
        device: "cpu" (default), "cuda", "cuda:N", "mps" or "auto"; dtype: float32, bfloat16 or float16;
        quantization: the decoder's base weights, "none" or "4bit" (CUDA + bitsandbytes; None: the config's)."""
        _warn_untrained_once()
        return cls._build(config, dtype=dtype, device=device, quantization=quantization, cache_bytes=cache_bytes)

    @classmethod
    def _build(cls, config: E2LLMConfig | None, *, dtype: str, device: str | None, cache_bytes: int,
               quantization: str | None = None) -> "E2LLM":
        config = (config or E2LLMConfig()).model_copy(deep=True)
        target = resolve_device(device)  # before any weights load: a bad device fails in a second
        torch_dtype = resolve_dtype(dtype, target)
        for part in ("encoder", "decoder"):
            check_attn_implementation(getattr(config, part).attn_implementation, target, torch_dtype, part)
        # the caller's quantization over the config's: a checkpoint records the one it trained
        # with, and its LoRA tensors load onto either kind of base
        quantization = config.decoder.quantization if quantization is None else quantization
        check_quantization(quantization, target)
        config.decoder.quantization = quantization
        enc, enc_tok, enc_path = load_backbone("encoder", config.encoder, torch_dtype, decoder=config.decoder)
        if config.encoder.num_layers is not None:
            enc = keep_first_layers(enc, config.encoder.num_layers, config.encoder.name_or_path)
        dec, dec_tok, _ = load_backbone("decoder", config.decoder, torch_dtype, target)
        if config.adapter.anchor != "none" and enc_tok.get_vocab() != dec_tok.get_vocab():
            raise ConfigError(f"adapter.anchor: {config.adapter.anchor} reads the decoder's embeddings of the encoder's "
                              "tokens, but the encoder has its own vocabulary; set encoder.name_or_path: decoder, or anchor: none")
        enc_dim, dec_dim = enc.config.hidden_size, dec.get_input_embeddings().weight.shape[1]
        for part, want, got in (("encoder", config.encoder.hidden_size, enc_dim), ("decoder", config.decoder.hidden_size, dec_dim)):
            if want is not None and want != got:
                raise CheckpointError(f"this checkpoint was trained for a {part} of width {want}, but "
                                      f"'{getattr(config, part).name_or_path}' has width {got}; use the {part} it was trained with")
        config.encoder.hidden_size, config.decoder.hidden_size = enc_dim, dec_dim
        if config.encoder.pooling is None:  # the pooling the encoder was trained with, recorded in the config
            config.encoder.pooling = sentence_transformers_pooling(enc_path) or "mean"
        if config.adapter.output_rms is None:
            emb = dec.get_input_embeddings().weight.detach().float()
            config.adapter.output_rms = round(float(emb.pow(2).mean().sqrt()), 6)
        enc = with_lora(enc, config.encoder.lora, "FEATURE_EXTRACTION", "encoder")
        dec = with_lora(dec, config.decoder.lora, "CAUSAL_LM", "decoder")
        adapter = build_adapter(config.adapter, enc_dim, dec_dim, config.encoder.pooling).to(torch_dtype)
        model = cls(config, enc, enc_tok, dec, dec_tok, adapter, cache_bytes)
        model.eval()
        return model.to(target)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "default", *, dtype: str = "float32", device: str | None = None,
                        quantization: str | None = None, cache_bytes: int = 256 * 2**20) -> "E2LLM":
        """Load a checkpoint folder; "default" is the checkpoint shipped for the default models.
        device: "cpu" (default), "cuda", "cuda:N", "mps" or "auto"; dtype: float32, bfloat16 or float16;
        quantization: the decoder's base weights, "none" or "4bit" (CUDA + bitsandbytes; None: what the
        checkpoint was trained with; "none" loads a 4-bit-trained checkpoint on a CPU)."""
        options = dict(dtype=dtype, device=device, quantization=quantization, cache_bytes=cache_bytes)
        shipped = str(name_or_path) == "default"
        # "default" without its shipped files is an error, never a silent untrained adapter (noise answers)
        path = defaults.shipped_checkpoint() if shipped else Path(name_or_path)
        try:
            config = read_config(path)  # a ConfigError on a bad config.json
            tensors = read_tensors(path)  # fail on a broken file before spending time on backbones
        except E2LLMError as e:
            if shipped:
                raise defaults.shipped_damaged(e) from None
            raise
        model = cls._build(config, **options)
        try:
            model.load_trained_state_dict(tensors, source=str(path))
        except CheckpointError as e:
            if shipped:
                raise defaults.shipped_damaged(e) from None
            raise
        if not config.trained:
            _warn_untrained_once(stacklevel=3)
        return model

    def enable_gradient_checkpointing(self) -> list[str]:
        """Recompute backbone activations in the backward pass instead of holding them (less memory,
        about a third more compute); for training. Returns the parts it was switched on for."""
        done = []
        for part in ("encoder", "decoder"):
            module = getattr(self, part)
            base = module.get_base_model() if hasattr(module, "get_base_model") else module
            if not getattr(base, "supports_gradient_checkpointing", False):
                raise E2LLMError(f"the {part} ({type(base).__name__}) does not support gradient checkpointing; train without it")
            # non-reentrant: works with frozen backbones whose inputs need no grad (LoRA, inputs_embeds)
            if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name is deprecated
                base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            done.append(part)
        return done

    # ------------------------------------------------------------------ trained weights
    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what trains: adapter, encoder LoRA, decoder LoRA."""
        from peft import get_peft_model_state_dict

        out = {f"adapter.{k}": v for k, v in self.adapter.state_dict().items()}
        for name in ("encoder", "decoder"):
            module = getattr(self, name)
            if hasattr(module, "peft_config"):
                out.update({f"{name}_lora.{k}": v for k, v in get_peft_model_state_dict(module).items()})
        return out

    def load_trained_state_dict(self, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        from peft import set_peft_model_state_dict

        check_tensors(self.trained_state_dict(), tensors, source)
        self.adapter.load_state_dict({k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")})
        for name in ("encoder", "decoder"):
            module, prefix = getattr(self, name), f"{name}_lora."
            if hasattr(module, "peft_config"):
                set_peft_model_state_dict(module, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        self.cache.clear()

    def save_pretrained(self, path: str | Path, dtype: str | None = None, tensors: dict[str, torch.Tensor] | None = None) -> None:
        """config.json + model.safetensors (trained tensors only), written atomically.
        ``tensors``: what to write instead of ``trained_state_dict()`` (a trainer whose processes
        hold shards passes the whole tensors it gathered)."""
        tensors = self.trained_state_dict() if tensors is None else tensors
        if dtype:
            tensors = {k: v.to(_DTYPES[dtype]) for k, v in tensors.items()}
        save_checkpoint(Path(path), self.config, tensors)

    def set_prompt(self, **fields) -> None:
        """Change prompt settings (``system``, ``user`` with {document} and {question},
        ``raw_passages_header``, ...) for every later call; validated like a config file."""
        prompt = validate_config(PromptConfig, {**self.config.prompt.model_dump(), **fields}, "set_prompt")
        with self.lock:
            self.config.prompt = prompt
            self.layout = PromptLayout(self.decoder_tokenizer, prompt)

    def num_parameters(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"total": total, "trainable": trainable}

    @property
    def device(self) -> torch.device:
        return self.decoder.get_input_embeddings().weight.device

    @property
    def window_tokens(self) -> int:
        return self.config.decoder.max_window_tokens or int(getattr(self._decoder_base.config, "max_position_embeddings", 2048))

    @property
    def _decoder_base(self) -> nn.Module:
        return self.decoder.get_base_model() if hasattr(self.decoder, "get_base_model") else self.decoder

    # ------------------------------------------------------------------ chunk + encode
    def chunk(self, context: str | Sequence[str]) -> list[Chunk]:
        """Chunks of one document, or of several (each document its own group). Their spans are
        remembered by the document's content (in memory, and in the on-disk store where one is
        used), so a later question about the same document skips the tokenizer (0.3 s at 128K
        tokens on two CPU cores); spans that do not fit their document are chunked anew."""
        group = [context] if isinstance(context, str) else list(context)
        check_documents(group)
        cfg = self.config.chunking
        namespace = f"spans-{cfg.tokens_per_chunk}-{cfg.overlap_tokens}-{cfg.min_fill}"
        found, missing = self._lookup(namespace, group)
        missing = [i for i, t in enumerate(found) if t is None or not _spans_fit(t, group[i])]
        if missing:
            fresh = chunk_texts([group[i] for i in missing], self.encoder_tokenizer, cfg.tokens_per_chunk,
                                cfg.overlap_tokens, cfg.min_fill, missing)
            spans = [torch.tensor([[c.start, c.end, c.num_tokens] for c in chunks], dtype=torch.int64).view(-1, 3)
                     for chunks in fresh]  # (n, 3): start, end (characters), encoder tokens
            for i, t in zip(missing, self._remember(namespace, [group[i] for i in missing], spans)):
                found[i] = t
        return [Chunk(group[i][s:e], s, e, i, n) for i, t in enumerate(found) for s, e, n in t.tolist()]

    def chunk_many(self, contexts: Sequence[str | Sequence[str]]) -> list[list[Chunk]]:
        """``chunk`` of each context, all documents tokenized in one batched call."""
        docs, owner, doc_indices = [], [], []
        for c, context in enumerate(contexts):
            group = [context] if isinstance(context, str) else list(context)
            check_documents(group)
            docs += group
            owner += [c] * len(group)
            doc_indices += range(len(group))
        cfg = self.config.chunking
        per_doc = chunk_texts(docs, self.encoder_tokenizer, cfg.tokens_per_chunk, cfg.overlap_tokens, cfg.min_fill, doc_indices)
        out: list[list[Chunk]] = [[] for _ in contexts]
        for c, chunks in zip(owner, per_doc):
            out[c] += chunks
        return out

    def encode(self, context: str | Sequence[str] | SoftPrompts) -> SoftPrompts:
        """Read a document once; the result answers any number of questions."""
        if isinstance(context, SoftPrompts):
            return context
        chunks = self.chunk(context)
        return SoftPrompts(self.encode_chunks(chunks), chunks)

    # Hybrid ranking vectors: "shared" pools the states of the soft-prompt pass itself (one
    # encoder pass over the chunks); "base" pools the encoder *without* its LoRA (the pretrained
    # sentence-embedding model: a second pass). On held-out text the shared vectors rank at least
    # as well (docs/speed.md, `e2llm bench encode`), at half the encoder cost. Default "base":
    # with "shared" the FSDP training test's curve (tests/test_train.py) no longer matched, since
    # ranking then follows the encoder LoRA as it trains; opt in for inference.
    ranking_pass: str = "base"
    # With autocast_encoder, inference passes run a merged bf16 copy of the encoder where bf16
    # pays; False: bf16 autocast over the float32 weights instead (the previous path, which
    # `e2llm bench encode` times beside it).
    encoder_copy: bool = True
    store = None  # an EncodingStore (see use_store): encodings shared across processes

    def use_store(self, path, max_bytes: int | None = None) -> None:
        """Keep chunk encodings (and ranking vectors) on disk under ``path`` too, keyed by content
        and by the weights that made them; None stops using one. max_bytes: the store's size
        limit (least recently used entries go first; None: the store's default, 1 GiB)."""
        from .store import EncodingStore

        kwargs = {} if max_bytes is None else {"max_bytes": max_bytes}
        self.store = None if path is None else EncodingStore(path, **kwargs)

    def _encoding_fingerprint(self) -> str:
        """Identifies everything an encoding depends on (weights, settings); recomputed when they change."""
        from .decoding import _weights_version
        from .store import fingerprint

        version = (_weights_version(self.encoder), _weights_version(self.adapter), self.autocast_encoder, self.encoder_copy,
                   self.ranking_pass)
        cached = getattr(self, "_fingerprint_cache", None)
        if cached is None or cached[0] != version:
            settings = {"encoder": self.config.encoder.model_dump(), "adapter": self.config.adapter.model_dump(),
                        "max_tokens": self.config.chunking.tokens_per_chunk, "autocast": self.autocast_encoder,
                        "precision": "bf16 copy, GELU in the product" if self._encoder_copy_pays() else "own dtype"}
            self._fingerprint_cache = (version, fingerprint(settings, {"encoder": self.encoder, "adapter": self.adapter}))
        return self._fingerprint_cache[1]

    def _lookup(self, namespace: str, texts: Sequence[str]) -> tuple[list, list[int]]:
        """Cached tensors for texts (memory, then the on-disk store), and the indices still missing."""
        keys = [content_key(namespace, t) for t in texts]
        found = [self.cache.get(k) for k in keys]
        missing = [i for i, t in enumerate(found) if t is None]
        if missing and self.store is not None:
            loaded = self.store.get_many(self._encoding_fingerprint(), [keys[i] for i in missing])
            for i, t in zip(missing, loaded):
                if t is not None:
                    found[i] = t.to(self.device)
                    self.cache.put(keys[i], found[i])
            missing = [i for i, t in enumerate(found) if t is None]
        return found, missing

    def _remember(self, namespace: str, texts: Sequence[str], tensors: torch.Tensor) -> list[torch.Tensor]:
        keys = [content_key(namespace, t) for t in texts]
        rows = [t.clone() for t in tensors]  # clone: a view would pin the whole batch in the cache
        for k, t in zip(keys, rows):
            self.cache.put(k, t)
        if self.store is not None:
            self.store.put_many(self._encoding_fingerprint(), list(zip(keys, rows)))
        return rows

    def _pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(n, L, De) -> (n, De) unit vectors, pooled as config.encoder.pooling says."""
        pooled = states[:, 0] if self.config.encoder.pooling == "cls" else mean_pool(states, mask)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    @torch.no_grad()
    def _encode_pass(self, texts: Sequence[str]) -> None:
        """One encoder pass (LoRA on) over texts: their soft prompts, and with ranking_pass
        "shared" their ranking vectors from the same states, into the caches."""
        shared = self.ranking_pass == "shared"

        def outputs(states, mask, ids):  # soft prompts, and ranking vectors from the same states
            soft_ = self.adapt(states, mask, ids)
            return (soft_, self._pool(states, mask)) if shared else (soft_,)

        with self.lock:
            soft, *rank = self._encoded(texts, outputs, grad=False)
        self._remember("soft", texts, soft)
        if rank:
            self._remember("rank-shared", texts, rank[0])

    @torch.no_grad()
    def encode_chunks(self, chunks: Sequence[Chunk]) -> torch.Tensor:
        """(N, k, Dd) soft prompts, from the caches where a chunk was seen before."""
        texts = [c.text for c in chunks]
        found, missing = self._lookup("soft", texts)
        if missing:
            self._encode_pass([texts[i] for i in missing])
            found, missing = self._lookup("soft", texts)
            if missing:  # evicted at once (a tiny memory cache): encode without caching
                return self.soft_prompts(texts, encoder_grad=False)
        if not found:
            return torch.empty(0, self.config.adapter.tokens_per_chunk, self.config.decoder.hidden_size)
        return torch.stack(found)

    def _encoder_batches(self, texts: Sequence[str], grad: bool = True):
        """Yield ((n,) positions in texts, (n, L, De) token states, (n, L) mask, (n, L) ids) in bounded batches
        (flat memory) of texts sorted by token count, so a batch pads little (chunks cut back to a
        sentence vary in length; 10-12% of a batch in document order was padding on the bench documents).
        :meth:`_encoded` puts the per-batch results back in the order of texts.
        grad=False runs the encoder without gradients even where the caller records them."""
        bs, max_len = self.config.encoder.chunks_per_batch, encoder_max_tokens(self.config)
        grad = grad and torch.is_grad_enabled()
        encoder, precision = self.encoder, contextlib.nullcontext()
        # Without gradients the encoder may run in bf16 (see autocast_encoder); training stays exact.
        if self.autocast_encoder and not grad:
            copy_ = self._bf16_encoder()
            if copy_ is not None:
                encoder = copy_
            else:
                precision = _bf16_autocast(self.device, next(self.encoder.parameters()).dtype)
        tok = self.encoder_tokenizer
        all_ids = tok(list(texts), truncation=True, max_length=max_len)["input_ids"]
        for rows in length_sorted_batches([len(x) for x in all_ids], bs):
            batch = tok.pad({"input_ids": [all_ids[i] for i in rows]}, return_tensors="pt")  # (n, L), the tokenizer's padding side
            mask, ids = batch["attention_mask"].to(self.device), batch["input_ids"].to(self.device)
            with precision, torch.set_grad_enabled(grad):
                states = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            yield torch.tensor(rows, device=self.device), states, mask, ids

    def _encoded(self, texts: Sequence[str], fn, grad: bool = True) -> tuple[torch.Tensor, ...]:
        """fn((n, L, De) states, (n, L) mask, (n, L) ids) -> a tuple of (n, ...) tensors, over every
        batch of _encoder_batches; each result comes back (N, ...) in the order of texts."""
        rows, outs = [], []
        for batch_rows, states, mask, ids in self._encoder_batches(texts, grad):
            rows.append(batch_rows)
            outs.append(fn(states, mask, ids))
        back = torch.cat(rows).argsort()  # sorted position -> text position
        return tuple(torch.cat(parts)[back] for parts in zip(*outs))

    def _encoder_copy_pays(self) -> bool:
        return self.autocast_encoder and self.encoder_copy and _bf16_pays(self.device, next(self.encoder.parameters()).dtype)

    def _bf16_encoder(self) -> torch.nn.Module | None:
        """At inference (no gradients anywhere) a bf16 copy of the encoder, LoRA merged (or left
        out while switched off), where bf16 pays; None elsewhere (training keeps autocast over
        the weights it updates). On AMX CPUs the copy runs the ranker's pass 1.35x faster than
        autocast, which recasts every float32 weight on every call, and its BERT-style GELUs run
        inside the packed feed-forward product (docs/speed.md)."""
        if not self._encoder_copy_pays() or torch.is_grad_enabled():
            return None
        copies = getattr(self, "_encoder_copies", None)
        if copies is None:
            from .decoding import InferenceCopies

            copies = self._encoder_copies = InferenceCopies(lean=False, pack=False, fuse_gelu=True)
        return copies.get(self.encoder, fast=True)

    def soft_prompts(self, texts: Sequence[str], encoder_grad: bool = True) -> torch.Tensor:
        """(N, k, Dd) soft prompts for chunk texts; differentiable (the trainer calls this).
        encoder_grad=False runs the encoder without gradients (the adapter keeps them), and so
        in bf16 autocast as at inference: the encoder's backward pass is most of the cost of a
        long context."""
        with self.lock:
            return self._encoded(texts, lambda states, mask, ids: (self.adapt(states, mask, ids),), encoder_grad)[0]

    def adapt(self, states: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(n, L, De) encoder states, (n, L) mask and encoder ids -> (n, k, Dd) soft prompts: the
        adapter, with its anchor (the decoder's mean embedding of each part) where configured."""
        dtype = next(self.adapter.parameters()).dtype  # the adapter may train in float32 over bf16 backbones
        anchor = None
        if self.config.adapter.anchor == "mean_embedding":
            with torch.no_grad():  # the decoder's embedding table is frozen
                embeds = self._decoder_base.get_input_embeddings()(ids).to(dtype)  # (n, L, Dd)
                anchor = span_means(embeds, mask, self.config.adapter.tokens_per_chunk, self.config.adapter.output_rms)
        return self.adapter(states.to(dtype), mask, anchor)

    @torch.no_grad()
    def retrieval_vectors(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, De) unit sentence embeddings from the encoder *without* its LoRA: the pretrained
        sentence-embedding model is already a retriever; the LoRA is tuned for the decoder."""
        found, missing = self._lookup("retr", texts)
        if missing:
            off = self.encoder.disable_adapter() if hasattr(self.encoder, "disable_adapter") else contextlib.nullcontext()
            with self.lock, off:
                fresh = self._encoded([texts[i] for i in missing], lambda states, mask, ids: (self._pool(states, mask),))[0]
            for i, t in zip(missing, self._remember("retr", [texts[i] for i in missing], fresh)):
                found[i] = t
        return torch.stack(found)

    @torch.no_grad()
    def ranking_vectors(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, De) unit vectors that rank chunks against a question (see ranking_pass)."""
        if self.ranking_pass != "shared":
            return self.retrieval_vectors(texts)
        found, missing = self._lookup("rank-shared", texts)
        if missing:
            self._encode_pass([texts[i] for i in missing])
            found, missing = self._lookup("rank-shared", texts)
            if missing:
                raise RuntimeError("ranking vectors were evicted as soon as they were made; raise cache_bytes")
        return torch.stack(found)

    def raw_chunk_indices(self, question: str, chunks: Sequence[Chunk], n: int) -> list[int]:
        """Hybrid reading: the n chunks most similar to the question, in document order."""
        return sorted(self.rank_chunks(question, chunks)[:n]) if n and chunks else []

    def rank_chunks(self, question: str, chunks: Sequence[Chunk]) -> list[int]:
        """Chunk indices, most similar to the question first. With config.ranker_candidates the
        encoder ranks only the chunks BM25 puts first; the rest follow in BM25's order. With
        config.ranker "bm25", BM25 alone ranks them all."""
        if not chunks:
            return []
        if self.config.ranker == "bm25":  # candidates=0: every chunk in BM25's order, whatever their number
            return lexical_order(question, [c.text for c in chunks], 0)
        pool = lexical_order(question, [c.text for c in chunks], self.config.ranker_candidates)
        pool = list(range(len(chunks))) if pool is None else pool
        head = pool[: self.config.ranker_candidates or len(pool)]  # what the encoder ranks
        q = self.ranking_vectors([question])[0]
        order = (self.ranking_vectors([chunks[i].text for i in head]) @ q).argsort(descending=True).tolist()
        return [head[i] for i in order] + pool[len(head):]
