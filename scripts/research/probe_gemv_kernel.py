"""Would a hand-written kernel bring the one-token weight products nearer the memory's limit? An AVX-512 BF16
GEMV (4 rows at a time, float32 accumulation, OpenMP over rows; built with torch's load_inline, so it needs
g++ and a CPU with avx512_bf16) against the shipped oneDNN packed products and a plain read of as many bytes,
over 121 distinct weights shaped like the default decoder's (30 layers of qkv, o, gate_up, down, and the
head: 269 MB, past the caches), called one by one from Python and all in one call. Research only: nothing in the engine uses it.
    python scripts/research/probe_gemv_kernel.py"""
import time

import torch
from torch.utils.cpp_extension import load_inline

from lean_steps import timed_ms

KERNEL = r"""
#include <torch/extension.h>
#include <immintrin.h>

// y = w @ x: x (I,) bf16, w (O, I) bf16 row-major -> y (O,) float32. Four rows a time so four
// independent accumulators hide the dot-product latency; 32 bf16 pairs a vdpbf16ps.
torch::Tensor gemv(torch::Tensor x, torch::Tensor w) {
  const int64_t O = w.size(0), I = w.size(1);
  TORCH_CHECK(O % 4 == 0 && I % 32 == 0 && w.is_contiguous() && x.is_contiguous(), "shape or layout");
  auto y = torch::empty({O}, torch::kFloat32);
  const uint16_t* W = (const uint16_t*)w.data_ptr();
  const uint16_t* X = (const uint16_t*)x.data_ptr();
  float* Y = y.data_ptr<float>();
  #pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < O; o += 4) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const uint16_t* r = W + o * I;
    for (int64_t i = 0; i < I; i += 32) {
      __m512bh xv = (__m512bh)_mm512_loadu_si512(X + i);
      a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(r + i), xv);
      a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(r + I + i), xv);
      a2 = _mm512_dpbf16_ps(a2, (__m512bh)_mm512_loadu_si512(r + 2 * I + i), xv);
      a3 = _mm512_dpbf16_ps(a3, (__m512bh)_mm512_loadu_si512(r + 3 * I + i), xv);
    }
    Y[o] = _mm512_reduce_add_ps(a0);
    Y[o + 1] = _mm512_reduce_add_ps(a1);
    Y[o + 2] = _mm512_reduce_add_ps(a2);
    Y[o + 3] = _mm512_reduce_add_ps(a3);
  }
  return y;
}

// Every product of a step in one call, one parallel region per product: what is left of the
// per-call cost (Python, dispatch, allocation) once it is gone. Not a decode step: each product
// reads its own input, not the previous product's output.
std::vector<torch::Tensor> gemv_all(std::vector<torch::Tensor> xs, std::vector<torch::Tensor> ws) {
  std::vector<torch::Tensor> ys;
  for (size_t k = 0; k < ws.size(); ++k) ys.push_back(gemv(xs[k], ws[k]));
  return ys;
}
"""


def median_ms(f):
    return timed_ms(f, reps=10, pick=lambda times: sorted(times)[len(times) // 2])


start = time.time()
ext = load_inline("e2llm_probe_gemv", cpp_sources=KERNEL, functions=["gemv", "gemv_all"],
                  extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"])
print(f"compile {time.time() - start:.0f} s")

torch.manual_seed(0)
bf16 = torch.bfloat16
layer = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # (out, in): qkv, o, gate_up, down
shapes = layer * 30 + [(49152, 576)]  # + the tied head
weights = [torch.randn(o, i, dtype=bf16) * 0.02 for o, i in shapes]
packed = [torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in weights]
xs = {i: torch.randn(i, dtype=bf16) for _, i in shapes}


def packed_product(x, p):
    return torch.ops.mkldnn._linear_pointwise(x[None], p, None, "none", [], "")[0]


for w, p in list(zip(weights, packed))[:4] + [(weights[-1], packed[-1])]:
    x = xs[w.shape[1]]
    exact = x.float() @ w.float().T
    print(tuple(w.shape), f"max |error| kernel {(ext.gemv(x, w) - exact).abs().max().item():.1e}, "
          f"packed {(packed_product(x, p).float() - exact).abs().max().item():.1e} (bf16 output)")

step_inputs = [xs[w.shape[1]] for w in weights]
weight_bytes = sum(o * i for o, i in shapes) * 2
same_bytes = torch.ones(weight_bytes // 2, dtype=bf16)
for _ in range(2):
    for name, f in {"packed (shipped)": lambda: [packed_product(xs[p.shape[1]], p) for p in packed],
                    "hand-written": lambda: [ext.gemv(xs[w.shape[1]], w) for w in weights],
                    "hand-written, one call": lambda: ext.gemv_all(step_inputs, weights),
                    "plain read": same_bytes.sum}.items():
        ms = median_ms(f)
        print(f"{name:22s} {ms:6.2f} ms {weight_bytes / ms / 1e6:5.1f} GB/s")
