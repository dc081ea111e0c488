// The CPU path's attention over keys and values kept in bfloat16, one kernel for prompts and
// decoding alike (own_attention.py builds it; attention.py calls it).
//
// Why a kernel of the app's own: every (query vector, key) pair goes through the same
// instructions however many rows a call computes, and every sum runs over the keys in key
// order. So a token's output has the same bits whether it was read in a prompt or generated
// one at a time, for any length (the prefix cache rests on that); PyTorch's flash kernel gave
// that only for short replies. Scores and softmax are float32; the values are weighed by the
// softmax rounded to bfloat16, as the flash kernel weighs them, with float32 sums; and one
// token's attention reads each key and value once for all heads that share them.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define FAST_PATH 1
#else
#define FAST_PATH 0
#endif

namespace {

// A task's query vectors: the heads that share one key-value head, for a few consecutive rows.
constexpr int64_t MAX_VECTORS = 16;
// Keys are scored, and values weighed, in blocks of this many (kept in the L1 cache while
// every vector of a task reads them).
constexpr int64_t BLOCK = 32;
constexpr int64_t FAST_MAX_DIM = 256;

inline float bf16_to_float(uint16_t word) {
  const uint32_t bits = uint32_t(word) << 16;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

// The portable path: any head width, any compiler. Sixteen partial sums in a fixed order.
void portable_vector(const uint16_t* q, const uint16_t* k, const uint16_t* v, int64_t keys,
                     int64_t dim, float scale, float* scores, float* out) {
  float top = -INFINITY;
  for (int64_t j = 0; j < keys; ++j) {
    float lanes[16] = {0};
    for (int64_t d = 0; d < dim; ++d)
      lanes[d % 16] += bf16_to_float(q[d]) * bf16_to_float(k[j * dim + d]);
    float dot = 0;
    for (float lane : lanes) dot += lane;
    scores[j] = dot * scale;
    top = std::max(top, scores[j]);
  }
  float total = 0;
  for (int64_t j = 0; j < keys; ++j) {
    scores[j] = std::exp(scores[j] - top);
    total += scores[j];
  }
  for (int64_t d = 0; d < dim; ++d) out[d] = 0;
  for (int64_t j = 0; j < keys; ++j)
    for (int64_t d = 0; d < dim; ++d) out[d] += scores[j] * bf16_to_float(v[j * dim + d]);
  for (int64_t d = 0; d < dim; ++d) out[d] /= total;
}

#if FAST_PATH
// exp(x) for x <= 0 (a score less the row's largest): Cephes' polynomial, 2^n by scalef.
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, n);
}

// One (vector, key) score from its accumulated pair products: the same for every pair.
inline float finish(__m512 acc, float scale) { return _mm512_reduce_add_ps(acc) * scale; }

// Scores of keys [from, upto_a) for vector a and [from, upto_b) for vector b (upto_b may be
// `from`: none). Both vectors' words stay in registers and share each key's loads; bfloat16
// pairs are multiplied and summed by the CPU's own instruction (AVX512-BF16).
void score_two(const uint16_t* qa, const uint16_t* qb, const uint16_t* k, int64_t from,
               int64_t upto_a, int64_t upto_b, int64_t dim, float scale, float* sa, float* sb) {
  const int64_t pairs = dim / 32;
  __m512i a[FAST_MAX_DIM / 32], b[FAST_MAX_DIM / 32];
  for (int64_t c = 0; c < pairs; ++c) {
    a[c] = _mm512_loadu_si512(qa + 32 * c);
    b[c] = _mm512_loadu_si512(qb + 32 * c);
  }
  const auto one = [&](const __m512i* q, int64_t j) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t c = 0; c < pairs; ++c)
      acc = _mm512_dpbf16_ps(acc, (__m512bh)q[c], (__m512bh)_mm512_loadu_si512(k + j * dim + 32 * c));
    return finish(acc, scale);
  };
  const int64_t both = std::min(upto_a, upto_b);
  int64_t j = from;
  for (; j < both; ++j) {
    __m512 acc_a = _mm512_setzero_ps(), acc_b = _mm512_setzero_ps();
    for (int64_t c = 0; c < pairs; ++c) {
      const __m512i word = _mm512_loadu_si512(k + j * dim + 32 * c);
      acc_a = _mm512_dpbf16_ps(acc_a, (__m512bh)a[c], (__m512bh)word);
      acc_b = _mm512_dpbf16_ps(acc_b, (__m512bh)b[c], (__m512bh)word);
    }
    sa[j] = finish(acc_a, scale);
    sb[j] = finish(acc_b, scale);
  }
  for (int64_t i = j; i < upto_a; ++i) sa[i] = one(a, i);
  for (int64_t i = j; i < upto_b; ++i) sb[i] = one(b, i);
}

// scores[0, keys) become their softmax's numerators; returns 1 / their sum.
float exponentiate(float* scores, int64_t keys) {
  __m512 top = _mm512_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 16 <= keys; j += 16) top = _mm512_max_ps(top, _mm512_loadu_ps(scores + j));
  const __mmask16 tail = (__mmask16)((1u << (keys - j)) - 1);
  top = _mm512_mask_max_ps(top, tail, top, _mm512_maskz_loadu_ps(tail, scores + j));
  const __m512 highest = _mm512_set1_ps(_mm512_reduce_max_ps(top));
  __m512 sums = _mm512_setzero_ps();
  for (j = 0; j + 16 <= keys; j += 16) {
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(scores + j), highest));
    _mm512_storeu_ps(scores + j, e);
    sums = _mm512_add_ps(sums, e);
  }
  const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, scores + j), highest));
  _mm512_mask_storeu_ps(scores + j, tail, e);
  sums = _mm512_mask_add_ps(sums, tail, sums, e);
  return 1.0f / _mm512_reduce_add_ps(sums);
}

// Values j and j + 1 (16 of their columns from `c`) as bfloat16 pairs, one pair a lane, the
// way the CPU's pair instruction reads them; a missing j + 1 (past the last key) is zero.
inline __m512i value_pairs(const uint16_t* v, int64_t j, bool second, int64_t dim, int64_t c) {
  const auto words = [&](int64_t key) {
    return _mm512_cvtepu16_epi32(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + key * dim + 16 * c)));
  };
  const __m512i low = words(j);
  return second ? _mm512_or_si512(low, _mm512_slli_epi32(words(j + 1), 16)) : low;
}

// Weights p[j] and p[j + 1] (zero where `second` is false) rounded to bfloat16, as one pair.
inline __m512i weight_pair(float a, float b) {
  const __m256bh both = _mm512_cvtneps_pbh(_mm512_set_ps(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b, a));
  uint32_t word;
  std::memcpy(&word, &both, 4);
  return _mm512_set1_epi32(static_cast<int>(word));
}

// One task: `vectors` query vectors q[x], each attending to keys [0, seen[x]), its output in
// out[x]. `scores` holds a row of `stride` floats a vector.
void fast_task(const uint16_t* const* q, const int64_t* seen, int64_t vectors, const uint16_t* k,
               const uint16_t* v, int64_t dim, float scale, float* scores, int64_t stride,
               float* const* out) {
  int64_t most = 0;
  for (int64_t x = 0; x < vectors; ++x) most = std::max(most, seen[x]);
  for (int64_t from = 0; from < most; from += BLOCK) {  // scores, two vectors at a time
    const int64_t to = std::min(most, from + BLOCK);
    const auto upto = [&](int64_t x) { return std::max(from, std::min(to, seen[x])); };
    int64_t x = 0;
    for (; x + 1 < vectors; x += 2)
      score_two(q[x], q[x + 1], k, from, upto(x), upto(x + 1), dim, scale, scores + x * stride,
                scores + (x + 1) * stride);
    if (x < vectors)
      score_two(q[x], q[x], k, from, upto(x), from, dim, scale, scores + x * stride,
                scores + x * stride);
  }
  float inverse[MAX_VECTORS];
  for (int64_t x = 0; x < vectors; ++x) {
    inverse[x] = exponentiate(scores + x * stride, seen[x]);
    std::fill(out[x], out[x] + dim, 0.0f);
  }
  // The values, a block of keys at a time made bfloat16 pairs once for all vectors; each
  // vector weighs them by its softmax numerators rounded to bfloat16 (as the flash kernel does;
  // float32 weighing cost twice the multiplications for an error of 1e-7 instead of 1e-3 that
  // no fidelity figure showed), accumulated in float32 in key order.
  alignas(64) __m512i block[(BLOCK / 2) * (FAST_MAX_DIM / 16)];
  const int64_t chunks = dim / 16;
  for (int64_t from = 0; from < most; from += BLOCK) {
    const int64_t to = std::min(most, from + BLOCK);
    for (int64_t j = from; j < to; j += 2)
      for (int64_t c = 0; c < chunks; ++c)
        block[(j - from) / 2 * chunks + c] = value_pairs(v, j, j + 1 < to, dim, c);
    for (int64_t x = 0; x < vectors; ++x) {
      const int64_t upto = std::min(to, seen[x]);
      const float* p = scores + x * stride;
      __m512 acc[FAST_MAX_DIM / 16];
      for (int64_t c = 0; c < chunks; ++c) acc[c] = _mm512_loadu_ps(out[x] + 16 * c);
      for (int64_t j = from; j < upto; j += 2) {
        const __m512i weights = weight_pair(p[j], j + 1 < upto ? p[j + 1] : 0.0f);
        for (int64_t c = 0; c < chunks; ++c)
          acc[c] = _mm512_dpbf16_ps(acc[c], (__m512bh)weights,
                                    (__m512bh)block[(j - from) / 2 * chunks + c]);
      }
      for (int64_t c = 0; c < chunks; ++c) _mm512_storeu_ps(out[x] + 16 * c, acc[c]);
    }
  }
  for (int64_t x = 0; x < vectors; ++x)
    for (int64_t d = 0; d < dim; ++d) out[x][d] *= inverse[x];
}
#endif

}  // namespace

// Whether heads `dim` wide take the AVX512-BF16 path on this build (else the portable one).
bool fast_path_for(int64_t dim) { return FAST_PATH && dim % 32 == 0 && dim <= FAST_MAX_DIM; }

// query (heads, rows, dim) bfloat16, contiguous; key and value (kv_heads, keys, dim) bfloat16
// with contiguous rows (a head may start anywhere: a view of a larger cache buffer). Row i
// attends to keys [0, keys - rows + i]: a causal prompt after `keys - rows` cached tokens, or
// one new token (rows = 1) to all of them. Returns (rows, heads, dim) float32.
at::Tensor attend(at::Tensor query, at::Tensor key, at::Tensor value, double scale) {
  TORCH_CHECK(query.scalar_type() == at::kBFloat16 && key.scalar_type() == at::kBFloat16 &&
                  value.scalar_type() == at::kBFloat16,
              "bfloat16 query, keys and values");
  TORCH_CHECK(query.dim() == 3 && key.dim() == 3 && value.dim() == 3, "3-dimensional tensors");
  TORCH_CHECK(query.is_contiguous() && key.stride(2) == 1 && value.stride(2) == 1 &&
                  key.stride(1) == key.size(2) && value.stride(1) == value.size(2),
              "contiguous rows");
  const int64_t heads = query.size(0), rows = query.size(1), dim = query.size(2);
  const int64_t kv_heads = key.size(0), keys = key.size(1);
  TORCH_CHECK(kv_heads > 0 && heads % kv_heads == 0 && rows <= keys && value.size(1) == keys &&
                  key.size(2) == dim && value.size(2) == dim && value.size(0) == kv_heads,
              "shapes");
  const int64_t group = heads / kv_heads, offset = keys - rows;
  auto out = at::empty({rows, heads, dim}, query.options().dtype(at::kFloat));
  if (rows == 0) return out;
  const auto* q = reinterpret_cast<const uint16_t*>(query.data_ptr<at::BFloat16>());
  const auto* k = reinterpret_cast<const uint16_t*>(key.data_ptr<at::BFloat16>());
  const auto* v = reinterpret_cast<const uint16_t*>(value.data_ptr<at::BFloat16>());
  float* o = out.data_ptr<float>();
  const int64_t k_head = key.stride(0), v_head = value.stride(0);
  const bool fast = fast_path_for(dim) && group <= MAX_VECTORS;
  // A task: one key-value head and a few consecutive rows, all its query heads at once.
  const int64_t tile = std::max<int64_t>(1, MAX_VECTORS / group);
  const int64_t tiles = (rows + tile - 1) / tile;
  at::parallel_for(0, kv_heads * tiles, 1, [&](int64_t begin, int64_t end) {
    const int64_t stride = keys + 16;
    std::vector<float> scores(MAX_VECTORS * stride);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t kv = task / tiles, first = (task % tiles) * tile;
      const int64_t last = std::min(rows, first + tile);
#if FAST_PATH
      if (fast) {  // the task's rows' heads: at most MAX_VECTORS (tile * group)
        const uint16_t* qs[MAX_VECTORS];
        float* outs[MAX_VECTORS];
        int64_t seen[MAX_VECTORS], vectors = 0;
        for (int64_t row = first; row < last; ++row)
          for (int64_t head = kv * group; head < (kv + 1) * group; ++head) {
            qs[vectors] = q + (head * rows + row) * dim;
            outs[vectors] = o + (row * heads + head) * dim;
            seen[vectors++] = offset + row + 1;
          }
        fast_task(qs, seen, vectors, k + kv * k_head, v + kv * v_head, dim, (float)scale,
                  scores.data(), stride, outs);
        continue;
      }
#endif
      // Portable: every vector of the task's rows, one at a time.
      for (int64_t row = first; row < last; ++row)
        for (int64_t head = kv * group; head < (kv + 1) * group; ++head)
          portable_vector(q + (head * rows + row) * dim, k + kv * k_head, v + kv * v_head,
                          offset + row + 1, dim, (float)scale, scores.data(),
                          o + (row * heads + head) * dim);
    }
  });
  return out;
}
