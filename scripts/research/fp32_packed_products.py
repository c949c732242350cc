"""Issue 35 part 4: on a CPU without bf16 units the fast decoder runs float32 F.linear, whose
products of 2-9 rows (a token and its drafts) cost about twice one row's, so drafts that miss
make decoding slower. Does a oneDNN-packed float32 weight (the bf16 path's PackedLinear, kept in
float32) do better? SmolLM2-135M's shapes, rows 1, 2, 9, interleaved; per-product median ms.

    python scripts/research/fp32_packed_products.py [--threads 2]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python scripts/research/fp32_packed_products.py   # the AVX2-only path
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from e2llm.devices import cpu_line
from e2llm.packed import PackedLinear

SHAPES = {"q/k/v fused": (576, 960), "o": (576, 576), "gate/up fused": (576, 3072), "down": (1536, 576), "head": (576, 49152)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_line(), f"; {args.threads} threads")
    print("| product (in, out) | " + " | ".join(f"F.linear {m} | packed {m}" for m in (1, 2, 9)) + " |")
    print("|---|" + "---:|" * 6)
    totals = {}
    for name, (i, o) in SHAPES.items():
        plain = torch.nn.Linear(i, o, bias=False)
        packed = PackedLinear(plain, dtype=torch.float32)  # the decoder copy's own product
        x = torch.randn(9, i)
        fns = {}
        for m in (1, 2, 9):
            fns[("F.linear", m)] = lambda m=m: F.linear(x[:m], plain.weight)
            fns[("packed", m)] = lambda m=m: packed(x[:m])
        assert torch.allclose(fns[("F.linear", 9)](), fns[("packed", 9)](), atol=1e-4, rtol=1e-4)
        times = {k: [] for k in fns}
        with torch.no_grad():
            for f in fns.values():
                f()
            for _ in range(args.repeats):
                for k, f in fns.items():
                    t = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        n = 30 if name != "head" else 1  # layers: the head runs once a pass
        for k, v in med.items():
            totals[k] = totals.get(k, 0.0) + n * v
        print(f"| {name} ({i}, {o}) | " + " | ".join(f"{med[(kind, m)]:.3f}" for m in (1, 2, 9) for kind in ("F.linear", "packed")) + " |")
    print("| a pass (30 layers + head) | " + " | ".join(f"{totals[(kind, m)]:.1f}" for m in (1, 2, 9) for kind in ("F.linear", "packed")) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
