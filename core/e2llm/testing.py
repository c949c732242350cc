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


def build_tiny_backbones(root: str | Path, seed: int = 0, hidden: int = 32, window: int = 1024,
                         decoder_init_std: float = 0.3) -> tuple[str, str]:
    """Save a tiny BERT encoder and a tiny Llama decoder under `root`; return their folders.

    decoder_init_std: at the usual 0.02 a random decoder emits the same token whatever it
    reads, so "same answer" tests would pass vacuously; a wide init makes answers depend on
    the question and the document."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = Path(root)
    torch.manual_seed(seed)

    # encoder: WordPiece with [CLS] ... [SEP], like BERT
    wp = Tokenizer(models.WordPiece(_wordpiece_vocab(), unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    wp.decoder = decoders.WordPiece()
    enc_tok = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")
    enc = BertModel(BertConfig(vocab_size=len(enc_tok), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=2 * hidden, max_position_embeddings=512))
    enc_dir = root / "tiny-encoder"
    enc.save_pretrained(enc_dir)
    enc_tok.save_pretrained(enc_dir)

    # decoder: byte-level BPE (every string round-trips), chat template, <|im_end|> as eos
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    dec_tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                      bos_token="<|im_start|>")
    dec_tok.chat_template = CHAT_TEMPLATE
    dec = LlamaForCausalLM(LlamaConfig(vocab_size=len(dec_tok), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=2 * hidden, max_position_embeddings=window,
                                       eos_token_id=dec_tok.eos_token_id, pad_token_id=dec_tok.pad_token_id,
                                       bos_token_id=dec_tok.bos_token_id, tie_word_embeddings=True,
                                       initializer_range=decoder_init_std))
    dec.generation_config.eos_token_id = dec_tok.eos_token_id
    dec_dir = root / "tiny-decoder"
    dec.save_pretrained(dec_dir)
    dec_tok.save_pretrained(dec_dir)
    return str(enc_dir), str(dec_dir)


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
