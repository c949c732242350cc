"""Shared fixtures. Tiers: pure (no models), tiny random models (seconds), real default models (slow)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory):
    from e2llm.testing import build_tiny_backbones

    return build_tiny_backbones(tmp_path_factory.mktemp("backbones"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_backbones):
    """A tiny engine shared by read-only tests (do not train or reconfigure it)."""
    from e2llm import E2LLM
    from e2llm.testing import tiny_config

    return E2LLM.build(tiny_config(*tiny_backbones))


@pytest.fixture
def make_tiny_engine(tiny_backbones):
    """Fresh tiny engines with config overrides, e.g. make_tiny_engine(adapter={"kind": "mlp"})."""
    from e2llm import E2LLM
    from e2llm.testing import tiny_config

    def make(seed: int = 0, **overrides):
        import torch

        torch.manual_seed(seed)
        return E2LLM.build(tiny_config(*tiny_backbones, **overrides))

    return make


@pytest.fixture(scope="session")
def default_engine():
    """The real default models (MiniLM-L6 + SmolLM2-135M-Instruct), loaded once per session."""
    from e2llm import E2LLM

    return E2LLM.from_pretrained("default")


@pytest.fixture(scope="session")
def long_text():
    """Real English prose shipped with Python: the language reference topics."""
    import pydoc_data.topics

    return "\n\n".join(v.strip() for _, v in sorted(pydoc_data.topics.topics.items()))


@pytest.fixture(scope="session")
def plugin_engine(tmp_path_factory):
    """The tiny engine the plugin tests share (built once per session)."""
    from plugin_fixtures import build_engine

    return build_engine(tmp_path_factory.mktemp("plugin-backbones"))


@pytest.fixture
def small_window(plugin_engine):
    from plugin_fixtures import window

    with window(plugin_engine, 160) as engine:
        yield engine
