// The app's CPU kernels as one Python module (own_kernels.py builds it): attention
// (own_attention.cpp), norms and rotary embedding (own_norms.cpp), products with weights in
// blocks of 4 or 8 bits (own_products.cpp).
#include <torch/extension.h>

at::Tensor attend(at::Tensor query, at::Tensor key, at::Tensor value, double scale);
bool fast_path_for(int64_t dim);
at::Tensor rms_norm(at::Tensor x, at::Tensor weight, double eps);
at::Tensor norm_rope(at::Tensor x, c10::optional<at::Tensor> weight, double eps,
                        at::Tensor cos, at::Tensor sin);
bool block_products_fast();
at::Tensor block_repack(at::Tensor levels, at::Tensor scales, at::Tensor zeros, int64_t bits,
                        int64_t block);
at::Tensor block_product(at::Tensor x, at::Tensor packed, int64_t bits, int64_t block);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("attend", &attend, "causal attention over bfloat16 keys and values, exact per row");
  m.def("fast_path_for", &fast_path_for, "whether heads this wide take the AVX512-BF16 path");
  m.def("rms_norm", &rms_norm, "RMS norm over the last axis, float32, exact per row");
  m.def("norm_rope", &norm_rope, "each head normed, then the rotary embedding, exact per row");
  m.def("block_products_fast", &block_products_fast, "whether block products run here");
  m.def("block_repack", &block_repack, "block weights in the product kernel's order");
  m.def("block_product", &block_product, "rows times block weights, exact per row");
}
