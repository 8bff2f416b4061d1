#include "data/token_shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <utility>

#include "configs/user_error.h"

// The format is little-endian and the reader maps it without byte swapping.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "token shards assume a little-endian host");

namespace sparsering::data {
namespace {

namespace fs = std::filesystem;

uint64_t padded_to_8(uint64_t bytes) { return (bytes + 7) / 8 * 8; }

uint64_t bytes_per_token(TokenDType dtype) { return static_cast<uint64_t>(dtype); }

template <typename T>
void write_pod(std::ofstream& file, const T& value) {
  file.write(reinterpret_cast<const char*>(&value), sizeof(value));
}

template <typename T>
T read_pod(const unsigned char* bytes) {
  T value;
  std::memcpy(&value, bytes, sizeof(value));
  return value;
}

const char* kRegenerate = "regenerate it with launch/prepare_data.py";

}  // namespace

TokenDType token_dtype_for_vocab(uint64_t vocab_size) {
  return vocab_size <= (uint64_t{1} << 16) ? TokenDType::kUint16 : TokenDType::kUint32;
}

uint64_t token_shard_file_bytes(TokenDType dtype, uint64_t token_count, uint64_t document_count) {
  return kTokenShardHeaderBytes + padded_to_8(token_count * bytes_per_token(dtype)) +
         (document_count + 1) * sizeof(uint64_t);
}

TokenShardWriter::TokenShardWriter(std::string path, TokenDType dtype, uint64_t vocab_size)
    : path_(std::move(path)),
      temporary_path_(path_ + ".tmp"),
      dtype_(dtype),
      vocab_size_(vocab_size) {
  if (dtype != TokenDType::kUint16 && dtype != TokenDType::kUint32) {
    throw std::invalid_argument("TokenShardWriter: dtype must be kUint16 or kUint32");
  }
  if (vocab_size == 0 || vocab_size > (uint64_t{1} << (8 * bytes_per_token(dtype)))) {
    throw std::invalid_argument("TokenShardWriter: vocab_size " + std::to_string(vocab_size) +
                                " does not fit the token type");
  }
  file_.open(temporary_path_, std::ios::binary | std::ios::trunc);
  if (!file_) throw UserError(temporary_path_ + ": cannot create the shard file; check the path");
  // The header is rewritten with the real counts by finish().
  file_.write(std::string(kTokenShardHeaderBytes, '\0').data(), kTokenShardHeaderBytes);
}

TokenShardWriter::~TokenShardWriter() {
  if (finished_) return;
  file_.close();
  std::error_code ignored;
  fs::remove(temporary_path_, ignored);
}

void TokenShardWriter::add_document(const std::vector<uint32_t>& tokens) {
  if (finished_) throw std::logic_error("TokenShardWriter: add_document after finish");
  for (const uint32_t token : tokens) {
    if (token >= vocab_size_) {
      throw std::invalid_argument("TokenShardWriter: token " + std::to_string(token) +
                                  " >= vocab_size " + std::to_string(vocab_size_));
    }
    if (dtype_ == TokenDType::kUint16) {
      write_pod(file_, static_cast<uint16_t>(token));
    } else {
      write_pod(file_, token);
    }
  }
  offsets_.push_back(offsets_.back() + tokens.size());
}

void TokenShardWriter::finish() {
  if (finished_) return;
  const uint64_t token_bytes = token_count() * bytes_per_token(dtype_);
  file_.write(std::string(padded_to_8(token_bytes) - token_bytes, '\0').data(),
              padded_to_8(token_bytes) - token_bytes);
  file_.write(reinterpret_cast<const char*>(offsets_.data()), offsets_.size() * sizeof(uint64_t));
  file_.seekp(0);
  file_.write(kTokenShardMagic, sizeof(kTokenShardMagic));
  write_pod(file_, kTokenShardVersion);
  write_pod(file_, static_cast<uint32_t>(dtype_));
  write_pod(file_, token_count());
  write_pod(file_, static_cast<uint64_t>(offsets_.size() - 1));
  write_pod(file_, vocab_size_);
  file_.close();
  if (!file_) throw UserError(temporary_path_ + ": write failed; check free disk space");
  std::error_code error;
  fs::rename(temporary_path_, path_, error);
  if (error) {
    throw UserError(path_ + ": cannot rename the finished shard (" + error.message() + ")");
  }
  finished_ = true;
}

void write_token_shard(const std::string& path, const std::vector<std::vector<uint32_t>>& documents,
                       TokenDType dtype, uint64_t vocab_size) {
  TokenShardWriter writer(path, dtype, vocab_size);
  for (const auto& document : documents) writer.add_document(document);
  writer.finish();
}

TokenShard::TokenShard(const std::string& path) : path_(path) {
  const int descriptor = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) {
    throw UserError(path + ": cannot open the token shard (" + std::strerror(errno) +
                    "); check data.path");
  }
  struct stat status {};
  if (::fstat(descriptor, &status) != 0 || !S_ISREG(status.st_mode)) {
    ::close(descriptor);
    throw UserError(path + ": not a regular file; data.path must hold *.srtok shard files");
  }
  const auto file_bytes = static_cast<uint64_t>(status.st_size);
  if (file_bytes < kTokenShardHeaderBytes) {
    ::close(descriptor);
    throw UserError(path + ": truncated token shard (" + std::to_string(file_bytes) +
                    " bytes, the header alone has " + std::to_string(kTokenShardHeaderBytes) +
                    "); " + kRegenerate);
  }
  void* mapping = ::mmap(nullptr, file_bytes, PROT_READ, MAP_SHARED, descriptor, 0);
  ::close(descriptor);  // the mapping keeps the file alive
  if (mapping == MAP_FAILED) {
    throw UserError(path + ": cannot memory-map the token shard (" + std::strerror(errno) + ")");
  }
  mapping_ = static_cast<const unsigned char*>(mapping);
  mapped_bytes_ = file_bytes;
  try {
    if (std::memcmp(mapping_, kTokenShardMagic, sizeof(kTokenShardMagic)) != 0) {
      throw UserError(path + ": not a SparseRing token shard (no SRTOKENS magic); " + kRegenerate);
    }
    const auto version = read_pod<uint32_t>(mapping_ + 8);
    if (version != kTokenShardVersion) {
      throw UserError(path + ": token shard format version " + std::to_string(version) +
                      ", this build reads version " + std::to_string(kTokenShardVersion) + "; " +
                      kRegenerate);
    }
    const auto dtype = read_pod<uint32_t>(mapping_ + 12);
    if (dtype != static_cast<uint32_t>(TokenDType::kUint16) &&
        dtype != static_cast<uint32_t>(TokenDType::kUint32)) {
      throw UserError(path + ": unknown token type (" + std::to_string(dtype) +
                      " bytes per token; 2 = uint16, 4 = uint32); " + kRegenerate);
    }
    dtype_ = static_cast<TokenDType>(dtype);
    token_count_ = read_pod<uint64_t>(mapping_ + 16);
    document_count_ = read_pod<uint64_t>(mapping_ + 24);
    vocab_size_ = read_pod<uint64_t>(mapping_ + 32);
    // Counts beyond 2^56 cannot come from a real file and would overflow the size formula.
    if (token_count_ >= (uint64_t{1} << 56) || document_count_ >= (uint64_t{1} << 56)) {
      throw UserError(path + ": corrupt token shard header (impossible counts); " + kRegenerate);
    }
    const uint64_t expected = token_shard_file_bytes(dtype_, token_count_, document_count_);
    if (file_bytes != expected) {
      throw UserError(path + ": token shard is " + std::to_string(file_bytes) +
                      " bytes but its header (" + std::to_string(token_count_) + " tokens, " +
                      std::to_string(document_count_) + " documents) needs " +
                      std::to_string(expected) + (file_bytes < expected ? " (truncated)" : "") +
                      "; " + kRegenerate);
    }
    if (vocab_size_ == 0 || vocab_size_ > (uint64_t{1} << (8 * bytes_per_token(dtype_)))) {
      throw UserError(path + ": vocabulary size " + std::to_string(vocab_size_) +
                      " does not fit the token type; " + kRegenerate);
    }
    tokens_ = mapping_ + kTokenShardHeaderBytes;
    document_starts_ = reinterpret_cast<const uint64_t*>(
        tokens_ + padded_to_8(token_count_ * bytes_per_token(dtype_)));
    const bool index_bounded =
        document_starts_[0] == 0 && document_starts_[document_count_] == token_count_;
    if (!index_bounded ||
        !std::is_sorted(document_starts_, document_starts_ + document_count_ + 1)) {
      throw UserError(path + ": corrupt document index (offsets must rise from 0 to the token " +
                      "count); " + kRegenerate);
    }
  } catch (...) {
    release();
    throw;
  }
}

TokenShard::~TokenShard() { release(); }

TokenShard::TokenShard(TokenShard&& other) noexcept { *this = std::move(other); }

TokenShard& TokenShard::operator=(TokenShard&& other) noexcept {
  if (this == &other) return *this;
  release();
  path_ = std::move(other.path_);
  mapping_ = std::exchange(other.mapping_, nullptr);
  mapped_bytes_ = std::exchange(other.mapped_bytes_, 0);
  dtype_ = other.dtype_;
  token_count_ = other.token_count_;
  document_count_ = other.document_count_;
  vocab_size_ = other.vocab_size_;
  tokens_ = std::exchange(other.tokens_, nullptr);
  document_starts_ = std::exchange(other.document_starts_, nullptr);
  return *this;
}

void TokenShard::release() {
  if (mapping_ != nullptr) ::munmap(const_cast<unsigned char*>(mapping_), mapped_bytes_);
  mapping_ = nullptr;
}

uint32_t TokenShard::token(uint64_t position) const {
  if (dtype_ == TokenDType::kUint16) {
    return reinterpret_cast<const uint16_t*>(tokens_)[position];
  }
  return reinterpret_cast<const uint32_t*>(tokens_)[position];
}

void TokenShard::copy_tokens(uint64_t begin, uint64_t end, int32_t* out) const {
  if (dtype_ == TokenDType::kUint16) {
    const auto* tokens = reinterpret_cast<const uint16_t*>(tokens_);
    std::copy(tokens + begin, tokens + end, out);
  } else {
    // Tokens fit int32 because the vocabulary size is checked against model.vocab_size (an int).
    const auto* tokens = reinterpret_cast<const uint32_t*>(tokens_);
    std::transform(tokens + begin, tokens + end, out,
                   [](uint32_t token) { return static_cast<int32_t>(token); });
  }
}

uint64_t TokenShard::document_start(uint64_t document) const { return document_starts_[document]; }

uint64_t TokenShard::document_of(uint64_t position) const {
  // The last start <= position; empty documents share a start, upper_bound skips past them.
  const uint64_t* after =
      std::upper_bound(document_starts_, document_starts_ + document_count_ + 1, position);
  return static_cast<uint64_t>(after - document_starts_) - 1;
}

std::vector<std::string> list_token_shards(const std::string& path) {
  std::error_code error;
  if (fs::is_regular_file(path, error)) return {path};
  if (!fs::is_directory(path, error)) {
    throw UserError(path + ": no such shard directory; set data.path to a directory of *.srtok " +
                    "files (launch/prepare_data.py writes them)");
  }
  std::vector<std::string> shards;
  for (const auto& entry : fs::directory_iterator(path, error)) {
    if (entry.is_regular_file() && entry.path().extension() == kTokenShardExtension) {
      shards.push_back(entry.path().string());
    }
  }
  if (error) throw UserError(path + ": cannot list the shard directory (" + error.message() + ")");
  if (shards.empty()) {
    throw UserError(path + ": no *.srtok token shards in the directory; run " +
                    "launch/prepare_data.py to write them");
  }
  std::sort(shards.begin(), shards.end());
  return shards;
}

}  // namespace sparsering::data
