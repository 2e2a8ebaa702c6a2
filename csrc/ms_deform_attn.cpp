// Schema of the multi-scale deformable attention ops (namespace `msda`).
//
// Kernels register themselves per device: cpu/ms_deform_attn_cpu.cpp (CPU) and
// cuda/ms_deform_attn_cuda.cu (CUDA). Fake kernels, autograd and autocast are registered
// from Python (msda/op.py) so that torch.compile and torch.export see through the op.
#include <torch/library.h>

TORCH_LIBRARY(msda, m) {
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, int im2col_step) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, "
      "Tensor level_start_index, Tensor sampling_locations, Tensor attention_weights, "
      "int im2col_step) -> (Tensor, Tensor, Tensor)");
}
