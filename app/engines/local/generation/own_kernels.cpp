// The app's CPU kernels as one Python module (own_kernels.py builds it): attention
// (own_attention.cpp), norms and rotary embedding (own_norms.cpp).
#include <torch/extension.h>

torch::Tensor attend(torch::Tensor query, torch::Tensor key, torch::Tensor value, double scale);
bool fast_path_for(int64_t dim);
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps);
torch::Tensor norm_rope(torch::Tensor x, c10::optional<torch::Tensor> weight, double eps,
                        torch::Tensor cos, torch::Tensor sin);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("attend", &attend, "causal attention over bfloat16 keys and values, exact per row");
  m.def("fast_path_for", &fast_path_for, "whether heads this wide take the AVX512-BF16 path");
  m.def("rms_norm", &rms_norm, "RMS norm over the last axis, float32, exact per row");
  m.def("norm_rope", &norm_rope, "each head normed, then the rotary embedding, exact per row");
}
