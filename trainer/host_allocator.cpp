#include "trainer/host_allocator.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace sparsering::trainer {

void keep_freed_host_memory() {
#if defined(__GLIBC__)
  // 32 MiB is glibc's largest allowed mmap threshold on 64-bit; larger blocks (checkpoint
  // buffers, offloaded optimizer state) are still mapped and unmapped on their own.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

}  // namespace sparsering::trainer
