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


def test_decoder_quantization_is_none_or_4bit():
    assert E2LLMConfig().decoder.quantization == "none"
    cfg = E2LLMConfig.model_validate({"decoder": {"quantization": "4bit"}})
    assert json.loads(cfg.to_json())["decoder"]["quantization"] == "4bit"  # what a checkpoint's config.json records
    assert E2LLMConfig.from_json(cfg.to_json()) == cfg
    for bad in ("8bit", "nf4", 4):
        with pytest.raises(ConfigError) as e:
            E2LLMConfig.from_json(json.dumps({"decoder": {"quantization": bad}}), source="c.json")
        assert str(e.value) == "c.json: decoder.quantization: Input should be 'none' or '4bit'"


def test_broken_json():
    with pytest.raises(ConfigError, match="not valid JSON"):
        E2LLMConfig.from_json("{", source="c.json")


def test_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("adapter:\n  tokens_per_chunk: 4\n")
    assert E2LLMConfig.from_file(p).adapter.tokens_per_chunk == 4


def test_a_config_extends_another(tmp_path):
    from e2llm.train import TrainConfig

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "stage.yaml").write_text(
        "optim: {lr: 1.0e-3, max_steps: 50, batch_size: 8}\nobjective: {recon_weight: 0.3}\noutput_dir: runs/a\n")
    (tmp_path / "variant.json").write_text(json.dumps(  # JSON too; the path is relative to the file
        {"extends": "base/stage.yaml", "optim": {"max_steps": 80}, "objective": {"min_spread": 0.2}, "output_dir": "runs/b"}))
    cfg = TrainConfig.load(tmp_path / "variant.json")
    assert (cfg.optim.lr, cfg.optim.max_steps, cfg.optim.batch_size) == (1e-3, 80, 8)  # merged key by key
    assert (cfg.objective.recon_weight, cfg.objective.min_spread, cfg.output_dir) == (0.3, 0.2, "runs/b")


@pytest.mark.parametrize("files, needle", [
    ({"a.yaml": "extends: missing.yaml\n"}, r"missing.yaml: config file not found \(extended by .*a.yaml\)"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"}, "'extends' loops back to a file that extends it"),
    ({"a.yaml": "extends: [b.yaml]\n"}, "'extends' must name a config file"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "optim: {lr: 1.0e-3, max_stepz: 3}\n"}, "unknown key 'optim.max_stepz'"),
])
def test_bad_extends_is_named(tmp_path, files, needle):
    from e2llm.train import TrainConfig

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=needle):
        TrainConfig.load(tmp_path / "a.yaml")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_training_configs_validate(path):
    from e2llm.train import TrainConfig

    cfg = TrainConfig.load(path)
    assert cfg.optim.max_steps > 0 and cfg.output_dir.startswith("runs/")


def test_configs_folder_holds_the_shipped_recipe_and_the_gpu_recipe():
    """configs/ shows the project: the four stages scripts/train_default.sh runs, named by what
    each stage is, and the GPU recipe; every other recipe lives under configs/experiments/."""
    import re

    root = Path(__file__).resolve().parents[1]
    script = (root / "scripts" / "train_default.sh").read_text()
    stages = re.findall(r"^\$E train --config (configs/\S+\.yaml)", script, re.M)
    assert stages == [f"configs/{name}" for name in ("stage1-frozen-decoder.yaml", "stage2-qa-only-decoder.yaml",
                                                     "stage3-qa-only-decoder-more.yaml", "stage4-long-qa.yaml")]
    assert all((root / s).is_file() for s in stages)
    top = sorted(p.name for p in (root / "configs").glob("*.yaml"))
    assert top == sorted([s.split("/")[-1] for s in stages] + [n for n in top if n.startswith("gpu-")])
