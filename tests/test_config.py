"""Pure tier: configs validate themselves and round-trip through JSON."""
import json
from pathlib import Path

import pytest

from e2llm.config import E2LLMConfig
from e2llm.errors import ConfigError


def test_json_round_trip():
    cfg = E2LLMConfig.model_validate({"adapter": {"kind": "mlp", "tokens_per_chunk": 2}, "chunking": {"tokens_per_chunk": 100}})
    again = E2LLMConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.adapter.kind == "mlp" and again.chunking.tokens_per_chunk == 100


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'adapter.knd'"):
        E2LLMConfig.from_json(json.dumps({"adapter": {"knd": "pma"}}))


@pytest.mark.parametrize("data, needle", [
    ({"adapter": {"kind": "lstm"}}, "adapter.kind"),
    ({"chunking": {"tokens_per_chunk": 4}}, "chunking.tokens_per_chunk"),
    ({"chunking": {"tokens_per_chunk": 64, "overlap_tokens": 64}}, "overlap_tokens"),
    ({"prompt": {"user": "no slots"}}, "{document}"),
    ({"encoder": {"lora": {"r": -1}}}, "encoder.lora.r"),
])
def test_bad_values_are_precise(data, needle):
    with pytest.raises(ConfigError) as e:
        E2LLMConfig.from_json(json.dumps(data), source="x.json")
    assert needle in str(e.value) and str(e.value).startswith("x.json:")


def test_broken_json():
    with pytest.raises(ConfigError, match="not valid JSON"):
        E2LLMConfig.from_json("{", source="c.json")


def test_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("adapter:\n  tokens_per_chunk: 4\n")
    assert E2LLMConfig.from_file(p).adapter.tokens_per_chunk == 4


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_training_configs_validate(path):
    from e2llm.train import TrainConfig

    cfg = TrainConfig.load(path)
    assert cfg.optim.max_steps > 0 and cfg.output_dir.startswith("runs/")
