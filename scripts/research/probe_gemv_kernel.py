"""Would a hand-written kernel bring the one-token weight products nearer the memory's limit? An AVX-512 BF16
GEMV (4 rows at a time, float32 accumulation, OpenMP over rows; built with torch's load_inline, so it needs
g++ and a CPU with avx512_bf16) against the shipped oneDNN packed products and a plain read of as many bytes,
over 121 distinct weights shaped like the default decoder's (30 layers of qkv, o, gate_up, down, and the
head: 269 MB, past the caches). Research only: nothing in the engine uses it.
    python scripts/research/probe_gemv_kernel.py"""
import time, torch
from torch.utils.cpp_extension import load_inline
src = r'''
#include <torch/extension.h>
#include <immintrin.h>
#include <omp.h>
torch::Tensor gemv(torch::Tensor x, torch::Tensor w) {  // x (I,) bf16, w (O, I) bf16 row-major -> (O,) float
  const int64_t O = w.size(0), I = w.size(1);
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
      a2 = _mm512_dpbf16_ps(a2, (__m512bh)_mm512_loadu_si512(r + 2*I + i), xv);
      a3 = _mm512_dpbf16_ps(a3, (__m512bh)_mm512_loadu_si512(r + 3*I + i), xv);
    }
    Y[o] = _mm512_reduce_add_ps(a0); Y[o+1] = _mm512_reduce_add_ps(a1);
    Y[o+2] = _mm512_reduce_add_ps(a2); Y[o+3] = _mm512_reduce_add_ps(a3);
  }
  return y;
}
'''
t=time.time()
m = load_inline("kgemv", cpp_sources=src, functions=["gemv"], extra_cflags=["-O3","-march=native","-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
print(f"compile {time.time()-t:.0f} s")
bf=torch.bfloat16; torch.manual_seed(0)
layer=[(960,576),(576,576),(3072,576),(576,1536)]
shapes=layer*30+[(49152,576)]
Ws=[torch.randn(o,i,dtype=bf)*0.02 for o,i in shapes]
Ps=[torch.ops.mkldnn._reorder_linear_weight(w,1) for w in Ws]
xs={i:torch.randn(i,dtype=bf) for _,i in shapes}
for w in Ws[:5]+Ws[-1:]:
    ref=(xs[w.shape[1]].float()@w.float().T); got=m.gemv(xs[w.shape[1]],w)
    pk=torch.ops.mkldnn._linear_pointwise(xs[w.shape[1]][None],torch.ops.mkldnn._reorder_linear_weight(w,1),None,"none",[],"")[0].float()
    print(tuple(w.shape), "kernel max err", (got-ref).abs().max().item(), "packed max err", (pk-ref).abs().max().item())
nb=sum(o*i for o,i in shapes)*2
def ms(f,reps=10,rounds=5):
    f(); ts=[]
    for _ in range(rounds):
        t=time.perf_counter()
        for _ in range(reps): f()
        ts.append((time.perf_counter()-t)/reps*1e3)
    return sorted(ts)[len(ts)//2]
big=torch.ones(nb//2,dtype=bf)
for r in range(2):
    for k,f in {'packed (shipped)':lambda:[torch.ops.mkldnn._linear_pointwise(xs[p.shape[1]][None],p,None,"none",[],"") for p in Ps],
                'hand-written':lambda:[m.gemv(xs[w.shape[1]],w) for w in Ws],
                'plain read':lambda:big.sum()}.items():
        t=ms(f); print(f"{k:18s} {t:6.2f} ms {nb/t/1e6:5.1f} GB/s")
