// The CPU path's products with weights in blocks of 4 or 8 bits (app/cpu_weights/blocks.py
// keeps them: a float32 scale and an integer zero point a block), one kernel for prompts and
// decoding alike.
//
// Why a kernel of the app's own: ONNX Runtime's MatMulNBits, which computed them before, spends
// more time unpacking a block of 32 four-bit weights than reading it (measured on 2 cores: 18 GB/s
// where its 8-bit kernel reads 26), and unpacks every block again for every row of the input, so
// four replies decoded together cost 1.4x one (docs/cpu.md, "The app's products"). Here a block's
// weights are unpacked once for up to four input rows, each row quantized to 8 bits per block as
// MatMulNBits does, and multiplied with the CPU's integer dot products (AVX-512 VNNI); the
// weights are laid out in the order the kernel reads them, one stream of memory a thread.
//
// Exact per row: a row's output is a sequence of integer dot products (exact in any order) and
// one float multiply-add per block, in block order, by the same instructions whatever the number
// of rows, the row's place among them, or the number of threads (threads split the columns). So
// a token read in a prompt and the same token decoded get the same bits, which the prefix cache
// rests on.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define PRODUCTS_FAST 1
#else
#define PRODUCTS_FAST 0
#endif

namespace {

// Output columns a tile: one 512-bit register of int32 sums.
constexpr int64_t TILE = 16;
// Tiles kept together: a block of four tiles' weights, then their scales and zero points, one
// run of memory (a thread reads one stream, which the hardware's prefetcher follows; four tiles
// apart, each tile's run of 16-32 KB left the cores waiting on memory).
constexpr int64_t GROUP = 4;

// The bytes of one tile's block: 16 columns x `block` weights of `bits` each.
int64_t tile_block_bytes(int64_t bits, int64_t block) { return TILE * block * bits / 8; }

// Weights a column per step of the kernel's loop, and the 64-byte lines a tile and step:
// four bits, one line holding 8 weights a column (0-3 in the low halves, 4-7 in the high
// ones); eight bits, two lines of 4. A tile's lines of a step are side by side, then the next
// tile's: the kernel reads them in address order (read in another order, the products of one
// row took up to 1.6x as long).
constexpr int64_t STEP = 8;
constexpr int64_t step_lines(int bits) { return TILE * STEP * bits / 8 / 64; }
constexpr int64_t step_bytes(int bits) { return GROUP * step_lines(bits) * 64; }

// A group's block: its tiles' levels, then GROUP x TILE float32 scales, then as many uint8
// zero points.
int64_t chunk_bytes(int64_t bits, int64_t block) {
  return GROUP * tile_block_bytes(bits, block) + GROUP * TILE * 5;
}

#if PRODUCTS_FAST

// The input rows, quantized to 8 bits per block of the weights: levels, each block's scale and
// the sum of its levels (for the weights' zero points).
struct QuantizedRows {
  std::vector<int8_t> levels;
  std::vector<float> scales;
  std::vector<int32_t> sums;
  int64_t width;   // blocks x block
  int64_t blocks;
};

__mmask16 tail_mask(int64_t left) {
  if (left >= 16) return 0xFFFF;
  if (left <= 0) return 0;
  return static_cast<__mmask16>((1u << left) - 1);
}

// One row's block: the largest magnitude to 127, each value rounded to the nearest level.
void quantize_block(const float* x, int64_t valid, int64_t block, int8_t* levels, float* scale,
                    int32_t* sum) {
  __m512 top = _mm512_setzero_ps();
  for (int64_t i = 0; i < block; i += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(tail_mask(valid - i), x + i);
    top = _mm512_max_ps(top, _mm512_abs_ps(v));
  }
  const float largest = _mm512_reduce_max_ps(top);
  const float inverse = largest > 0.0f ? 127.0f / largest : 0.0f;
  *scale = largest / 127.0f;
  __m512i total = _mm512_setzero_si512();
  for (int64_t i = 0; i < block; i += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(tail_mask(valid - i), x + i);
    const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v, _mm512_set1_ps(inverse)));
    total = _mm512_add_epi32(total, q);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(levels + i), _mm512_cvtsepi32_epi8(q));
  }
  *sum = _mm512_reduce_add_epi32(total);
}

QuantizedRows quantize_rows(const float* x, int64_t rows, int64_t in_features, int64_t blocks,
                            int64_t block) {
  QuantizedRows out{std::vector<int8_t>(rows * blocks * block),
                    std::vector<float>(rows * blocks), std::vector<int32_t>(rows * blocks),
                    blocks * block, blocks};
  at::parallel_for(0, rows, 16, [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r)
      for (int64_t b = 0; b < blocks; ++b)
        quantize_block(x + r * in_features + b * block, in_features - b * block, block,
                       out.levels.data() + r * out.width + b * block,
                       out.scales.data() + r * blocks + b, out.sums.data() + r * blocks + b);
  });
  return out;
}

inline __m512i broadcast4(const int8_t* p) {
  int32_t word;
  std::memcpy(&word, p, 4);
  return _mm512_set1_epi32(word);
}

#define UNROLL _Pragma("GCC unroll 16")

// A step's weights of tile `t`, as `STEP / 4` registers of 4 weights a column
// (one byte each, 0 to 2^BITS - 1), in the order of the step's weights.
template <int BITS>
inline void unpack(const uint8_t* lines, int t, __m512i* w) {
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const auto line = [&](int index) {
    return _mm512_loadu_si512(lines + (t * step_lines(BITS) + index) * 64);
  };
  if (BITS == 8) {
    w[0] = line(0);
    w[1] = line(1);
  } else {
    const __m512i low = line(0);
    w[0] = _mm512_and_si512(low, nibble);
    w[1] = _mm512_and_si512(_mm512_srli_epi16(low, 4), nibble);
  }
}

// The group's four tiles times `R` rows from `row`. A block's integer dot products, a step at a
// time (`unpack`); with one row, two sums a tile (alternate runs of 4 weights), for two chains
// of dependent instructions: integer sums, whose order changes no bit. Then per block, for each
// row and column, (dot - zero point x the row's level sum) in float, times the weights' and the
// row's scales, added to the row's total: the same instructions for every row, whatever R.
template <int BITS, int R>
void group_rows(const uint8_t* group, int64_t block, int64_t blocks, const QuantizedRows& x,
                int64_t row, float* y, int64_t y_stride) {
  constexpr int CHAINS = R == 1 ? 2 : 1;
  constexpr int SLOTS = STEP / 4;
  const int64_t bytes = tile_block_bytes(BITS, block), chunk = chunk_bytes(BITS, block);
  __m512 totals[GROUP][R];
  UNROLL for (int t = 0; t < GROUP; ++t) UNROLL for (int r = 0; r < R; ++r) totals[t][r] =
      _mm512_setzero_ps();
  const int8_t* x_levels = x.levels.data() + row * x.width;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* levels = group + b * chunk;
    const float* scales = reinterpret_cast<const float*>(levels + GROUP * bytes);
    const uint8_t* zeros = levels + GROUP * bytes + GROUP * TILE * 4;
    const int8_t* xb = x_levels + b * block;
    __m512i dots[GROUP][R][CHAINS];
    UNROLL for (int t = 0; t < GROUP; ++t) UNROLL for (int r = 0; r < R; ++r)
        UNROLL for (int c = 0; c < CHAINS; ++c) dots[t][r][c] = _mm512_setzero_si512();
    for (int64_t k = 0; k < block; k += STEP) {
      __m512i w[GROUP][SLOTS];
      const uint8_t* lines = levels + (k / STEP) * step_bytes(BITS);
      UNROLL for (int t = 0; t < GROUP; ++t) unpack<BITS>(lines, t, w[t]);
      UNROLL for (int r = 0; r < R; ++r) UNROLL for (int slot = 0; slot < SLOTS; ++slot) {
        const __m512i a = broadcast4(xb + r * x.width + k + 4 * slot);
        UNROLL for (int t = 0; t < GROUP; ++t) dots[t][r][slot % CHAINS] =
            _mm512_dpbusd_epi32(dots[t][r][slot % CHAINS], w[t][slot], a);
      }
    }
    UNROLL for (int t = 0; t < GROUP; ++t) {
      const __m512i zero_points = _mm512_cvtepu8_epi32(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(zeros + t * TILE)));
      const __m512 weight_scales = _mm512_loadu_ps(scales + t * TILE);
      UNROLL for (int r = 0; r < R; ++r) {
        const int64_t rb = (row + r) * x.blocks + b;
        __m512i dot = dots[t][r][0];
        if (CHAINS == 2) dot = _mm512_add_epi32(dot, dots[t][r][1]);
        const __m512i shift = _mm512_mullo_epi32(zero_points, _mm512_set1_epi32(x.sums[rb]));
        const __m512 exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(dot, shift));
        const __m512 scale = _mm512_mul_ps(weight_scales, _mm512_set1_ps(x.scales[rb]));
        totals[t][r] = _mm512_fmadd_ps(exact, scale, totals[t][r]);
      }
    }
  }
  UNROLL for (int t = 0; t < GROUP; ++t) UNROLL for (int r = 0; r < R; ++r)
      _mm512_storeu_ps(y + r * y_stride + t * TILE, totals[t][r]);
}

// One group's tiles times every row: four rows at a time, then two, then one (four rows
// measured the fastest, by a little: more leave the registers short).
template <int BITS>
void group_all_rows(const uint8_t* group, int64_t block, int64_t blocks, const QuantizedRows& x,
                    int64_t rows, float* y, int64_t y_stride) {
  int64_t row = 0;
  for (; row + 4 <= rows; row += 4)
    group_rows<BITS, 4>(group, block, blocks, x, row, y + row * y_stride, y_stride);
  for (; row + 2 <= rows; row += 2)
    group_rows<BITS, 2>(group, block, blocks, x, row, y + row * y_stride, y_stride);
  if (row < rows) group_rows<BITS, 1>(group, block, blocks, x, row, y + row * y_stride, y_stride);
}

#endif  // PRODUCTS_FAST

// Level `level` of weight `k` of column `lane` of tile `tile` into its group's block at
// `base`, in the lines `unpack` reads: column `lane`'s 4 bytes of a line at lane*4.
void place(uint8_t* base, int64_t bits, int64_t tile, int64_t lane, int64_t k, uint8_t level) {
  const int b = static_cast<int>(bits);
  const int64_t within = k % STEP;
  uint8_t* step = base + (k / STEP) * step_bytes(b);
  const auto byte = [&](int64_t line) -> uint8_t& {
    return step[(tile * step_lines(b) + line) * 64 + lane * 4 + within % 4];
  };
  if (bits == 8)
    byte(within / 4) = level;  // two lines: weights 0-3, 4-7
  else
    byte(0) |= static_cast<uint8_t>((level & 15) << (within < 4 ? 0 : 4));
}

// `size` zeroed bytes for a layer's packed weights, in pages of 2 MB where Linux gives them
// (transparent huge pages, asked for with madvise: the default mode of most distributions).
// The kernel reads its weights as one stream; with pages of 4 KB (where the hardware's
// prefetchers stop at every page boundary: most likely why) one row of the output layer took
// 13.6-16.3 ms against 10.4-11.0 in huge pages, where ONNX Runtime took 10.6-12.3. Only whole
// huge pages are asked for (the tail of a layer stays in small ones): no memory is wasted.
at::Tensor weight_bytes(int64_t size) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t huge = uintptr_t(2) << 20, page = 4096;
  const uintptr_t kept = (static_cast<uintptr_t>(size) + page - 1) / page * page;
  const uintptr_t span = kept + huge;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw != MAP_FAILED) {
    const uintptr_t first = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t start = (first + huge - 1) / huge * huge;
    if (start > first) munmap(raw, start - first);  // the slack before and after goes back
    if (first + span > start + kept)
      munmap(reinterpret_cast<void*>(start + kept), first + span - start - kept);
    if (kept / huge > 0) madvise(reinterpret_cast<void*>(start), kept / huge * huge, MADV_HUGEPAGE);
    return at::from_blob(
        reinterpret_cast<void*>(start), {size},
        [kept](void* data) { munmap(data, kept); }, at::TensorOptions().dtype(at::kByte));
  }
#endif
  return at::zeros({size}, at::kByte);
}

}  // namespace

bool block_products_fast() { return PRODUCTS_FAST; }

// The weights in the kernel's order. `levels` [out, blocks x block] uint8 (one level a byte),
// `scales` [out, blocks] float32, `zeros` [out, blocks] uint8. Returns [groups, blocks, chunk]
// uint8 (chunk_bytes), out padded to whole groups with columns of zeros.
at::Tensor block_repack(at::Tensor levels, at::Tensor scales, at::Tensor zeros, int64_t bits,
                        int64_t block) {
  TORCH_CHECK(bits == 4 || bits == 8, "levels of 4 or 8 bits");
  TORCH_CHECK(block % 16 == 0 && block >= 16, "blocks of a multiple of 16 weights");
  levels = levels.contiguous();
  scales = scales.to(at::kFloat).contiguous();
  zeros = zeros.contiguous();
  const int64_t out = levels.size(0), blocks = scales.size(1);
  TORCH_CHECK(levels.size(1) == blocks * block, "levels: blocks x block a row");
  TORCH_CHECK(scales.size(0) == out && zeros.sizes() == scales.sizes(),
              "scales and zero points: one a row and block");
  const int64_t width = GROUP * TILE, groups = (out + width - 1) / width;
  const int64_t bytes = tile_block_bytes(bits, block), chunk = chunk_bytes(bits, block);
  at::Tensor packed = weight_bytes(groups * blocks * chunk).view({groups, blocks, chunk});
  const uint8_t* src = levels.data_ptr<uint8_t>();
  const float* src_scales = scales.data_ptr<float>();
  const uint8_t* src_zeros = zeros.data_ptr<uint8_t>();
  uint8_t* dst = packed.data_ptr<uint8_t>();
  at::parallel_for(0, groups, 1, [&](int64_t first, int64_t last) {
    for (int64_t g = first; g < last; ++g)
      for (int64_t c = 0; c < width && g * width + c < out; ++c) {
        const int64_t column = g * width + c, tile = c / TILE, lane = c % TILE;
        const uint8_t* row = src + column * blocks * block;
        for (int64_t b = 0; b < blocks; ++b) {
          uint8_t* base = dst + (g * blocks + b) * chunk;
          const uint8_t* weights = row + b * block;
          for (int64_t k = 0; k < block; ++k) place(base, bits, tile, lane, k, weights[k]);
          const float scale = src_scales[column * blocks + b];
          std::memcpy(base + GROUP * bytes + c * 4, &scale, 4);
          base[GROUP * bytes + GROUP * TILE * 4 + c] = src_zeros[column * blocks + b];
        }
      }
  });
  return packed;
}

// x [rows, in] float32 times the repacked weights: [rows, groups x GROUP x TILE] float32 (the
// caller drops padded columns).
at::Tensor block_product(at::Tensor x, at::Tensor packed, int64_t bits, int64_t block) {
  TORCH_CHECK(bits == 4 || bits == 8, "levels of 4 or 8 bits");
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 3 &&
                  packed.size(2) == chunk_bytes(bits, block) && packed.is_contiguous(),
              "weights: as block_repack made them");
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2, "input: float32 rows");
  x = x.contiguous();
  const int64_t rows = x.size(0), groups = packed.size(0), blocks = packed.size(1);
  TORCH_CHECK(x.size(1) <= blocks * block && x.size(1) > (blocks - 1) * block,
              "input: as wide as the weights");
  const int64_t width = groups * GROUP * TILE;
  at::Tensor y = at::empty({rows, width}, at::kFloat);
#if PRODUCTS_FAST
  const QuantizedRows quantized = quantize_rows(x.data_ptr<float>(), rows, x.size(1), blocks,
                                                block);
  const uint8_t* weights = packed.data_ptr<uint8_t>();
  float* out = y.data_ptr<float>();
  const int64_t group_bytes = blocks * chunk_bytes(bits, block);
  at::parallel_for(0, groups, 1, [&](int64_t first, int64_t last) {
    for (int64_t g = first; g < last; ++g) {
      float* y_group = out + g * GROUP * TILE;
      const uint8_t* group = weights + g * group_bytes;
      if (bits == 4)
        group_all_rows<4>(group, block, blocks, quantized, rows, y_group, width);
      else
        group_all_rows<8>(group, block, blocks, quantized, rows, y_group, width);
    }
  });
#else
  TORCH_CHECK(false, "the app's block products need AVX-512 VNNI");
#endif
  return y;
}
