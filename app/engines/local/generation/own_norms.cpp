// The CPU path's norms and rotary embedding, one call each where PyTorch's take six to twelve
// (own_layers.py calls them from a decoder layer's forward; own_kernels.py builds them with the
// attention kernel).
//
// Why: between the weight products of a decode step, a one-token layer runs about fifty small
// PyTorch operations. Each costs 10 us warm, and 50-70 us in the model, where every product
// has just streamed tens of megabytes of weights through the caches (measured on 2 cores:
// 27 of an 86 ms step outside the products). One call does the same arithmetic once.
//
// Exact per row: every row goes through the same instructions, whatever the number of rows
// and however the rows are shared among threads, so a token read in a prompt and the same
// token generated get the same bits (the prefix cache rests on that). Sums of squares run in
// sixteen lanes in a fixed order, then a fixed tree; -ffp-contract=off (own_kernels.py) keeps
// the compiler from fusing multiplies and adds differently where it inlines differently.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t LANES = 16;
// Rows a thread takes at least: a decode step's one to eight rows run on the calling thread,
// with no wake-up of the others.
constexpr int64_t WORK_PER_TASK = 16384;

// 1 / sqrt(mean of squares + eps) of n floats: sixteen partial sums, then a fixed tree.
float inverse_rms(const float* x, int64_t n, float eps) {
  float part[LANES] = {0};
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int64_t lane = 0; lane < LANES; ++lane) part[lane] += x[i + lane] * x[i + lane];
  for (int64_t lane = 0; i < n; ++i, ++lane) part[lane] += x[i] * x[i];
  for (int64_t width = LANES / 2; width > 0; width /= 2)
    for (int64_t lane = 0; lane < width; ++lane) part[lane] += part[lane + width];
  return 1.0f / std::sqrt(part[0] / float(n) + eps);
}

void check_float(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous(), what,
              ": a contiguous float32 tensor");
}

}  // namespace

// weight * (x / rms(x)) over the last axis of x (any leading shape), as transformers' Qwen
// RMSNorm computes it in float32.
at::Tensor rms_norm(at::Tensor x, at::Tensor weight, double eps) {
  check_float(x, "x");
  check_float(weight, "weight");
  const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
  TORCH_CHECK(weight.numel() == n, "one weight a column");
  auto out = at::empty_like(x);
  const float* in = x.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, WORK_PER_TASK / std::max<int64_t>(n, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float* r = in + row * n;
      float* y = o + row * n;
      const float inv = inverse_rms(r, n, float(eps));
      for (int64_t i = 0; i < n; ++i) y[i] = w[i] * (r[i] * inv);
    }
  });
  return out;
}

// A layer's queries or keys (batch, tokens, heads, dim), float32 with contiguous heads, each
// head normed over its dim (weight: (dim); none: no norm, as in Qwen2-VL) and then turned by
// the rotary embedding as transformers' `apply_rotary_pos_emb` does (x * cos + rotate_half(x) *
// sin; cos and sin (batch, tokens, dim)). Returns (batch, heads, tokens, dim), the layout the
// cache and attention read.
at::Tensor norm_rope(at::Tensor x, c10::optional<at::Tensor> weight, double eps,
                        at::Tensor cos, at::Tensor sin) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat, "x: (batch, tokens, heads, dim)");
  TORCH_CHECK(x.stride(3) == 1 && x.stride(2) == x.size(3), "x: contiguous heads");
  check_float(cos, "cos");
  check_float(sin, "sin");
  const int64_t batch = x.size(0), tokens = x.size(1), heads = x.size(2), dim = x.size(3);
  TORCH_CHECK(dim % 2 == 0, "an even head width");
  TORCH_CHECK(cos.numel() == batch * tokens * dim && sin.numel() == cos.numel(),
              "cos and sin: (batch, tokens, dim)");
  const float* w = nullptr;
  if (weight.has_value()) {
    check_float(*weight, "weight");
    TORCH_CHECK(weight->numel() == dim, "one weight a column of a head");
    w = weight->data_ptr<float>();
  }
  auto out = at::empty({batch, heads, tokens, dim}, x.options());
  const float* in = x.data_ptr<float>();
  const float* c = cos.data_ptr<float>();
  const float* s = sin.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t half = dim / 2, row_stride = x.stride(1), batch_stride = x.stride(0);
  const int64_t grain = std::max<int64_t>(1, WORK_PER_TASK / (heads * dim));
  at::parallel_for(0, batch * tokens, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> normed(dim);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / tokens, t = row % tokens;
      const float* cr = c + row * dim;
      const float* sr = s + row * dim;
      for (int64_t h = 0; h < heads; ++h) {
        const float* r = in + b * batch_stride + t * row_stride + h * dim;
        float* y = o + ((b * heads + h) * tokens + t) * dim;
        if (w != nullptr) {
          const float inv = inverse_rms(r, dim, float(eps));
          for (int64_t i = 0; i < dim; ++i) normed[i] = w[i] * (r[i] * inv);
        } else {
          for (int64_t i = 0; i < dim; ++i) normed[i] = r[i];
        }
        for (int64_t i = 0; i < half; ++i)
          y[i] = normed[i] * cr[i] + (-normed[i + half]) * sr[i];
        for (int64_t i = half; i < dim; ++i) y[i] = normed[i] * cr[i] + normed[i - half] * sr[i];
      }
    }
  });
  return out;
}
