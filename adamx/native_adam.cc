// The in-place Adam step of adamx.step, as an XLA FFI handler for the CPU.
//
// One pass over a float32 buffer reads g, p, m, v and writes p, m, v: 28 bytes
// per parameter, where XLA's CPU backend writes each output in a loop of its own
// and the update in between (40 bytes). The arithmetic is adamx's chain, operation
// for operation as XLA's CPU compiler emits it, so the results are the chain's
// bit for bit: the scalars arrive computed by JAX, a scalar divisor is a product
// with its reciprocal, and a * b + c contracts into a fused multiply-add.
//
// Built by adamx/native.py with g++ on first use.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The order of the scalars in the f32[kScalars] operand; native.py builds it.
// kInvBc1 and kInvBc2 are 1 / (1 - b^t): XLA divides by a scalar as a product
// with its reciprocal, and so does this loop.
enum Scalar {
  kOmb1, kB1, kOmb2, kB2, kInvBc1, kInvBc2, kEps, kEpsRoot, kDecay, kStep, kScalars
};

struct Pass {
  const float* g;
  float* p;
  float* m;
  float* v;
  float s[kScalars];
  bool decay;
};

void RunRange(const Pass& a, int64_t lo, int64_t hi) {
  const float omb1 = a.s[kOmb1], b1 = a.s[kB1], omb2 = a.s[kOmb2], b2 = a.s[kB2];
  const float inv_bc1 = a.s[kInvBc1], inv_bc2 = a.s[kInvBc2], eps = a.s[kEps];
  const float eps_root = a.s[kEpsRoot], decay = a.s[kDecay], step = a.s[kStep];
  const float* __restrict g = a.g;
  float* __restrict p = a.p;
  float* __restrict m = a.m;
  float* __restrict v = a.v;
  if (a.decay) {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) {
      const float gi = g[i], pi = p[i];
      const float mi = omb1 * gi + b1 * m[i];
      const float vi = omb2 * (gi * gi) + b2 * v[i];
      m[i] = mi;
      v[i] = vi;
      const float u = (mi * inv_bc1) / (std::sqrt(vi * inv_bc2 + eps_root) + eps);
      p[i] = pi + step * (u + decay * pi);
    }
  } else {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) {
      const float gi = g[i];
      const float mi = omb1 * gi + b1 * m[i];
      const float vi = omb2 * (gi * gi) + b2 * v[i];
      m[i] = mi;
      v[i] = vi;
      const float u = (mi * inv_bc1) / (std::sqrt(vi * inv_bc2 + eps_root) + eps);
      p[i] = p[i] + step * u;
    }
  }
}

// Chunks are claimed from a shared counter by the calling thread and by tasks on
// XLA's intra-op pool alike, so the step finishes even if no pool thread ever
// runs: the caller then does every chunk itself. A task that starts after the
// last chunk is claimed finds nothing to do, and the shared_ptr keeps the state
// it reads alive after the handler has returned.
struct Work {
  Pass pass;
  int64_t n = 0;
  int64_t chunk = 0;
  int64_t chunks = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable finished;

  void Drain() {
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
      RunRange(pass, c * chunk, std::min(n, (c + 1) * chunk));
      if (done.fetch_add(1) + 1 == chunks) {
        std::lock_guard<std::mutex> lock(mutex);
        finished.notify_all();
      }
    }
  }
};

// A rank-1 buffer; named, because a comma in a template's arguments would split
// the handler macro's arguments.
using ScalarsBuffer = ffi::Buffer<ffi::F32, 1>;

// Below this many elements a step is not worth handing to other threads.
constexpr int64_t kMinChunk = 1 << 16;

ffi::Error AdamStepImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g,
                        ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> m,
                        ffi::Buffer<ffi::F32> v,
                        ScalarsBuffer scalars,
                        ffi::ResultBuffer<ffi::F32> p_out,
                        ffi::ResultBuffer<ffi::F32> m_out,
                        ffi::ResultBuffer<ffi::F32> v_out, bool decay) {
  const int64_t n = g.element_count();
  if (p.element_count() != n || m.element_count() != n || v.element_count() != n) {
    return ffi::Error::InvalidArgument("adamx adam step: buffers differ in size");
  }
  if (scalars.element_count() != kScalars) {
    return ffi::Error::InvalidArgument("adamx adam step: wrong number of scalars");
  }
  // native.py aliases each result with its operand, so the step is in place.
  if (p_out->typed_data() != p.typed_data() || m_out->typed_data() != m.typed_data() ||
      v_out->typed_data() != v.typed_data()) {
    return ffi::Error::Internal("adamx adam step: results are not aliased");
  }
  auto work = std::make_shared<Work>();
  work->pass = Pass{g.typed_data(), p_out->typed_data(), m_out->typed_data(),
                    v_out->typed_data(), {}, decay};
  std::copy(scalars.typed_data(), scalars.typed_data() + kScalars, work->pass.s);
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // A few chunks per thread even out threads that start late.
  const int64_t wanted = std::min<int64_t>(threads * 4, n / kMinChunk);
  if (wanted <= 1) {
    RunRange(work->pass, 0, n);
    return ffi::Error::Success();
  }
  // Chunks of whole 64-byte lines, so no two threads write one cache line.
  work->n = n;
  work->chunk = ((n + wanted - 1) / wanted + 15) / 16 * 16;
  work->chunks = (n + work->chunk - 1) / work->chunk;
  for (int64_t t = 1; t < std::min(threads, work->chunks); ++t) {
    pool.Schedule([work] { work->Drain(); });
  }
  work->Drain();
  std::unique_lock<std::mutex> lock(work->mutex);
  work->finished.wait(lock, [&] { return work->done.load() == work->chunks; });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamxAdamStep, AdamStepImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()     // g
                                  .Arg<ffi::Buffer<ffi::F32>>()     // p
                                  .Arg<ffi::Buffer<ffi::F32>>()     // m
                                  .Arg<ffi::Buffer<ffi::F32>>()     // v
                                  .Arg<ScalarsBuffer>()            // scalars
                                  .Ret<ffi::Buffer<ffi::F32>>()     // p
                                  .Ret<ffi::Buffer<ffi::F32>>()     // m
                                  .Ret<ffi::Buffer<ffi::F32>>()     // v
                                  .Attr<bool>("decay"));
