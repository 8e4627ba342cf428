// The in-place Adam steps of adamx.step, as XLA FFI handlers for the CPU.
//
// AdamxAdamStep: one pass over float32 leaves reads g, p, m, v and writes p,
// m, v: 28 bytes per parameter, where XLA's CPU backend writes each output in a
// loop of its own and the update in between (40 bytes).
//
// AdamxAdam8bitStep: the same step with block-wise 8-bit moments (adamx.lowbit):
// per block of 256, decode the old codes, update the moments in float32, take
// their block maxima, update the params, encode the moments again. One pass
// where XLA makes four (maxima, two encodings, update), each decoding anew.
//
// With AVX-512 the 8-bit step decodes by permutes over the code values held
// in registers (byte permutes over four byte planes with VBMI, float permutes
// without) and encodes with a table per binade instead of six threshold
// comparisons (EncodeTables); elsewhere portable loops compute the same codes.
//
// Each handler takes many leaves in one call (native.py sends up to 32) and
// shares their work out between threads as one range: a call per leaf would
// wake the threads once per leaf and leave them unevenly loaded on each.
//
// The arithmetic is adamx's chain, operation for operation as XLA's CPU
// compiler emits it on one buffer, where the results are the jitted chain's
// bit for bit: the scalars arrive computed by JAX, a scalar divisor is a
// product with its reciprocal, and a * b + c contracts into a fused
// multiply-add. (On a tree of several leaves XLA divides: an ulp or two.)
//
// Built by adamx/native.py with g++ on first use.

#include <algorithm>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The order of the scalars in the f32[kScalars] operand; native.py builds it.
// kInvBc1 and kInvBc2 are 1 / (1 - b^t): XLA divides by a scalar as a product
// with its reciprocal, and so does this loop.
enum Scalar {
  kOmb1, kB1, kOmb2, kB2, kInvBc1, kInvBc2, kEps, kEpsRoot, kDecay, kStep, kScalars
};

struct Hyper {
  float omb1, b1, omb2, b2, inv_bc1, inv_bc2, eps, eps_root, decay, step;
  bool decayed;
};

Hyper ReadHyper(const float* s, bool decayed) {
  return Hyper{s[kOmb1], s[kB1],  s[kOmb2],    s[kB2],   s[kInvBc1], s[kInvBc2],
               s[kEps],  s[kEpsRoot], s[kDecay], s[kStep], decayed};
}

// The new params from the new moments, as the chain computes them: Adam's
// direction, plus the decay term for AdamW, times -lr, added to the params.
inline float NewParam(const Hyper& h, float p, float m, float v) {
  const float u = (m * h.inv_bc1) / (std::sqrt(v * h.inv_bc2 + h.eps_root) + h.eps);
  return h.decayed ? p + h.step * (u + h.decay * p) : p + h.step * u;
}

// Runs fn(lo, hi) over [0, items) in chunks, claimed from a shared counter by
// the calling thread and by tasks on XLA's intra-op pool alike, so the work
// finishes even if no pool thread ever runs: the caller then does every chunk
// itself. A task that starts after the last chunk is claimed finds nothing to
// do, and the shared_ptr keeps the state it reads alive after the handler has
// returned.
struct Work {
  std::function<void(int64_t, int64_t)> fn;
  int64_t items = 0;
  int64_t chunk = 0;
  int64_t chunks = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable finished;

  void Drain() {
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
      fn(c * chunk, std::min(items, (c + 1) * chunk));
      if (done.fetch_add(1) + 1 == chunks) {
        std::lock_guard<std::mutex> lock(mutex);
        finished.notify_all();
      }
    }
  }
};

// min_chunk: fewer items than this are not worth handing to another thread;
// align: chunks are whole multiples of it (64-byte lines, so no two threads
// write one cache line).
void ParallelFor(ffi::ThreadPool& pool, int64_t items, int64_t min_chunk,
                 int64_t align, std::function<void(int64_t, int64_t)> fn) {
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // A few chunks per thread even out threads that start late.
  const int64_t wanted = std::min<int64_t>(threads * 4, items / min_chunk);
  if (wanted <= 1) {
    fn(0, items);
    return;
  }
  auto work = std::make_shared<Work>();
  work->fn = std::move(fn);
  work->items = items;
  work->chunk = ((items + wanted - 1) / wanted + align - 1) / align * align;
  work->chunks = (items + work->chunk - 1) / work->chunk;
  for (int64_t t = 1; t < std::min(threads, work->chunks); ++t) {
    pool.Schedule([work] { work->Drain(); });
  }
  work->Drain();
  std::unique_lock<std::mutex> lock(work->mutex);
  work->finished.wait(lock, [&] { return work->done.load() == work->chunks; });
}

// ParallelFor over the items of several leaves laid end to end, each leaf's
// count rounded up to `align` so that no chunk starts inside another thread's
// cache line; fn(leaf, lo, hi) gets ranges within one leaf.
void ParallelForLeaves(ffi::ThreadPool& pool, const std::vector<int64_t>& sizes,
                       int64_t min_chunk, int64_t align,
                       const std::function<void(size_t, int64_t, int64_t)>& fn) {
  std::vector<int64_t> starts(sizes.size() + 1, 0);
  for (size_t i = 0; i < sizes.size(); ++i) {
    starts[i + 1] = starts[i] + (sizes[i] + align - 1) / align * align;
  }
  // fn and starts outlive every call: ParallelFor returns after the last chunk.
  ParallelFor(pool, starts.back(), min_chunk, align, [&](int64_t lo, int64_t hi) {
    size_t i = std::upper_bound(starts.begin(), starts.end(), lo) - starts.begin() - 1;
    for (; i < sizes.size() && starts[i] < hi; ++i) {
      const int64_t first = std::max(lo, starts[i]) - starts[i];
      const int64_t end = std::min(hi - starts[i], sizes[i]);
      if (first < end) fn(i, first, end);
    }
  });
}

// The leaves' buffers of one call: per leaf `per_leaf` operands (g, p, then
// the state), and a result for each operand after g, which native.py aliases
// with its operand, so that the step is in place.
class Leaves {
 public:
  Leaves(const char* what, const ffi::RemainingArgs& args, const ffi::RemainingRets& rets,
         size_t per_leaf)
      : what_(what), args_(args), rets_(rets), per_leaf_(per_leaf) {}

  size_t count() const { return args_.size() / per_leaf_; }

  ffi::Error CheckAliased() const {
    if (args_.size() % per_leaf_ != 0 || rets_.size() != count() * (per_leaf_ - 1)) {
      return Fail("wrong number of buffers");
    }
    for (size_t i = 0; i < count(); ++i) {
      for (size_t k = 1; k < per_leaf_; ++k) {
        auto arg = args_.get<ffi::AnyBuffer>(i * per_leaf_ + k);
        auto ret = rets_.get<ffi::AnyBuffer>(i * (per_leaf_ - 1) + k - 1);
        if (!arg.has_value() || !ret.has_value() ||
            (*ret)->untyped_data() != arg->untyped_data()) {
          return ffi::Error::Internal(std::string(what_) + ": results are not aliased");
        }
      }
    }
    return ffi::Error::Success();
  }

  // Operand k of leaf i, or nullptr if it is not of `type` with `elements`.
  template <typename T>
  T* Data(size_t i, size_t k, ffi::DataType type, int64_t elements) const {
    auto arg = args_.get<ffi::AnyBuffer>(i * per_leaf_ + k);
    if (!arg.has_value() || arg->element_type() != type ||
        static_cast<int64_t>(arg->element_count()) != elements) {
      return nullptr;
    }
    return static_cast<T*>(arg->untyped_data());
  }

  // Elements of operand k of leaf i.
  int64_t Elements(size_t i, size_t k) const {
    auto arg = args_.get<ffi::AnyBuffer>(i * per_leaf_ + k);
    return arg.has_value() ? static_cast<int64_t>(arg->element_count()) : -1;
  }

  ffi::Error Fail(const std::string& why) const {
    return ffi::Error::InvalidArgument(std::string(what_) + ": " + why);
  }

 private:
  const char* what_;
  const ffi::RemainingArgs& args_;
  const ffi::RemainingRets& rets_;
  size_t per_leaf_;
};

// ---------------------------------------------------------------- float32

void AdamRange(const Hyper& h, const float* __restrict g, float* __restrict p,
               float* __restrict m, float* __restrict v, int64_t lo, int64_t hi) {
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) {
    const float gi = g[i];
    const float mi = h.omb1 * gi + h.b1 * m[i];
    const float vi = h.omb2 * (gi * gi) + h.b2 * v[i];
    m[i] = mi;
    v[i] = vi;
    p[i] = NewParam(h, p[i], mi, vi);
  }
}

// A rank-1 buffer; named, because a comma in a template's arguments would split
// the handler macro's arguments.
using Vector = ffi::Buffer<ffi::F32, 1>;

struct Leaf32 {
  const float* g;
  float *p, *m, *v;
};

ffi::Error AdamStepImpl(ffi::ThreadPool pool, Vector scalars, ffi::RemainingArgs args,
                        ffi::RemainingRets rets, bool decay) {
  const Leaves leaves("adamx adam step", args, rets, 4);
  if (scalars.element_count() != kScalars) return leaves.Fail("wrong number of scalars");
  if (ffi::Error e = leaves.CheckAliased(); e.failure()) return e;
  std::vector<Leaf32> data(leaves.count());
  std::vector<int64_t> sizes(leaves.count());
  for (size_t i = 0; i < leaves.count(); ++i) {
    const int64_t n = sizes[i] = leaves.Elements(i, 0);
    data[i] = Leaf32{leaves.Data<const float>(i, 0, ffi::F32, n),
                     leaves.Data<float>(i, 1, ffi::F32, n),
                     leaves.Data<float>(i, 2, ffi::F32, n),
                     leaves.Data<float>(i, 3, ffi::F32, n)};
    if (!data[i].g || !data[i].p || !data[i].m || !data[i].v) {
      return leaves.Fail("leaf " + std::to_string(i) + ": buffers differ in type or size");
    }
  }
  const Hyper h = ReadHyper(scalars.typed_data(), decay);
  ParallelForLeaves(pool, sizes, 1 << 14, 16, [&](size_t i, int64_t lo, int64_t hi) {
    const Leaf32& x = data[i];
    AdamRange(h, x.g, x.p, x.m, x.v, lo, hi);
  });
  return ffi::Error::Success();
}

// ---------------------------------------------------------------- 8 bits

constexpr int kBlock = 256;      // elements per block (lowbit.BLOCK_SIZES[8])
constexpr int kDecades = 7;      // exponent bits of the dynamic maps
constexpr int kSignedWidth = 7;  // bits below the sign bit: m's signed map
constexpr int kUnsignedWidth = 8;

// One map's encoder constants, in the order native.py writes them.
struct Encoder {
  float thresholds[kDecades - 1];  // midpoints between the decades
  float zero_cut;                  // below it (or equal), code 0
  float one_cut;                   // above it, the code of 1.0
  float scale;                     // float32(10^(width - 1) / 0.9)
};
constexpr int kEncoderFloats = sizeof(Encoder) / sizeof(float);

// A decade with F fraction bits has 2^F bins; the bin of a magnitude m is
// floor(m * BinInverse(F) - BinOffset(F)) (lowbit._encode's arithmetic).
// 5^-F from F's bits, in lowbit._inverse_powers_of_five's order; the constants
// are Python's doubles rounded to float32, as jnp.float32 rounds them.
inline float BinInverse(const Encoder& e, int32_t fraction_bits) {
  float power = 1.0f;
  power = power * ((fraction_bits & 1) ? static_cast<float>(0.2) : 1.0f);
  power = power * ((fraction_bits & 2) ? static_cast<float>(0.04) : 1.0f);
  power = power * ((fraction_bits & 4) ? static_cast<float>(0.0016) : 1.0f);
  return e.scale * power;
}

inline float BinOffset(int32_t fraction_bits) {
  return static_cast<float>(1 << fraction_bits) * static_cast<float>(1.0 / 9.0);
}

// lowbit._encode for a dynamic map of `width` bits below the sign, for a value
// a in [-1, 1]: the decade by thresholds, then the bin within it.
template <int width, bool is_signed>
inline int32_t Encode(const Encoder& e, float a) {
  const float mag = std::fabs(a);
  int32_t fraction_bits = width - 1 - (kDecades - 1);
  for (int d = 0; d < kDecades - 1; ++d) fraction_bits += mag > e.thresholds[d];
  const int32_t first = 1 << fraction_bits;
  const float f =
      std::floor(mag * BinInverse(e, fraction_bits) - BinOffset(fraction_bits));
  // lowbit clips the float's conversion to int32 (which saturates, NaN to 0)
  // to [0, first - 1]; clipping the float first gives the same, and converts
  // only values that fit.
  const float clipped = std::min(f > 0.0f ? f : 0.0f, static_cast<float>(first - 1));
  int32_t code = first + static_cast<int32_t>(clipped);
  // Selects, not branches, so that the loop vectorizes.
  code = mag > e.zero_cut ? code : 0;
  if (is_signed) {
    code = a < 0.0f && code != 0 ? code | (1 << width) : code;
    code = a > e.one_cut ? 1 << width : code;
  } else {
    code = mag > e.one_cut ? 1 : code;
  }
  return code;
}

// Encode's decade by one comparison instead of six: the thresholds are about
// a factor of 10 apart, so a binade [2^e, 2^(e+1)) holds at most one, and a
// value's decade is the one below its binade's threshold, or the next if the
// value passes it. Tables by binade and by decade, for 16-entry lookups in
// registers (AVX-512 permutes; lookups in memory would make gathers).
struct EncodeTables {
  // Binades 2^-31 .. 2^0: zero and smaller values share the first (no
  // threshold lies below 2^-31); larger values, inf and NaN the last.
  static constexpr int kBinades = 32;
  bool ok = false;  // the thresholds fit: else Encode runs
  alignas(64) float threshold[kBinades];  // the binade's threshold, or +inf
  alignas(64) int32_t below[kBinades];    // F of values below it
  alignas(64) float inverse[16];          // per F: BinInverse
  alignas(64) float offset[16];           // per F: BinOffset
  alignas(64) float last_bin[16];         // per F: 2^F - 1
};

template <int width>
EncodeTables MakeTables(const Encoder& e) {
  EncodeTables t;
  t.ok = true;
  for (int k = 0; k < EncodeTables::kBinades; ++k) {
    const float lo = std::ldexp(1.0f, k + 1 - EncodeTables::kBinades);
    t.below[k] = width - 1 - (kDecades - 1);
    t.threshold[k] = INFINITY;
    for (int d = 0; d < kDecades - 1; ++d) {
      const float x = e.thresholds[d];
      if (x < lo) {
        t.below[k] += 1;
        // Values below 2^-31 share the first binade: none may lie below x.
        t.ok = t.ok && k > 0;
      } else if (x < 2.0f * lo) {
        t.ok = t.ok && t.threshold[k] == INFINITY;
        t.threshold[k] = x;
      }
    }
  }
  for (int f = 0; f < 16; ++f) {
    const int32_t fraction_bits = std::min(f, kDecades);
    t.inverse[f] = BinInverse(e, fraction_bits);
    t.offset[f] = BinOffset(fraction_bits);
    t.last_bin[f] = static_cast<float>((1 << fraction_bits) - 1);
  }
  return t;
}

#if defined(__AVX512F__)
template <int width, bool is_signed>
inline __m512i Encode16(const EncodeTables& t, const Encoder& e, __m512 a) {
  const __m512 mag = _mm512_abs_ps(a);
  // The binade's index: the biased exponent less 127 - 31, in [0, 31]. NaN and
  // inf land in the last; zero and subnormals in the first.
  __m512i k = _mm512_srli_epi32(_mm512_castps_si512(mag), 23);
  k = _mm512_sub_epi32(k, _mm512_set1_epi32(127 + 1 - EncodeTables::kBinades));
  k = _mm512_min_epi32(_mm512_max_epi32(k, _mm512_setzero_si512()),
                       _mm512_set1_epi32(EncodeTables::kBinades - 1));
  const __m512 threshold = _mm512_permutex2var_ps(
      _mm512_load_ps(t.threshold), k, _mm512_load_ps(t.threshold + 16));
  __m512i f = _mm512_permutex2var_epi32(_mm512_load_si512(t.below), k,
                                        _mm512_load_si512(t.below + 16));
  const __mmask16 up = _mm512_cmp_ps_mask(mag, threshold, _CMP_GT_OQ);
  f = _mm512_mask_add_epi32(f, up, f, _mm512_set1_epi32(1));
  const __m512 inverse = _mm512_permutexvar_ps(f, _mm512_load_ps(t.inverse));
  const __m512 offset = _mm512_permutexvar_ps(f, _mm512_load_ps(t.offset));
  const __m512 last_bin = _mm512_permutexvar_ps(f, _mm512_load_ps(t.last_bin));
  // Encode's mag * inverse - offset, contracted as the flags contract it.
  __m512 bin = _mm512_fmsub_ps(mag, inverse, offset);
  bin = _mm512_roundscale_ps(bin, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  // max's second operand for NaN: a NaN bin becomes 0, as in Encode.
  bin = _mm512_min_ps(_mm512_max_ps(bin, _mm512_setzero_ps()), last_bin);
  __m512i code = _mm512_add_epi32(_mm512_sllv_epi32(_mm512_set1_epi32(1), f),
                                  _mm512_cvttps_epi32(bin));
  code = _mm512_maskz_mov_epi32(
      _mm512_cmp_ps_mask(mag, _mm512_set1_ps(e.zero_cut), _CMP_GT_OQ), code);
  if (is_signed) {
    const __mmask16 negative =
        _mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_LT_OQ) &
        _mm512_test_epi32_mask(code, code);
    code = _mm512_mask_or_epi32(code, negative, code, _mm512_set1_epi32(1 << width));
    code = _mm512_mask_mov_epi32(
        code, _mm512_cmp_ps_mask(a, _mm512_set1_ps(e.one_cut), _CMP_GT_OQ),
        _mm512_set1_epi32(1 << width));
  } else {
    code = _mm512_mask_mov_epi32(
        code, _mm512_cmp_ps_mask(mag, _mm512_set1_ps(e.one_cut), _CMP_GT_OQ),
        _mm512_set1_epi32(1));
  }
  return code;
}
#endif

// A block's codes: x[j] * inverse encoded by the map, for j < kBlock.
template <int width, bool is_signed>
void EncodeBlock(const EncodeTables& t, const Encoder& e, const float* x, float inverse,
                 uint8_t* __restrict codes) {
#if defined(__AVX512F__)
  if (t.ok) {
    const __m512 scale = _mm512_set1_ps(inverse);
    for (int j = 0; j < kBlock; j += 16) {
      const __m512i code =
          Encode16<width, is_signed>(t, e, _mm512_mul_ps(_mm512_loadu_ps(x + j), scale));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + j), _mm512_cvtepi32_epi8(code));
    }
    return;
  }
#endif
  // Encoded as int32 first, then narrowed: one vector width for the loop.
  alignas(64) int32_t wide[kBlock];
#pragma omp simd
  for (int j = 0; j < kBlock; ++j) wide[j] = Encode<width, is_signed>(e, x[j] * inverse);
  for (int j = 0; j < kBlock; ++j) codes[j] = static_cast<uint8_t>(wide[j]);
}

// A map's 256 values; with AVX-512 VBMI also as four byte planes (plane k
// holds byte k of every value, little-endian) for decoding by byte permutes.
struct ValueTable {
  const float* values;
  alignas(64) uint8_t planes[4][256];
};

ValueTable MakeValueTable(const float* values) {
  ValueTable t;
  t.values = values;
  for (int e = 0; e < 256; ++e) {
    uint32_t bits;
    std::memcpy(&bits, values + e, sizeof bits);
    for (int k = 0; k < 4; ++k) t.planes[k][e] = static_cast<uint8_t>(bits >> (8 * k));
  }
  return t;
}

// A block's values of its codes: table[codes[j]] for j < kBlock.
void DecodeBlock(const ValueTable& table, const uint8_t* __restrict codes,
                 float* __restrict out) {
#if defined(__AVX512VBMI__)
  // Per 64 codes: each plane's byte by two 128-entry byte permutes and a
  // select on bit 7, then the planes interleaved into floats by unpacks. The
  // unpacks work within 128-bit lanes: result r's lane L holds elements
  // 16L + 4r .. + 3 of their input, so the codes go in permuted for each
  // result to hold 16 consecutive elements.
  __m512i planes[4][4];
  for (int k = 0; k < 4; ++k) {
    for (int r = 0; r < 4; ++r) {
      planes[k][r] = _mm512_load_si512(table.planes[k] + 64 * r);
    }
  }
  alignas(64) uint8_t order_bytes[64];
  for (int lane = 0; lane < 4; ++lane) {
    for (int r = 0; r < 4; ++r) {
      for (int q = 0; q < 4; ++q) order_bytes[16 * lane + 4 * r + q] = 16 * r + 4 * lane + q;
    }
  }
  const __m512i order = _mm512_load_si512(order_bytes);
  for (int j = 0; j < kBlock; j += 64) {
    const __m512i c = _mm512_permutexvar_epi8(order, _mm512_loadu_si512(codes + j));
    const __mmask64 high = _mm512_movepi8_mask(c);
    __m512i b[4];
    for (int k = 0; k < 4; ++k) {
      const __m512i lo = _mm512_permutex2var_epi8(planes[k][0], c, planes[k][1]);
      const __m512i hi = _mm512_permutex2var_epi8(planes[k][2], c, planes[k][3]);
      b[k] = _mm512_mask_blend_epi8(high, lo, hi);
    }
    const __m512i w01_lo = _mm512_unpacklo_epi8(b[0], b[1]);
    const __m512i w01_hi = _mm512_unpackhi_epi8(b[0], b[1]);
    const __m512i w23_lo = _mm512_unpacklo_epi8(b[2], b[3]);
    const __m512i w23_hi = _mm512_unpackhi_epi8(b[2], b[3]);
    _mm512_storeu_si512(out + j, _mm512_unpacklo_epi16(w01_lo, w23_lo));
    _mm512_storeu_si512(out + j + 16, _mm512_unpackhi_epi16(w01_lo, w23_lo));
    _mm512_storeu_si512(out + j + 32, _mm512_unpacklo_epi16(w01_hi, w23_hi));
    _mm512_storeu_si512(out + j + 48, _mm512_unpackhi_epi16(w01_hi, w23_hi));
  }
#elif defined(__AVX512F__)
  // The 256 values in 16 registers; a value is picked by permutes within
  // each pair of registers (the code's low 5 bits), then by selects on bits
  // 5, 6 and 7: gathers from memory took a third longer over the whole step.
  const float* __restrict values = table.values;
  __m512 t[16];
  for (int r = 0; r < 16; ++r) t[r] = _mm512_loadu_ps(values + 16 * r);
  for (int j = 0; j < kBlock; j += 16) {
    const __m512i c = _mm512_cvtepu8_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + j)));
    __m512 pick[8];
    for (int r = 0; r < 8; ++r) pick[r] = _mm512_permutex2var_ps(t[2 * r], c, t[2 * r + 1]);
    for (int bit = 5, n = 8; bit < 8; ++bit, n /= 2) {
      const __mmask16 high = _mm512_test_epi32_mask(c, _mm512_set1_epi32(1 << bit));
      for (int r = 0; r < n / 2; ++r) {
        pick[r] = _mm512_mask_blend_ps(high, pick[2 * r], pick[2 * r + 1]);
      }
    }
    _mm512_storeu_ps(out + j, pick[0]);
  }
#else
  const float* __restrict values = table.values;
  for (int j = 0; j < kBlock; ++j) out[j] = values[codes[j]];
#endif
}

struct Leaf8 {
  const float* g;
  float* p;
  uint8_t* m_codes;
  float* m_absmax;
  uint8_t* v_codes;
  float* v_absmax;
  int64_t n;  // elements of the leaf; the last block may be partly padding
};

struct Maps8 {
  ValueTable m_values;  // the value of each code
  ValueTable v_values;
  Encoder m_map, v_map;
  EncodeTables m_tables, v_tables;
};

void Adam8bitBlocks(const Hyper& h, const Maps8& maps, const Leaf8& q, int64_t first_block,
                    int64_t end_block) {
  alignas(64) float m_new[kBlock];
  alignas(64) float v_new[kBlock];
  alignas(64) float g_tail[kBlock];
  // Local copies: loads through the struct would keep the loops scalar.
  const Encoder m_map = maps.m_map, v_map = maps.v_map;
  for (int64_t b = first_block; b < end_block; ++b) {
    const int64_t lo = b * kBlock;
    const int64_t valid = std::min<int64_t>(kBlock, q.n - lo);
    uint8_t* __restrict mc = q.m_codes + lo;
    uint8_t* __restrict vc = q.v_codes + lo;
    const float m_scale = q.m_absmax[b], v_scale = q.v_absmax[b];
    // The padding past the leaf's end takes a zero gradient, as XLA's padded
    // blocks do; it counts towards the maxima.
    const float* __restrict g = q.g + lo;
    if (valid < kBlock) {
      std::fill(std::copy(g, g + valid, g_tail), g_tail + kBlock, 0.0f);
      g = g_tail;
    }
    alignas(64) float m_old[kBlock];
    alignas(64) float v_old[kBlock];
    DecodeBlock(maps.m_values, mc, m_old);
    DecodeBlock(maps.v_values, vc, v_old);
    // A NaN maximum stays NaN, as XLA's max propagates it.
    float m_max = 0.0f, v_max = 0.0f;
    int nan = 0;  // an int: a bool's reduction keeps the loop scalar
#pragma omp simd reduction(max : m_max, v_max) reduction(+ : nan)
    for (int j = 0; j < kBlock; ++j) {
      const float gi = g[j];
      const float mo = m_old[j] * m_scale;
      const float vo = v_old[j] * v_scale;
      const float mi = h.omb1 * gi + h.b1 * mo;
      const float vi = h.omb2 * (gi * gi) + h.b2 * vo;
      m_new[j] = mi;
      v_new[j] = vi;
      m_max = std::max(m_max, std::fabs(mi));
      v_max = std::max(v_max, std::fabs(vi));
      nan += (mi != mi) | (vi != vi);
    }
    if (nan > 0) {
      // Which of the two maxima is NaN, as XLA's would be.
      for (int j = 0; j < kBlock; ++j) {
        if (m_new[j] != m_new[j]) m_max = m_new[j];
        if (v_new[j] != v_new[j]) v_max = v_new[j];
      }
    }
    float* __restrict p = q.p + lo;
#pragma omp simd
    for (int j = 0; j < valid; ++j) p[j] = NewParam(h, p[j], m_new[j], v_new[j]);
    q.m_absmax[b] = m_max;
    q.v_absmax[b] = v_max;
    const float m_inverse = m_max > 0.0f ? 1.0f / m_max : 0.0f;
    const float v_inverse = v_max > 0.0f ? 1.0f / v_max : 0.0f;
    EncodeBlock<kSignedWidth, true>(maps.m_tables, m_map, m_new, m_inverse, mc);
    EncodeBlock<kUnsignedWidth, false>(maps.v_tables, v_map, v_new, v_inverse, vc);
  }
}

using Table = ffi::Buffer<ffi::F32, 2>;

ffi::Error Adam8bitStepImpl(ffi::ThreadPool pool, Vector scalars, Table values,
                            Table encoders, ffi::RemainingArgs args,
                            ffi::RemainingRets rets, bool decay) {
  const Leaves leaves("adamx 8-bit adam step", args, rets, 6);
  if (scalars.element_count() != kScalars || values.element_count() != 2 * 256 ||
      encoders.element_count() != 2 * kEncoderFloats) {
    return leaves.Fail("wrong constants");
  }
  if (ffi::Error e = leaves.CheckAliased(); e.failure()) return e;
  std::vector<Leaf8> data(leaves.count());
  std::vector<int64_t> blocks(leaves.count());
  for (size_t i = 0; i < leaves.count(); ++i) {
    const int64_t n = leaves.Elements(i, 0);
    const int64_t b = blocks[i] = (n + kBlock - 1) / kBlock;
    data[i] = Leaf8{leaves.Data<const float>(i, 0, ffi::F32, n),
                    leaves.Data<float>(i, 1, ffi::F32, n),
                    leaves.Data<uint8_t>(i, 2, ffi::U8, b * kBlock),
                    leaves.Data<float>(i, 3, ffi::F32, b),
                    leaves.Data<uint8_t>(i, 4, ffi::U8, b * kBlock),
                    leaves.Data<float>(i, 5, ffi::F32, b),
                    n};
    const Leaf8& x = data[i];
    if (!x.g || !x.p || !x.m_codes || !x.m_absmax || !x.v_codes || !x.v_absmax) {
      return leaves.Fail("leaf " + std::to_string(i) + ": buffers do not match");
    }
  }
  const Hyper h = ReadHyper(scalars.typed_data(), decay);
  Maps8 maps{MakeValueTable(values.typed_data()),
             MakeValueTable(values.typed_data() + 256), {}, {}, {}, {}};
  std::copy(encoders.typed_data(), encoders.typed_data() + kEncoderFloats,
            reinterpret_cast<float*>(&maps.m_map));
  std::copy(encoders.typed_data() + kEncoderFloats,
            encoders.typed_data() + 2 * kEncoderFloats,
            reinterpret_cast<float*>(&maps.v_map));
  maps.m_tables = MakeTables<kSignedWidth>(maps.m_map);
  maps.v_tables = MakeTables<kUnsignedWidth>(maps.v_map);
  // Chunks of 16 blocks or more: the blocks are where the time goes (decoding
  // and encoding), so threads that take even shares finish together.
  ParallelForLeaves(pool, blocks, 16, 1, [&](size_t i, int64_t lo, int64_t hi) {
    Adam8bitBlocks(h, maps, data[i], lo, hi);
  });
  return ffi::Error::Success();
}

}  // namespace

// Operands: the scalars, then per leaf g, p, m, v; results: per leaf p, m, v.
XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamxAdamStep, AdamStepImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Vector>()  // scalars
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<bool>("decay"));

// Operands: the scalars, the maps' values and encoders' constants, then per
// leaf g, p, m codes, m absmax, v codes, v absmax; results: per leaf all but g.
XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamxAdam8bitStep, Adam8bitStepImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Vector>()  // scalars
                                  .Arg<Table>()   // code values
                                  .Arg<Table>()   // encoders
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<bool>("decay"));
