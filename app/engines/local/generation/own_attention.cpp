// The CPU path's attention over keys and values kept in bfloat16, one kernel for prompts and
// decoding alike (own_attention.py builds it; attention.py calls it).
//
// Why a kernel of the app's own: every (query vector, key) pair goes through the same
// instructions however many rows a call computes, and every sum runs over the keys in key
// order. So a token's output has the same bits whether it was read in a prompt or generated
// one at a time, for any length (the prefix cache rests on that); PyTorch's flash kernel gave
// that only for short replies. Scores, softmax and the weighted sum of values stay in float32
// (the flash kernel rounds the softmax to bfloat16 before the values), and one token's
// attention reads each key and value once for all heads that share them.
#include <torch/extension.h>
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

inline __m512 load_bf16(const uint16_t* p) {
  const __m512i wide =
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
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

// out_a += sum over keys j < keys_a of pa[j] * value j (float32 values, CHUNKS * 16 wide), in
// key order; the same for b (keys_b may be 0). Two vectors share each value's loads.
template <int CHUNKS>
void weigh_two_of(const float* pa, const float* pb, int64_t keys_a, int64_t keys_b,
                  const float* v, float* out_a, float* out_b) {
  __m512 acc_a[CHUNKS], acc_b[CHUNKS];
  for (int c = 0; c < CHUNKS; ++c) {
    acc_a[c] = _mm512_loadu_ps(out_a + 16 * c);
    acc_b[c] = _mm512_loadu_ps(out_b + 16 * c);
  }
  const int64_t both = std::min(keys_a, keys_b);
  int64_t j = 0;
  for (; j < both; ++j) {
    const __m512 wa = _mm512_set1_ps(pa[j]), wb = _mm512_set1_ps(pb[j]);
    for (int c = 0; c < CHUNKS; ++c) {
      const __m512 value = _mm512_loadu_ps(v + (j * CHUNKS + c) * 16);
      acc_a[c] = _mm512_fmadd_ps(wa, value, acc_a[c]);
      acc_b[c] = _mm512_fmadd_ps(wb, value, acc_b[c]);
    }
  }
  for (int64_t i = j; i < keys_a; ++i)
    for (int c = 0; c < CHUNKS; ++c)
      acc_a[c] = _mm512_fmadd_ps(_mm512_set1_ps(pa[i]), _mm512_loadu_ps(v + (i * CHUNKS + c) * 16),
                                 acc_a[c]);
  for (int64_t i = j; i < keys_b; ++i)
    for (int c = 0; c < CHUNKS; ++c)
      acc_b[c] = _mm512_fmadd_ps(_mm512_set1_ps(pb[i]), _mm512_loadu_ps(v + (i * CHUNKS + c) * 16),
                                 acc_b[c]);
  for (int c = 0; c < CHUNKS; ++c) {
    _mm512_storeu_ps(out_a + 16 * c, acc_a[c]);
    if (keys_b) _mm512_storeu_ps(out_b + 16 * c, acc_b[c]);
  }
}

void weigh_two(const float* pa, const float* pb, int64_t keys_a, int64_t keys_b, const float* v,
               int64_t dim, float* out_a, float* out_b) {
  switch (dim / 16) {
    case 2: return weigh_two_of<2>(pa, pb, keys_a, keys_b, v, out_a, out_b);
    case 4: return weigh_two_of<4>(pa, pb, keys_a, keys_b, v, out_a, out_b);
    case 6: return weigh_two_of<6>(pa, pb, keys_a, keys_b, v, out_a, out_b);
    case 8: return weigh_two_of<8>(pa, pb, keys_a, keys_b, v, out_a, out_b);
    case 10: return weigh_two_of<10>(pa, pb, keys_a, keys_b, v, out_a, out_b);
    case 12: return weigh_two_of<12>(pa, pb, keys_a, keys_b, v, out_a, out_b);
    case 14: return weigh_two_of<14>(pa, pb, keys_a, keys_b, v, out_a, out_b);
    default: return weigh_two_of<16>(pa, pb, keys_a, keys_b, v, out_a, out_b);
  }
}

// One task: `vectors` query vectors q[x], each attending to keys [0, seen[x]), its output in
// out[x]. `scores` holds a row of `stride` floats a vector.
void fast_task(const uint16_t* const* q, const int64_t* seen, int64_t vectors, const uint16_t* k,
               const uint16_t* v, int64_t dim, float scale, float* scores, int64_t stride,
               float* const* out) {
  int64_t most = 0;
  for (int64_t x = 0; x < vectors; ++x) most = std::max(most, seen[x]);
  for (int64_t from = 0; from < most; from += BLOCK) {  // two vectors at a time
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
  alignas(64) float block[BLOCK * FAST_MAX_DIM];
  for (int64_t from = 0; from < most; from += BLOCK) {
    const int64_t to = std::min(most, from + BLOCK);
    for (int64_t j = from; j < to; ++j)
      for (int64_t c = 0; c < dim / 16; ++c)
        _mm512_store_ps(block + (j - from) * dim + 16 * c, load_bf16(v + j * dim + 16 * c));
    const auto count = [&](int64_t x) { return std::max<int64_t>(0, std::min(to, seen[x]) - from); };
    int64_t x = 0;
    for (; x + 1 < vectors; x += 2)
      weigh_two(scores + x * stride + from, scores + (x + 1) * stride + from, count(x),
                count(x + 1), block, dim, out[x], out[x + 1]);
    if (x < vectors)
      weigh_two(scores + x * stride + from, scores + x * stride + from, count(x), 0, block, dim,
                out[x], out[x]);
  }
  for (int64_t x = 0; x < vectors; ++x)
    for (int64_t d = 0; d < dim; ++d) out[x][d] *= inverse[x];
}
#endif

bool fast_for(int64_t dim) { return FAST_PATH && dim % 32 == 0 && dim <= FAST_MAX_DIM; }

}  // namespace

// Whether heads `dim` wide take the AVX512-BF16 path on this build (else the portable one).
bool fast_path_for(int64_t dim) { return fast_for(dim); }

// query (heads, rows, dim) bfloat16, contiguous; key and value (kv_heads, keys, dim) bfloat16
// with contiguous rows (a head may start anywhere: a view of a larger cache buffer). Row i
// attends to keys [0, keys - rows + i]: a causal prompt after `keys - rows` cached tokens, or
// one new token (rows = 1) to all of them. Returns (rows, heads, dim) float32.
torch::Tensor attend(torch::Tensor query, torch::Tensor key, torch::Tensor value, double scale) {
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
  auto out = torch::empty({rows, heads, dim}, query.options().dtype(at::kFloat));
  if (rows == 0) return out;
  const auto* q = reinterpret_cast<const uint16_t*>(query.data_ptr<at::BFloat16>());
  const auto* k = reinterpret_cast<const uint16_t*>(key.data_ptr<at::BFloat16>());
  const auto* v = reinterpret_cast<const uint16_t*>(value.data_ptr<at::BFloat16>());
  float* o = out.data_ptr<float>();
  const int64_t k_head = key.stride(0), v_head = value.stride(0);
  const bool fast = fast_for(dim) && group <= MAX_VECTORS;
  // A task: one key-value head and a few consecutive rows, all its query heads at once.
  const int64_t tile = std::max<int64_t>(1, MAX_VECTORS / group);
  const int64_t tiles = (rows + tile - 1) / tile;
  at::parallel_for(0, kv_heads * tiles, 1, [&](int64_t begin, int64_t end) {
    const int64_t stride = keys + 16;
    std::vector<float> scores(MAX_VECTORS * stride);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t kv = task / tiles, first = (task % tiles) * tile;
      const int64_t last = std::min(rows, first + tile);
      const uint16_t* qs[MAX_VECTORS];
      float* outs[MAX_VECTORS];
      int64_t seen[MAX_VECTORS], vectors = 0;
      for (int64_t row = first; row < last; ++row)
        for (int64_t head = kv * group; head < (kv + 1) * group && vectors < MAX_VECTORS; ++head) {
          qs[vectors] = q + (head * rows + row) * dim;
          outs[vectors] = o + (row * heads + head) * dim;
          seen[vectors++] = offset + row + 1;
        }
#if FAST_PATH
      if (fast) {
        fast_task(qs, seen, vectors, k + kv * k_head, v + kv * v_head, dim, (float)scale,
                  scores.data(), stride, outs);
        continue;
      }
#endif
      // Portable: every vector of the task's rows, heads past MAX_VECTORS included.
      for (int64_t row = first; row < last; ++row)
        for (int64_t head = kv * group; head < (kv + 1) * group; ++head)
          portable_vector(q + (head * rows + row) * dim, k + kv * k_head, v + kv * v_head,
                          offset + row + 1, dim, (float)scale, scores.data(),
                          o + (row * heads + head) * dim);
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("attend", &attend, "causal attention over bfloat16 keys and values, exact per row");
  m.def("fast_path_for", &fast_path_for, "whether heads this wide take the AVX512-BF16 path");
}
