"""scripts/gpu_check.py: a training loss that is not finite or does not fall fails the check
(exit code 1), and the launched parts start one process per visible GPU."""
import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("curve, ok", [([3.0, 2.5, 2.0], True), ([2.0, 2.5], False), ([3.0, math.nan, 2.0], False),
                                       ([3.0, math.inf], False), ([], False), ([3.0, None], False)])
def test_finite_and_falling(gpu_check, curve, ok):
    assert gpu_check.finite_and_falling(curve) is ok
    if not ok:
        with pytest.raises(RuntimeError, match="not finite and falling"):
            gpu_check.check_curve("part", curve)


@pytest.mark.parametrize("curve", [[2.0, 2.5], [3.0, math.nan]], ids=["rising", "nan"])
def test_a_bad_loss_curve_fails_the_check(gpu_check, monkeypatch, tmp_path, curve):
    """The training itself is stubbed out (the real parts run on the device machine): only the
    verdict on the curve it logged is under test, and the exit code must carry it."""
    import e2llm.testing
    import e2llm.train

    class Trainer:
        def __init__(self, cfg, data=None):
            pass

        def train(self):
            pass

    nprocs = []
    monkeypatch.setattr(e2llm.train, "Trainer", Trainer)
    monkeypatch.setattr(e2llm.testing, "build_tiny_backbones", lambda root: (str(root / "enc"), str(root / "dec")))
    monkeypatch.setattr(gpu_check, "losses", lambda run: curve)
    monkeypatch.setattr(gpu_check, "part_launched", lambda tmp, backbones, parallelism, nproc: nprocs.append(nproc) or {})
    monkeypatch.setattr("sys.argv", ["gpu_check.py", "--out", str(tmp_path / "report.json"), "--skip-profile"])
    assert gpu_check.main() == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["tiny"]["ok"] is False and "not finite and falling" in report["tiny"]["error"]
    assert report["ddp"]["ok"] and report["fsdp"]["ok"] and nprocs == [report["processes"]] * 2
