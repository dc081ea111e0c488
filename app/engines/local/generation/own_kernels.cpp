// The app's CPU kernels as one Python module (own_kernels.py builds it): attention
// (own_attention.cpp), norms and rotary embedding (own_norms.cpp).
#include <torch/extension.h>

at::Tensor attend(at::Tensor query, at::Tensor key, at::Tensor value, double scale);
bool fast_path_for(int64_t dim);
at::Tensor rms_norm(at::Tensor x, at::Tensor weight, double eps);
at::Tensor norm_rope(at::Tensor x, c10::optional<at::Tensor> weight, double eps,
                        at::Tensor cos, at::Tensor sin);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("attend", &attend, "causal attention over bfloat16 keys and values, exact per row");
  m.def("fast_path_for", &fast_path_for, "whether heads this wide take the AVX512-BF16 path");
  m.def("rms_norm", &rms_norm, "RMS norm over the last axis, float32, exact per row");
  m.def("norm_rope", &norm_rope, "each head normed, then the rotary embedding, exact per row");
}
