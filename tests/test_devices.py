"""Device and precision options, backbone settings (pooling, attention kernel, LoRA targets,
gradient checkpointing) and their one-line errors."""
import importlib.util
import json
import warnings

import pytest
import torch

from e2llm import E2LLM, ConfigError
from e2llm.adapter import mean_pool, pool
from e2llm.devices import check_quantization, resolve_device, resolve_dtype
from e2llm.errors import DeviceError
from e2llm.testing import tiny_config

NO_CUDA = not torch.cuda.is_available()
NO_BNB = importlib.util.find_spec("bitsandbytes") is None


def test_device_names():
    assert resolve_device(None) == torch.device("cpu") == resolve_device("cpu") == resolve_device(" CPU ")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "xla"):
        with pytest.raises(DeviceError, match=f"'{bad}'"):
            resolve_device(bad)


@pytest.mark.skipif(not NO_CUDA, reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_missing_cuda_is_one_line_naming_the_fix(name):
    with pytest.raises(DeviceError, match=rf"device '{name}' is not available: .*; use --device cpu") as e:
        resolve_device(name)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
def test_cuda_index_beyond_the_devices():
    n = torch.cuda.device_count()
    with pytest.raises(DeviceError, match=rf"cuda:{n}' does not exist: this machine has {n} CUDA device"):
        resolve_device(f"cuda:{n}")


def test_dtypes():
    cpu = torch.device("cpu")
    assert [resolve_dtype(d, cpu) for d in ("float32", "bfloat16", "float16")] == [torch.float32, torch.bfloat16, torch.float16]
    assert resolve_dtype(torch.bfloat16, cpu) == torch.bfloat16
    with pytest.raises(DeviceError, match="unknown dtype 'float64'; use one of float32, bfloat16, float16"):
        resolve_dtype("float64", cpu)


def test_build_refuses_a_missing_device_before_loading(tiny_backbones, monkeypatch):
    from e2llm import backbones

    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: pytest.fail("loaded weights before checking the device"))
    with pytest.raises(DeviceError):
        E2LLM.build(tiny_config(*tiny_backbones), device="nowhere")
    with pytest.raises(DeviceError, match="unknown dtype"):
        E2LLM.build(tiny_config(*tiny_backbones), dtype="int8")


def test_cli_bad_device_and_dtype_exit_2_in_one_line(tiny_backbones, tmp_path, capsys):
    from e2llm.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        E2LLM.build(tiny_config(*tiny_backbones)).save_pretrained(tmp_path / "ck")
    bad = "cuda:7" if NO_CUDA else "tpu"
    capsys.readouterr()
    assert main(["info", "--checkpoint", str(tmp_path / "ck"), "--device", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("e2llm: error: ") and bad in err and "\n" not in err


# ---------------------------------------------------------------- 4-bit decoder (QLoRA)
def _bitsandbytes_installed(monkeypatch, installed: bool) -> None:
    """find_spec as if bitsandbytes were (not) installed, whatever this machine has."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if installed else None) if name == "bitsandbytes" else real(name, *a))


def test_4bit_needs_a_cuda_device_and_bitsandbytes(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    check_quantization("none", cpu)  # needs nothing
    with pytest.raises(DeviceError) as e:
        check_quantization("4bit", cpu)
    assert str(e.value) == ("decoder.quantization 4bit needs a CUDA GPU (device is cpu); "
                            "use quantization: none on the CPU (--quantize none)")
    _bitsandbytes_installed(monkeypatch, False)
    with pytest.raises(DeviceError) as e:
        check_quantization("4bit", gpu)
    assert str(e.value) == ("decoder.quantization 4bit needs bitsandbytes, which is not installed; "
                            "pip install bitsandbytes, or use quantization: none")
    _bitsandbytes_installed(monkeypatch, True)
    check_quantization("4bit", gpu)
    with pytest.raises(DeviceError, match="unknown quantization '8bit'; use one of none, 4bit"):
        check_quantization("8bit", gpu)


def test_4bit_load_arguments_are_qlora_nf4_on_the_gpu_in_use():
    from e2llm.backbones import quantized_load_kwargs

    assert quantized_load_kwargs("none", torch.device("cpu")) == {}
    kwargs = quantized_load_kwargs("4bit", torch.device("cuda", 1))  # transformers' config object needs no bitsandbytes
    assert kwargs["device_map"] == {"": "cuda:1"}
    q = kwargs["quantization_config"]
    assert (q.load_in_4bit, q.load_in_8bit, q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant, q.bnb_4bit_compute_dtype) \
        == (True, False, "nf4", True, torch.bfloat16)
    with pytest.raises(DeviceError):
        quantized_load_kwargs("4bit", torch.device("cpu"))


def test_4bit_on_the_cpu_is_refused_before_loading(tiny_backbones, monkeypatch):
    from e2llm import model

    monkeypatch.setattr(model, "load_backbone", lambda *a, **k: pytest.fail("loaded weights before checking quantization"))
    with pytest.raises(DeviceError, match="needs a CUDA GPU"):
        E2LLM.build(tiny_config(*tiny_backbones, decoder={"quantization": "4bit"}))
    with pytest.raises(DeviceError, match="needs a CUDA GPU"):
        E2LLM.build(tiny_config(*tiny_backbones), quantization="4bit", device="cpu")


@pytest.fixture
def simulated_4bit(monkeypatch):
    """The 4-bit load path on the CPU: the checks pass, transformers loads plain weights (not
    bitsandbytes' NF4 ones) and marks the decoder as it marks a 4-bit model; peft's
    prepare_model_for_kbit_training still runs. Returns the quantizations load_backbone asked for."""
    from e2llm import backbones, model

    asked = []
    monkeypatch.setattr(model, "check_quantization", lambda quantization, device, part="decoder": None)
    monkeypatch.setattr(backbones, "quantized_load_kwargs", lambda quantization, device: asked.append(quantization) or {})
    prepare = backbones.prepare_quantized

    def marked(decoder):
        decoder.is_loaded_in_4bit, decoder.quantization_method = True, "bitsandbytes"  # as transformers' quantizer does
        return prepare(decoder)

    monkeypatch.setattr(backbones, "prepare_quantized", marked)
    return asked


def test_a_4bit_decoder_decodes_itself_and_its_checkpoint_loads_unquantized(simulated_4bit, monkeypatch, tiny_backbones, tmp_path):
    engine = E2LLM.build(tiny_config(*tiny_backbones, decoder={"quantization": "4bit"}), dtype="bfloat16")
    assert simulated_4bit == ["none", "4bit"]  # the encoder stays unquantized
    assert engine.config.decoder.quantization == "4bit"
    base = engine._decoder_base
    assert base.get_input_embeddings().weight.dtype == torch.float32  # peft's preparation upcast what is not quantized
    assert all(not p.requires_grad for n, p in base.named_parameters() if "lora_" not in n)
    # inference: no merged bf16 copy of 4-bit weights; the decoder itself, LoRA unmerged
    assert engine.fast_decode and engine._inference_decoder() is base
    with torch.no_grad():
        for name, p in engine.decoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    doc, q = "The fox lives in the forest. " * 10, "Where does the fox live?"
    answer = engine.generate(q, doc, return_result=True)
    assert answer.new_tokens > 0
    engine.fast_decode = False
    assert engine.generate(q, doc) == answer.text
    from e2llm.bench import decode_speed  # compares full-precision copies: refused, one line

    with pytest.raises(ConfigError, match="--quantize none"):
        decode_speed(engine, document_tokens=64, new_tokens=2, rounds=1)
    engine.save_pretrained(tmp_path / "ck")
    saved = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert saved["decoder"]["quantization"] == "4bit"

    monkeypatch.undo()  # the real checks from here on: this machine as it is
    if NO_CUDA:
        with pytest.raises(DeviceError, match="needs a CUDA GPU"):
            E2LLM.from_pretrained(tmp_path / "ck")  # the checkpoint's own setting, refused on the CPU
    plain = E2LLM.from_pretrained(tmp_path / "ck", quantization="none")  # same LoRA tensors, full-precision base
    assert plain.config.decoder.quantization == "none"
    want, got = engine.trained_state_dict(), plain.trained_state_dict()
    assert want.keys() == got.keys() and any("decoder_lora." in k for k in want)
    for k in want:
        assert torch.equal(got[k].float(), want[k].float()), k
    assert plain._inference_decoder() is not plain._decoder_base  # unquantized: the merged copy as before


def test_cli_4bit_on_the_cpu_exits_2_in_one_line_and_none_loads_it(tiny_backbones, tmp_path, capsys):
    from e2llm.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        E2LLM.build(tiny_config(*tiny_backbones)).save_pretrained(tmp_path / "ck")
    capsys.readouterr()
    assert main(["info", "--checkpoint", str(tmp_path / "ck"), "--device", "cpu", "--quantize", "4bit"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("e2llm: error: decoder.quantization 4bit needs a CUDA GPU") and "\n" not in err
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["decoder"]["quantization"] = "4bit"  # as a 4-bit training run records it
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    assert main(["info", "--checkpoint", str(tmp_path / "ck"), "--device", "cpu"]) == 2
    assert "--quantize none" in capsys.readouterr().err
    assert main(["info", "--checkpoint", str(tmp_path / "ck"), "--device", "cpu", "--quantize", "none"]) == 0
    assert json.loads(capsys.readouterr().out.split("\nparameters:")[0])["decoder"]["quantization"] == "none"


def test_train_quantize_flag_reaches_the_load(tiny_backbones, tmp_path, monkeypatch, capsys):
    from e2llm import model
    from e2llm.cli import main

    monkeypatch.setattr(model, "load_backbone", lambda *a, **k: pytest.fail("loaded weights before checking quantization"))
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"model": tiny_config(*tiny_backbones).model_dump(mode="json"), "device": "cpu"}))
    assert main(["train", "--config", str(config), "--quantize", "4bit", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("e2llm: error: decoder.quantization 4bit needs a CUDA GPU") and "\n" not in err


def test_fsdp_refuses_a_4bit_decoder_before_loading(monkeypatch):
    from e2llm.train.config import TrainConfig
    from e2llm.train.distributed import check_parallelism
    from e2llm.train.trainer import Trainer

    check_parallelism("ddp", "4bit")
    check_parallelism("fsdp", "none")
    monkeypatch.setattr(E2LLM, "build", classmethod(lambda *a, **k: pytest.fail("loaded before refusing")))
    cfg = TrainConfig.model_validate({"parallelism": "fsdp", "model": {"decoder": {"quantization": "4bit"}}})
    with pytest.raises(ConfigError, match=r"^parallelism fsdp cannot shard a 4bit decoder .*; use parallelism: ddp, "
                                          r"or model\.decoder\.quantization: none$"):
        Trainer(cfg)


@pytest.mark.parametrize("quantization, built_on", [("4bit", "cuda:3"), ("none", None)])
def test_trainer_builds_a_4bit_decoder_on_its_device(monkeypatch, quantization, built_on):
    """bitsandbytes quantizes as it loads onto the GPU: a 4-bit engine is built there, the
    others on the CPU as before (and moved after)."""
    from e2llm.train.config import TrainConfig
    from e2llm.train.trainer import Trainer

    calls = []

    def build(cls, config, **kwargs):
        calls.append(kwargs)
        raise DeviceError("stop here")

    monkeypatch.setattr(E2LLM, "build", classmethod(build))
    _fake_gpus(monkeypatch, 4)
    cfg = TrainConfig.model_validate({"device": "cuda:3", "model": {"decoder": {"quantization": quantization}}})
    with pytest.raises(DeviceError, match="stop here"):
        Trainer(cfg)
    assert calls == [{"dtype": "float32", "quantization": quantization, "device": built_on and torch.device(built_on)}]


def _fake_gpus(monkeypatch, count, **env):
    """A machine with `count` CUDA GPUs as far as device checks can tell; env: the launcher's variables."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for key in ("WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))


def test_launched_processes_each_take_their_local_ranks_gpu(monkeypatch):
    """One device decision for the trainer (devices.resolve_device, per local rank): under
    torchrun "cuda" and "auto" are the local rank's GPU, never GPU 0 for all."""
    from e2llm.train.distributed import device_for

    _fake_gpus(monkeypatch, 4)
    assert device_for("cuda") == device_for("auto") == torch.device("cuda", 0)
    assert device_for("cuda:3") == torch.device("cuda", 3) and device_for("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="'cuda:7' does not exist"):
        device_for("cuda:7")
    _fake_gpus(monkeypatch, 4, WORLD_SIZE=8, LOCAL_RANK=2, LOCAL_WORLD_SIZE=4, TORCHELASTIC_RUN_ID="x")
    assert device_for("cuda") == device_for("auto") == device_for(" CUDA ") == torch.device("cuda", 2)
    assert device_for("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"^device 'cuda:0' would put all 4 processes .* use device: cuda \(or auto\)"):
        device_for("cuda:0")
    _fake_gpus(monkeypatch, 2, WORLD_SIZE=4, LOCAL_RANK=3, LOCAL_WORLD_SIZE=4, TORCHELASTIC_RUN_ID="x")
    with pytest.raises(DeviceError, match="4 processes were launched on this machine but only 2 GPUs are visible"):
        device_for("cuda")
    _fake_gpus(monkeypatch, 2, WORLD_SIZE=2, LOCAL_RANK=0, LOCAL_WORLD_SIZE=1, TORCHELASTIC_RUN_ID="x")
    assert device_for("cuda:1") == torch.device("cuda", 1)  # one process on this machine: the GPU it names


@pytest.mark.skipif(not NO_CUDA, reason="checks the message on a machine without CUDA")
def test_trainer_checks_its_device_before_loading(monkeypatch, tiny_backbones, tmp_path):
    from e2llm.train.config import TrainConfig
    from e2llm.train.trainer import Trainer

    monkeypatch.setattr(E2LLM, "build", classmethod(lambda *a, **k: pytest.fail("loaded before checking the device")))
    cfg = TrainConfig.model_validate({"device": "cuda:1", "model": tiny_config(*tiny_backbones).model_dump(), "output_dir": str(tmp_path)})
    with pytest.raises(DeviceError, match="^device 'cuda:1' is not available") as e:
        Trainer(cfg)
    assert "\n" not in str(e.value)


def test_collectives_accept_any_index_of_the_models_device_type(monkeypatch):
    """A model on "cuda" (whichever GPU is current) reduces tensors on "cuda:N"; comparing
    torch.device objects would refuse them and fail the first multi-GPU step. Fake CUDA tensors
    (FakeTensorMode) stand in for GPU ones, and the reduction itself is skipped."""
    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode

    from e2llm.errors import TrainingError
    from e2llm.train.distributed import Parallel

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        reduced = []
        monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: reduced.append(t.device))
        with FakeTensorMode():
            on = {name: torch.zeros(3, device=name) for name in ("cuda:0", "cuda:1")}
        parallel = Parallel(torch.nn.Linear(2, 2), "fsdp", 1, "cuda")  # fsdp: no DDP to build around a CPU module
        for t in on.values():
            assert parallel.all_reduce(t) is t
        assert reduced == [torch.device("cuda", 0), torch.device("cuda", 1)]
        indexed = Parallel(torch.nn.Linear(2, 2), "fsdp", 1, "cuda:1")
        indexed.all_reduce(on["cuda:1"])
        for bad, model in ((on["cuda:0"], indexed), (torch.zeros(2), parallel)):
            with pytest.raises(TrainingError, match="collective was handed a tensor on"):
                model.all_reduce(bad)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(NO_CUDA or NO_BNB, reason="needs a CUDA GPU and bitsandbytes")
def test_real_4bit_decoder_trains_its_lora_and_generates(tiny_backbones):
    import bitsandbytes as bnb

    from e2llm.train.data import Sample
    from e2llm.train.trainer import ObjectiveLoss, set_trainable

    engine = E2LLM.build(tiny_config(*tiny_backbones), device="cuda", quantization="4bit")
    base = engine._decoder_base
    assert getattr(base, "is_loaded_in_4bit", False)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())
    assert engine._inference_decoder() is base
    assert engine.generate("Where does the fox live?", "The fox lives in the forest. " * 10, return_result=True).new_tokens > 0
    set_trainable(engine, "all")
    engine.train()
    sample = Sample("reason", "The red fox lives in the northern forest. " * 8, "Where does the fox live?", "In the forest.")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ce, n = ObjectiveLoss(engine)([sample])
    (ce.sum() / n.sum()).backward()
    lora = {k: p for k, p in engine.decoder.named_parameters() if "lora_" in k}
    assert lora and all(p.dtype == torch.float32 and p.grad is not None for p in lora.values())
    assert all(p.grad is None for k, p in engine.decoder.named_parameters() if "lora_" not in k)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_on_cpu_generates(make_tiny_engine, tiny_backbones, dtype):
    engine = E2LLM.build(tiny_config(*tiny_backbones), dtype=dtype, device="cpu")
    assert engine.decoder.get_input_embeddings().weight.dtype == getattr(torch, dtype)
    assert engine.generate("Where does the fox live?", "The fox lives in the forest. " * 10, return_result=True).new_tokens > 0


def test_pool_modes():
    states = torch.tensor([[[1.0, 0], [3, 2], [5, 9]], [[2, 2], [4, 6], [0, 0]]])  # (2, 3, 2)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    torch.testing.assert_close(pool(states, mask, "mean"), mean_pool(states, mask))
    torch.testing.assert_close(pool(states, mask, "mean"), torch.tensor([[3.0, 11 / 3], [3, 4]]))
    torch.testing.assert_close(pool(states, mask, "cls"), torch.tensor([[1.0, 0], [2, 2]]))
    torch.testing.assert_close(pool(states, mask, "max"), torch.tensor([[5.0, 9], [4, 6]]))
    torch.testing.assert_close(pool(states, mask, "last"), torch.tensor([[5.0, 9], [4, 6]]))
    left = torch.tensor([[0, 1, 1]])  # left padding: the last real token is still the last one
    torch.testing.assert_close(pool(states[:1], left, "last"), torch.tensor([[5.0, 9]]))
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(states, mask, "median")


def test_pooling_comes_from_the_folder_and_can_be_overridden(tmp_path, tiny_backbones):
    from e2llm.testing import build_tiny_encoder

    bge = build_tiny_encoder(tmp_path / "bge", "bert", pooling="cls")
    assert E2LLM.build(tiny_config(bge, tiny_backbones[1], encoder={"pooling": None})).config.encoder.pooling == "cls"
    assert E2LLM.build(tiny_config(bge, tiny_backbones[1], encoder={"pooling": "mean"})).config.encoder.pooling == "mean"
    assert E2LLM.build(tiny_config(*tiny_backbones, encoder={"pooling": None})).config.encoder.pooling == "mean"  # no ST config


def test_default_lora_targets_are_recorded(tiny_backbones):
    lora = {"r": 4, "alpha": 8, "target_modules": []}
    engine = E2LLM.build(tiny_config(*tiny_backbones, encoder={"lora": lora}, decoder={"lora": dict(lora)}))
    assert sorted(engine.config.encoder.lora.target_modules) == ["key", "query", "value"]  # peft's, plus the key
    assert sorted(engine.config.decoder.lora.target_modules) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert any("lora_A" in n and ".k_proj." in n for n, _ in engine.decoder.named_parameters())


def test_attn_implementation_setting(tiny_backbones):
    engine = E2LLM.build(tiny_config(*tiny_backbones, encoder={"attn_implementation": "eager"}, decoder={"attn_implementation": "eager"}))
    assert engine._decoder_base.config._attn_implementation == "eager"
    assert engine.encoder.get_base_model().config._attn_implementation == "eager"
    with pytest.raises(DeviceError, match="decoder.attn_implementation is flash_attention_2 but flash-attn is not installed|runs on CUDA only"):
        E2LLM.build(tiny_config(*tiny_backbones, decoder={"attn_implementation": "flash_attention_2"}))
    from e2llm.config import E2LLMConfig, validate_config

    with pytest.raises(ConfigError, match="decoder.attn_implementation: Input should be 'sdpa', 'eager' or 'flash_attention_2'"):
        validate_config(E2LLMConfig, {"decoder": {"attn_implementation": "fastest"}}, "config")


def test_untrained_adapter_warns_once(tiny_backbones, monkeypatch):
    from e2llm import model as model_module

    monkeypatch.setattr(model_module, "_UNTRAINED_WARNED", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        E2LLM.build(tiny_config(*tiny_backbones))
        E2LLM.build(tiny_config(*tiny_backbones))
    assert len([w for w in caught if "untrained" in str(w.message)]) == 1


def test_gradient_checkpointing_gives_the_same_gradients(tiny_backbones):
    from e2llm.train.data import Sample
    from e2llm.train.trainer import ObjectiveLoss, set_trainable

    sample = Sample("reason", "The red fox lives in the northern forest. " * 8, "Where does the fox live?", "In the forest.")
    grads, attn_calls = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        engine = E2LLM.build(tiny_config(*tiny_backbones))
        if checkpointing:
            assert engine.enable_gradient_checkpointing() == ["encoder", "decoder"]
        set_trainable(engine, "all")
        engine.train()  # checkpointing recomputes only in training mode
        calls = []
        engine._decoder_base.model.layers[0].self_attn.register_forward_hook(lambda *a: calls.append(1))
        ce, n = ObjectiveLoss(engine)([sample])
        (ce.sum() / n.sum()).backward()
        attn_calls.append(len(calls))
        grads.append({k: p.grad.clone() for k, p in engine.named_parameters() if p.grad is not None})
    assert attn_calls == [1, 2]  # the checkpointed layer ran again in the backward pass (torch stops the replay early, before the MLP hook fires)
    assert grads[0].keys() == grads[1].keys() and any(".lora_" in k for k in grads[0])
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-4, atol=1e-6)


def test_cpu_class_names_the_fastest_path_the_flags_allow():
    from e2llm.devices import cpu_class, cpu_line

    assert cpu_class({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}) == "AMX"
    assert cpu_class({"avx2", "avx512f", "avx512_bf16"}) == "AVX-512 BF16"
    assert cpu_class({"avx2", "avx512f"}) == "AVX-512 (no BF16)"
    assert cpu_class({"avx2", "fma"}) == "AVX2 only"
    assert cpu_class({"sse4_2"}) == "no AVX2"
    # kernels capped (ATEN_CPU_CAPABILITY=avx2): the line names the path that runs, not the chip
    assert cpu_class({"avx2", "avx512f", "avx512_bf16"}, kernels="AVX2") == "AVX-512 BF16 capped to AVX2 only"
    assert cpu_class({"avx2", "fma"}, kernels="AVX2") == "AVX2 only"
    assert cpu_line().startswith("CPU: ") and "cores" in cpu_line()
