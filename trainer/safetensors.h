// The safetensors format (github.com/huggingface/safetensors): an 8-byte little-endian header
// length, a JSON header mapping each tensor name to {dtype, shape, data_offsets} (offsets relative
// to the end of the header), then the raw little-endian tensor bytes, packed without holes.
// F32, F16 and BF16 tensors are read and written; anything else is refused.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace sparsering::trainer {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Every tensor of the file, on the CPU in its stored dtype, in header order. Throws UserError
// naming `path` when the file is truncated, its header malformed, or a dtype unsupported.
NamedTensors read_safetensors(const std::string& path);

// Writes `tensors` (any device; F32/F16/BF16) to `path` in the given order, through a temporary
// file renamed when complete. `metadata` goes to the header's "__metadata__" (string values).
void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::vector<std::pair<std::string, std::string>>& metadata = {});

// Reads a Hugging Face weights directory: model.safetensors.index.json and the shards it names,
// else model.safetensors. Throws UserError naming the directory when neither exists.
NamedTensors read_safetensors_dir(const std::string& dir);

// Writes `tensors` to `dir` as model.safetensors, or, when they exceed `max_shard_bytes`, as
// model-0000i-of-0000n.safetensors shards plus model.safetensors.index.json (the layout
// `transformers` writes). Returns the files written.
std::vector<std::string> write_safetensors_dir(const std::string& dir, const NamedTensors& tensors,
                                               int64_t max_shard_bytes);

}  // namespace sparsering::trainer
