// Memory of the CPU kernels, reused across calls: per-thread scratch, and recycled output blocks.
// Both avoid page faults: a fresh 18 MB scratch allocation cost its faults on every call (5 ms of a
// 20 ms forward at Deformable DETR's encoder shape, measured); reusing the memory leaves only the
// copy. Each thread keeps its largest scratch request per slot until it exits (the fp32 kernels ask
// for one head's padded maps, 2.3 MB at the encoder shape, per worker thread).
#pragma once
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <sys/mman.h>

namespace msda {

enum class ScratchSlot { kValue = 0, kGradValue = 1 };

constexpr size_t kHuge = size_t(2) << 20;

// Asks the kernel for 2 MiB pages (where transparent huge pages are "madvise" or "always"): the
// kernels read and write their large blocks with strides and gathers, which miss the TLB on 4 KiB
// pages (measured 5-8% of the encoder-shape forward and backward, AVX2 build, caches cold). A hint
// only: nothing changes where it is not granted.
inline void advise_huge_pages(void* data, size_t bytes) {
#if defined(MADV_HUGEPAGE)
  if (reinterpret_cast<uintptr_t>(data) % kHuge == 0) madvise(data, bytes, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// `floats` uninitialised floats (64-byte aligned) of this thread's buffer for `slot`. They are valid
// until the same thread asks for the same slot again; never hand them to the caller of an op.
inline float* scratch_floats(ScratchSlot slot, size_t floats) {
  struct Buffer {
    std::unique_ptr<float, decltype(&std::free)> data{nullptr, &std::free};
    size_t capacity = 0;  // in floats
  };
  thread_local std::array<Buffer, 2> buffers;
  Buffer& buffer = buffers[static_cast<int>(slot)];
  const size_t needed = std::max<size_t>(floats, 1);
  if (needed > buffer.capacity) {
    const size_t bytes = (needed * sizeof(float) + kHuge - 1) / kHuge * kHuge;
    buffer.data.reset(static_cast<float*>(std::aligned_alloc(kHuge, bytes)));
    TORCH_CHECK(buffer.data, "msda: could not allocate ", bytes, " bytes of scratch memory");
    advise_huge_pages(buffer.data.get(), bytes);
    buffer.capacity = bytes / sizeof(float);
  }
  return buffer.data.get();
}

// Allocator of the fp32 kernels' outputs. A freed block is kept (up to MSDA_CPU_CACHE_MB, default 256
// MiB in all; 0 turns this off) and handed out again for a request of the same size, so a loop that
// calls the op pays the page faults of its outputs once instead of every call: glibc returns blocks
// that large to the system when they are freed, and faulting them in again cost 5-10 ms of a 40 ms
// forward+backward at Deformable DETR's encoder shape. The tensors are ordinary resizable CPU tensors.
class RecyclingAllocator final : public c10::Allocator {
 public:
  static RecyclingAllocator& instance() {
    static auto* allocator = new RecyclingAllocator();  // never destroyed: tensors may outlive exit handlers
    return *allocator;
  }

  c10::DataPtr allocate(size_t bytes) override {
    // blocks of 4 MiB and more in whole huge pages
    const size_t unit = bytes >= 2 * kHuge ? kHuge : kPage;
    const size_t size = (std::max<size_t>(bytes, 1) + unit - 1) / unit * unit;
    void* data = take(size);
    if (data == nullptr) {
      data = std::aligned_alloc(unit == kHuge ? kHuge : 64, size);
      TORCH_CHECK(data != nullptr, "msda: could not allocate ", size, " bytes");
      if (unit == kHuge) advise_huge_pages(data, size);
    }
    return {data, new Block{data, size}, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }

 private:
  static constexpr size_t kPage = 4096;
  struct Block {
    void* data;
    size_t size;
  };

  RecyclingAllocator() : limit_(cache_limit_mb() << 20) {}

  // MSDA_CPU_CACHE_MB: ASCII digits (spaces around them allowed), or unset/empty for the default.
  // `import msda` checks it first and raises; a library loaded without msda warns here instead.
  static size_t cache_limit_mb() {
    constexpr size_t kDefault = 256;
    const char* env = std::getenv("MSDA_CPU_CACHE_MB");
    if (env == nullptr) return kDefault;
    std::string text(env);
    const auto first = text.find_first_not_of(" \t"), last = text.find_last_not_of(" \t");
    if (first == std::string::npos) return kDefault;
    text = text.substr(first, last - first + 1);
    const bool digits = text.size() <= 12 && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!digits) {
      TORCH_WARN("msda: environment variable MSDA_CPU_CACHE_MB='", env, "' is not valid; valid values: a whole number of MiB >= 0 ",
                 "(default 256; 0 keeps none), or unset. Using ", kDefault, ".");
      return kDefault;
    }
    return static_cast<size_t>(std::stoull(text));
  }

  static void release(void* context) {
    const Block* block = static_cast<Block*>(context);
    instance().give_back(block->data, block->size);
    delete block;
  }

  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < free_.size(); ++i) {
      if (free_[i].size == size) {
        void* data = free_[i].data;
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
        cached_ -= size;
        return data;
      }
    }
    return nullptr;
  }

  void give_back(void* data, size_t size) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + size <= limit_) {
        free_.push_back({data, size});
        cached_ += size;
        return;
      }
    }
    std::free(data);
  }

  std::mutex mutex_;
  std::vector<Block> free_;
  size_t limit_ = 0, cached_ = 0;
};

// An uninitialised fp32 CPU tensor from the RecyclingAllocator.
inline at::Tensor empty_recycled(at::IntArrayRef sizes) {
  return at::detail::empty_generic(sizes, &RecyclingAllocator::instance(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   at::kFloat, std::nullopt);
}

}  // namespace msda
