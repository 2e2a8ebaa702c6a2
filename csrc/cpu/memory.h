// Memory of the CPU kernels: per-thread scratch that lives across calls, and a huge-page hint for
// large outputs. Both avoid page faults: a fresh 18 MB scratch allocation cost its faults on every
// call (5 ms of a 20 ms forward at Deformable DETR's encoder shape, measured); reusing the memory
// leaves only the copy. Each calling thread keeps its largest request per slot until it exits.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <cstdlib>
#include <memory>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace msda {

enum class ScratchSlot { kValue = 0, kGradValue = 1 };

// An fp32 tensor of `sizes` over this thread's buffer for `slot`, uninitialised. It is valid until the
// same thread asks for the same slot again; never return it to the caller of an op.
inline at::Tensor scratch_tensor(ScratchSlot slot, at::IntArrayRef sizes) {
  struct Buffer {
    std::unique_ptr<float, decltype(&std::free)> data{nullptr, &std::free};
    size_t capacity = 0;  // in floats
  };
  thread_local std::array<Buffer, 2> buffers;
  Buffer& buffer = buffers[static_cast<int>(slot)];
  size_t needed = 1;
  for (int64_t size : sizes) needed *= static_cast<size_t>(size);
  if (needed > buffer.capacity) {
    const size_t bytes = (needed * sizeof(float) + 63) / 64 * 64;  // aligned_alloc wants a multiple of 64
    buffer.data.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    TORCH_CHECK(buffer.data, "msda: could not allocate ", bytes, " bytes of scratch memory");
    buffer.capacity = needed;
  }
  return at::from_blob(buffer.data.get(), sizes, at::TensorOptions().dtype(at::kFloat));
}

// Asks Linux to back a freshly allocated output of 32 MiB or more with transparent huge pages before
// it is first written. glibc gives allocations that large fresh pages from the system on every call,
// and each 4 KiB page then costs a fault on first touch: at the encoder shape with B = 2 the huge
// pages made the backward 1.3x faster. Smaller outputs are usually recycled memory: left alone.
inline void advise_huge_pages(const at::Tensor& fresh) {
#ifdef __linux__
  if (fresh.nbytes() < (size_t(32) << 20)) return;
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const auto begin = reinterpret_cast<uintptr_t>(fresh.data_ptr());
  const uintptr_t end = begin + fresh.nbytes();
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = end & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // a hint
#endif
}

}  // namespace msda
