"""Switching the decoder's LoRA off for a block: the plain instruct model as released.

A neutral module (not eval's, not train's) because evaluation, validation and the benchmarks
all compare the tuned decoder with the untuned one."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def decoder_lora(engine, enabled: bool):
    """Switch the decoder's LoRA off for the block unless ``enabled`` (global state: locked)."""
    if enabled or not hasattr(engine.decoder, "disable_adapter"):
        yield
        return
    with engine.lock, engine.decoder.disable_adapter():
        yield
