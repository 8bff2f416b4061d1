// Host heap tuning for the CPU training path.
#pragma once

namespace sparsering::trainer {

// Keeps freed large host blocks in the process heap instead of returning them to the kernel.
// A CPU step allocates and frees the same multi-megabyte score and mask tensors every layer and
// ring step; with glibc's defaults each of them is a fresh mmap (or a heap trimmed back), so every
// step pays page faults on all of that memory again (at 1024 tokens x 4 sequences the attention
// of the tiny model ran 1.8x slower, most of it in the kernel). Blocks of up to 32 MiB come from
// the heap and the heap is not trimmed. No effect outside glibc.
void keep_freed_host_memory();

}  // namespace sparsering::trainer
