#include "trainer/hf/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "configs/user_error.h"
#include "trainer/checkpoint/atomic_file.h"
#include "trainer/hf/json.h"

namespace sparsering::trainer {
namespace {

namespace fs = std::filesystem;

// Headers larger than this are corrupt, not real (the reference implementation's limit too).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DType {
  const char* name;
  at::ScalarType type;
};
constexpr DType kDTypes[] = {{"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16}};

std::string dtype_name(at::ScalarType type, const std::string& tensor) {
  for (const auto& d : kDTypes) {
    if (d.type == type) return d.name;
  }
  throw UserError("safetensors: tensor " + tensor + " has dtype " + c10::toString(type) +
                  "; only float32, float16 and bfloat16 are written");
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

std::string read_text(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw UserError(path.string() + ": cannot read");
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

// One header entry, checked against the data section's size.
SafetensorsEntry parse_entry(const std::string& path, const std::string& name,
                             const JsonValue& entry, uint64_t data_start, uint64_t data_bytes) {
  const auto fail = [&](const std::string& what) -> UserError {
    return UserError(path + ": tensor " + name + ": " + what + " (corrupt or not safetensors)");
  };
  const JsonValue* dtype = entry.find("dtype");
  const JsonValue* shape = entry.find("shape");
  const JsonValue* offsets = entry.find("data_offsets");
  if (!dtype || dtype->kind != JsonValue::Kind::kString || !shape ||
      shape->kind != JsonValue::Kind::kArray || !offsets ||
      offsets->kind != JsonValue::Kind::kArray || offsets->items.size() != 2) {
    throw fail("needs dtype, shape and data_offsets [begin, end]");
  }
  const DType* type = nullptr;
  for (const auto& d : kDTypes) {
    if (dtype->text == d.name) type = &d;
  }
  if (!type) {
    throw UserError(path + ": tensor " + name + " has dtype " + dtype->text +
                    "; only F32, F16 and BF16 are supported");
  }
  std::vector<int64_t> sizes;
  int64_t begin = 0, end = 0;
  try {
    for (const auto& size : shape->items) {
      sizes.push_back(size.integer());
      if (sizes.back() < 0) throw fail("negative dimension");
    }
    begin = offsets->items[0].integer();
    end = offsets->items[1].integer();
  } catch (const std::invalid_argument&) {
    throw fail("shape and data_offsets must be integers");
  }
  int64_t bytes = static_cast<int64_t>(c10::elementSize(type->type));
  for (const int64_t size : sizes) bytes *= size;
  if (begin < 0 || end < begin || end - begin != bytes) {
    throw fail("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
               "] do not hold shape " + shape_text(sizes) + " of " + dtype->text);
  }
  if (static_cast<uint64_t>(end) > data_bytes) {
    throw UserError(path + ": truncated: tensor " + name + " ends at byte " +
                    std::to_string(data_start + end) + " of a " +
                    std::to_string(data_start + data_bytes) + "-byte file");
  }
  return {name, path, type->type, std::move(sizes), data_start + static_cast<uint64_t>(begin)};
}

}  // namespace

std::vector<SafetensorsEntry> list_safetensors(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw UserError(path + ": cannot open the safetensors file");
  const uint64_t file_bytes = fs::file_size(path);
  unsigned char length_bytes[8];
  if (file_bytes < 8 || !file.read(reinterpret_cast<char*>(length_bytes), 8)) {
    throw UserError(path + ": truncated: shorter than the 8-byte header length");
  }
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | length_bytes[i];
  if (header_bytes > kMaxHeaderBytes || header_bytes > file_bytes - 8) {
    throw UserError(path + ": truncated or corrupt: header length " + std::to_string(header_bytes) +
                    " but the file has " + std::to_string(file_bytes) + " bytes");
  }
  std::string header_text(header_bytes, '\0');
  file.read(header_text.data(), static_cast<std::streamsize>(header_bytes));
  const JsonValue header = parse_json(header_text, path + " header");
  if (header.kind != JsonValue::Kind::kObject) {
    throw UserError(path + ": corrupt: the header is not a JSON object");
  }
  const uint64_t data_start = 8 + header_bytes;
  std::vector<SafetensorsEntry> entries;
  for (const auto& [name, entry] : header.members) {
    if (name == "__metadata__") continue;
    entries.push_back(parse_entry(path, name, entry, data_start, file_bytes - data_start));
  }
  return entries;
}

at::Tensor read_safetensors_entry(const SafetensorsEntry& entry) {
  std::ifstream file(entry.path, std::ios::binary);
  if (!file) throw UserError(entry.path + ": cannot open the safetensors file");
  at::Tensor tensor = at::empty(entry.shape, at::TensorOptions().dtype(entry.dtype));
  file.seekg(static_cast<std::streamoff>(entry.offset));
  // safetensors stores little-endian, as every host we build for is.
  file.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(tensor.nbytes()));
  if (!file) throw UserError(entry.path + ": read failed at tensor " + entry.name);
  return tensor;
}

NamedTensors read_safetensors(const std::string& path) {
  NamedTensors tensors;
  for (const auto& entry : list_safetensors(path)) {
    tensors.emplace_back(entry.name, read_safetensors_entry(entry));
  }
  return tensors;
}

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::vector<at::Tensor> contiguous;
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata.size(); ++i) {
      header +=
          (i ? "," : "") + json_quote(metadata[i].first) + ":" + json_quote(metadata[i].second);
    }
    header += "}";
  }
  int64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    const std::string dtype = dtype_name(tensor.scalar_type(), name);
    contiguous.push_back(tensor.detach().cpu().contiguous());
    const int64_t bytes = static_cast<int64_t>(contiguous.back().nbytes());
    header += std::string(header.size() > 1 ? "," : "") + json_quote(name) + ":{\"dtype\":\"" +
              dtype + "\",\"shape\":" + shape_text(tensor.sizes().vec()) + ",\"data_offsets\":[" +
              std::to_string(offset) + "," + std::to_string(offset + bytes) + "]}";
    offset += bytes;
  }
  header += "}";
  // Spaces pad the header so tensor data starts 8-byte aligned (as the reference writer does).
  header.append((8 - header.size() % 8) % 8, ' ');
  const std::string temporary = path + ".tmp";
  {
    std::ofstream file(temporary, std::ios::binary | std::ios::trunc);
    unsigned char length_bytes[8];
    for (int i = 0; i < 8; ++i) length_bytes[i] = (header.size() >> (8 * i)) & 0xFF;
    file.write(reinterpret_cast<const char*>(length_bytes), 8);
    file.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (const auto& tensor : contiguous) {
      file.write(static_cast<const char*>(tensor.data_ptr()),
                 static_cast<std::streamsize>(tensor.nbytes()));
    }
    file.flush();
    if (!file) {
      const int error = errno != 0 ? errno : EIO;
      file.close();
      std::remove(temporary.c_str());
      throw WriteError(
          write_failure_message(path, error, 8 + header.size() + static_cast<uint64_t>(offset)));
    }
  }
  fs::rename(temporary, path);
}

std::vector<SafetensorsEntry> list_safetensors_dir(const std::string& dir) {
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single_path = fs::path(dir) / "model.safetensors";
  if (!fs::is_regular_file(index_path)) {
    if (!fs::is_regular_file(single_path)) {
      throw UserError(dir + ": neither model.safetensors.index.json nor model.safetensors; " +
                      "give a Hugging Face model directory saved with safetensors");
    }
    return list_safetensors(single_path.string());
  }
  const JsonValue index = parse_json(read_text(index_path), index_path.string());
  const JsonValue* weight_map = index.find("weight_map");
  if (!weight_map || weight_map->kind != JsonValue::Kind::kObject) {
    throw UserError(index_path.string() + ": no \"weight_map\" object");
  }
  std::vector<std::string> files;  // in first-use order
  std::map<std::string, std::string> file_of;
  for (const auto& [name, file] : weight_map->members) {
    if (file.kind != JsonValue::Kind::kString || file.text.find('/') != std::string::npos) {
      throw UserError(index_path.string() + ": weight_map entry " + name +
                      " must name a shard file in the same directory");
    }
    if (std::find(files.begin(), files.end(), file.text) == files.end()) files.push_back(file.text);
    file_of[name] = file.text;
  }
  std::vector<SafetensorsEntry> entries;
  std::set<std::string> found;
  for (const auto& file : files) {
    for (auto& entry : list_safetensors((fs::path(dir) / file).string())) {
      const auto listed = file_of.find(entry.name);
      // A tensor the index places in another shard (or omits) is not the model's.
      if (listed == file_of.end() || listed->second != file) continue;
      found.insert(entry.name);
      entries.push_back(std::move(entry));
    }
  }
  for (const auto& [name, file] : file_of) {
    if (!found.count(name)) {
      throw UserError(index_path.string() + " places " + name + " in " + file +
                      ", which does not hold it");
    }
  }
  return entries;
}

NamedTensors read_safetensors_dir(const std::string& dir) {
  NamedTensors tensors;
  for (const auto& entry : list_safetensors_dir(dir)) {
    tensors.emplace_back(entry.name, read_safetensors_entry(entry));
  }
  return tensors;
}

std::vector<std::string> write_safetensors_dir(const std::string& dir, const NamedTensors& tensors,
                                               int64_t max_shard_bytes) {
  std::vector<NamedTensors> shards(1);
  int64_t shard_bytes = 0, total_bytes = 0;
  for (const auto& named : tensors) {
    const auto bytes = static_cast<int64_t>(named.second.nbytes());
    if (!shards.back().empty() && shard_bytes + bytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(named);
    shard_bytes += bytes;
    total_bytes += bytes;
  }
  const std::vector<std::pair<std::string, std::string>> metadata = {{"format", "pt"}};
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  if (shards.size() == 1) {
    // A stale index from an earlier sharded export would shadow the new file for loaders.
    std::error_code ignored;
    fs::remove(index_path, ignored);
    const std::string path = (fs::path(dir) / "model.safetensors").string();
    write_safetensors(path, tensors, metadata);
    return {path};
  }
  std::vector<std::string> written;
  std::string weight_map;
  for (size_t s = 0; s < shards.size(); ++s) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    written.push_back((fs::path(dir) / name).string());
    write_safetensors(written.back(), shards[s], metadata);
    for (const auto& named : shards[s]) {
      weight_map += std::string(weight_map.empty() ? "" : ",\n") + "    " +
                    json_quote(named.first) + ": " + json_quote(name);
    }
  }
  write_file_atomically(index_path.string(),
                        "{\n  \"metadata\": {\"total_size\": " + std::to_string(total_bytes) +
                            "},\n  \"weight_map\": {\n" + weight_map + "\n  }\n}\n");
  written.push_back(index_path.string());
  return written;
}

}  // namespace sparsering::trainer
