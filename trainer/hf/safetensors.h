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

// Where one tensor lies in a safetensors file, from the header alone: a checkpoint of any size is
// listed without reading its data, then read one tensor at a time.
struct SafetensorsEntry {
  std::string name, path;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // of the tensor's first byte in the file
};

// The header of `path`, checked against the file's size, in header order.
std::vector<SafetensorsEntry> list_safetensors(const std::string& path);

// The entries of a Hugging Face weights directory: the shards model.safetensors.index.json names
// (each tensor from the shard its weight_map gives), else model.safetensors. Throws UserError
// naming the directory when neither exists, or the index when it and the shards disagree.
std::vector<SafetensorsEntry> list_safetensors_dir(const std::string& dir);

// One tensor's data, on the CPU in its stored dtype.
at::Tensor read_safetensors_entry(const SafetensorsEntry& entry);

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
