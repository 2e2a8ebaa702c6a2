// Schema of the multi-scale deformable attention ops (namespace `msda`).
//
// Kernels register themselves per device: cpu/ms_deform_attn_cpu.cpp (CPU) and
// cuda/ms_deform_attn_cuda.cu (CUDA). Fake kernels, autograd, autocast and the build-on-first-call
// fallback are registered from Python (msda/registration.py), so torch.compile and torch.export
// see through the op even before this library is built.
//
// msda/registration.py defines the same two schemas when `import msda` finds no verified build to
// load, so the ops exist in every process. Whichever side comes first defines them; this library
// then defines only what is missing (a second definition is an error in the dispatcher), and
// warns if an existing definition differs from its own. tests/test_msda_registration.py checks
// both orders.
#include <torch/library.h>

namespace {

constexpr const char* kSchemas[] = {
    "msda::ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
    "Tensor sampling_locations, Tensor attention_weights, int im2col_step) -> Tensor",
    "msda::ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, "
    "Tensor level_start_index, Tensor sampling_locations, Tensor attention_weights, "
    "int im2col_step) -> (Tensor, Tensor, Tensor)",
};

void define_if_absent(torch::Library& m, const char* text) {
  const c10::FunctionSchema schema = torch::schema(text);
  const auto existing = c10::Dispatcher::singleton().findSchema({schema.name(), schema.overload_name()});
  if (!existing.has_value()) {
    m.def(text);
    return;
  }
  // never throw here: this runs while the library is being dlopen-ed
  if (!(existing->schema() == schema)) {
    TORCH_WARN("msda: ", schema.name(), " is already defined as '", existing->schema(),
               "' but this library implements '", schema, "'; msda/registration.py and csrc/ms_deform_attn.cpp disagree");
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(msda, m) {
  for (const char* text : kSchemas) define_if_absent(m, text);
}
