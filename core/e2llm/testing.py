"""Tiny random encoder/decoder pairs built from configs, for fast tests (ours and users').

Tokenizers are built in memory from a few sentences (byte-level BPE for the decoder,
WordPiece for the encoder), so nothing is downloaded and any text round-trips.
"""
from __future__ import annotations

from pathlib import Path

_TEXT = (
    "The quick brown fox jumps over the lazy dog. A long document is split into chunks of text. "
    "Each chunk is encoded into one soft prompt vector. The decoder reads the soft prompts and the question. "
    "Question: what does the document say? Answer: it says many things about foxes, dogs and numbers 0123456789.\n"
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus():
    return [_TEXT * 3, _TEXT.upper(), _TEXT.lower(), "".join(chr(c) for c in range(32, 127))]


def _wordpiece_vocab(size: int = 300) -> dict[str, int]:
    """A fixed WordPiece vocabulary: specials, each character alone and as a continuation, then the
    corpus's words by frequency. (WordPiece training breaks frequency ties in hash order: every
    run got another vocabulary, hence another random model, and tests passed or failed by draw.)"""
    import re
    from collections import Counter

    texts = [t.lower() for t in _corpus()]  # the normalizer lowercases
    chars = sorted({c for t in texts for c in t if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + chars + ["##" + c for c in chars if c.isalnum()]
    counts = Counter(w for t in texts for w in re.findall(r"[a-z0-9]{2,}", t))
    vocab += [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return {token: i for i, token in enumerate(vocab[:size])}


ENCODER_FAMILIES = ("bert", "roberta", "xlm-roberta", "mpnet")
DECODER_FAMILIES = ("llama", "qwen2", "mistral", "gemma2", "phi3")


def tiny_encoder_tokenizer():
    """WordPiece with [CLS] ... [SEP], like BERT (fast, with offsets)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    wp = Tokenizer(models.WordPiece(_wordpiece_vocab(), unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    wp.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")


def tiny_decoder_tokenizer():
    """Byte-level BPE (every string round-trips), a chat template, <|im_end|> as eos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_encoder(folder: str | Path, family: str = "bert", hidden: int = 32, pooling: str | None = None,
                       seed: int | None = 0) -> str:
    """A random 2-layer encoder of `family` (see ENCODER_FAMILIES) with its tokenizer, saved in `folder`.
    pooling "cls" / "mean": also write sentence-transformers' modules.json and 1_Pooling/config.json,
    as BGE-style (CLS) and MiniLM-style (mean) folders carry. seed None: keep the RNG as it is."""
    import json

    import torch
    from transformers import AutoModel, BertConfig, MPNetConfig, RobertaConfig, XLMRobertaConfig

    if seed is not None:
        torch.manual_seed(seed)
    tok = tiny_encoder_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, intermediate_size=2 * hidden)
    configs = {
        "bert": lambda: BertConfig(**common, max_position_embeddings=512),
        # RoBERTa-style positions start after the padding index: room for 512 tokens + 2
        "roberta": lambda: RobertaConfig(**common, max_position_embeddings=514, pad_token_id=tok.pad_token_id, type_vocab_size=1),
        "xlm-roberta": lambda: XLMRobertaConfig(**common, max_position_embeddings=514, pad_token_id=tok.pad_token_id, type_vocab_size=1),
        "mpnet": lambda: MPNetConfig(**common, max_position_embeddings=514, pad_token_id=tok.pad_token_id),
    }
    if family not in configs:
        raise ValueError(f"unknown encoder family {family!r}; one of {', '.join(configs)}")
    folder = Path(folder)
    AutoModel.from_config(configs[family]()).save_pretrained(folder)
    tok.save_pretrained(folder)
    if pooling:
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": hidden, "pooling_mode_cls_token": pooling == "cls", "pooling_mode_mean_tokens": pooling == "mean"}))
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    return str(folder)


def build_tiny_decoder(folder: str | Path, family: str = "llama", hidden: int = 32, window: int = 1024,
                       init_std: float = 0.3, seed: int | None = 0, sliding_window: int | None = 48) -> str:
    """A random 2-layer causal LM of `family` (see DECODER_FAMILIES) with its tokenizer, saved in `folder`.

    init_std: at the usual 0.02 a random decoder emits the same token whatever it reads, so
    "same answer" tests would pass vacuously; a wide init makes answers depend on the input.
    sliding_window: for the families that have one (mistral, gemma2), small enough that prompts
    cross it. seed None: keep the RNG as it is."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    if seed is not None:
        torch.manual_seed(seed)
    tok = tiny_decoder_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=2 * hidden, max_position_embeddings=window, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, tie_word_embeddings=True, initializer_range=init_std)
    configs = {
        "llama": lambda: LlamaConfig(**common),
        "qwen2": lambda: Qwen2Config(**common),
        "mistral": lambda: MistralConfig(**common, sliding_window=sliding_window),
        # Gemma 2: logit soft-capping, alternating sliding/full layers, a scaled embedding
        "gemma2": lambda: Gemma2Config(**common, head_dim=hidden // 4, query_pre_attn_scalar=hidden // 4, sliding_window=sliding_window),
        # Phi-3: fused qkv_proj (peft knows no default LoRA targets for it)
        "phi3": lambda: Phi3Config(**common),
    }
    if family not in configs:
        raise ValueError(f"unknown decoder family {family!r}; one of {', '.join(configs)}")
    model = AutoModelForCausalLM.from_config(configs[family]())
    model.generation_config.eos_token_id = tok.eos_token_id
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def build_tiny_backbones(root: str | Path, seed: int = 0, hidden: int = 32, window: int = 1024,
                         decoder_init_std: float = 0.3) -> tuple[str, str]:
    """Save a tiny BERT encoder and a tiny Llama decoder under `root`; return their folders
    (one seed for both, drawn in that order: the same random models as always)."""
    root = Path(root)
    enc_dir = build_tiny_encoder(root / "tiny-encoder", "bert", hidden, seed=seed)
    dec_dir = build_tiny_decoder(root / "tiny-decoder", "llama", hidden, window, decoder_init_std, seed=None)
    return enc_dir, dec_dir


def tiny_config(enc_dir: str, dec_dir: str, **overrides):
    """An E2LLMConfig over the tiny backbones with small chunks; overrides by section."""
    from .config import E2LLMConfig

    data = {
        "encoder": {"name_or_path": enc_dir, "chunks_per_batch": 8, "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}},
        "decoder": {"name_or_path": dec_dir, "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
        "adapter": {"kind": "pma", "tokens_per_chunk": 1, "num_heads": 4},
        "chunking": {"tokens_per_chunk": 16},
        "prompt": {"max_new_tokens": 8},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return E2LLMConfig.model_validate(data)


def eager_attentions(decoder, embeds):
    """(layers, heads, T, T) float32: every layer's full eager attention for one row of
    ``embeds`` (1, T, Dd). The reference the answer-rows citations are checked and measured
    against; it holds O(layers * heads * T^2) memory, which is why the engine no longer does."""
    import torch

    previous = decoder.config._attn_implementation
    decoder.set_attn_implementation("eager")  # only eager attention returns the weights
    try:
        attentions = decoder(inputs_embeds=embeds, output_attentions=True).attentions
    finally:
        decoder.set_attn_implementation(previous)
    return torch.stack([a[0].float() for a in attentions])
