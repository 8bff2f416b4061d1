// Token shards: the on-disk form of a tokenized corpus, written once (launch/prepare_data.py or
// TokenShardWriter) and memory-mapped by every rank, so opening a terabyte corpus costs nothing
// and the page cache is shared by the ranks of one node.
//
// File layout (all integers little-endian):
//   offset  0  char[8]   magic "SRTOKENS"
//   offset  8  uint32    format version (kTokenShardVersion)
//   offset 12  uint32    bytes per token: 2 (uint16) or 4 (uint32)
//   offset 16  uint64    token count T
//   offset 24  uint64    document count D
//   offset 32  uint64    vocabulary size of the tokenizer (every token is below it)
//   offset 40  T tokens, then zero padding to a multiple of 8 bytes (aligns the index)
//   then       uint64[D + 1] document start offsets in tokens: 0 = first, ..., last = T
// A shard directory is every *.srtok file in it, in name order.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace sparsering::data {

inline constexpr char kTokenShardMagic[8] = {'S', 'R', 'T', 'O', 'K', 'E', 'N', 'S'};
inline constexpr uint32_t kTokenShardVersion = 1;
inline constexpr uint64_t kTokenShardHeaderBytes = 40;
inline constexpr const char* kTokenShardExtension = ".srtok";

enum class TokenDType : uint32_t { kUint16 = 2, kUint32 = 4 };

// The smallest token type that holds every token of a vocabulary of `vocab_size`.
TokenDType token_dtype_for_vocab(uint64_t vocab_size);

// Total file size a header describes (header + padded tokens + index).
uint64_t token_shard_file_bytes(TokenDType dtype, uint64_t token_count, uint64_t document_count);

// Streams documents into a shard. The file appears under its final name only when finish()
// succeeds (written as <path>.tmp, then renamed), so an interrupted run leaves no shard that
// looks complete.
class TokenShardWriter {
 public:
  TokenShardWriter(std::string path, TokenDType dtype, uint64_t vocab_size);
  ~TokenShardWriter();  // removes the temporary file if finish() was not called
  TokenShardWriter(const TokenShardWriter&) = delete;
  TokenShardWriter& operator=(const TokenShardWriter&) = delete;

  // Appends one document; every token must be in [0, vocab_size).
  void add_document(const std::vector<uint32_t>& tokens);
  void finish();

  uint64_t token_count() const { return offsets_.back(); }

 private:
  std::string path_, temporary_path_;
  TokenDType dtype_;
  uint64_t vocab_size_;
  std::ofstream file_;
  std::vector<uint64_t> offsets_{0};
  bool finished_ = false;
};

// Writes `documents` as one shard at `path` (convenience over TokenShardWriter).
void write_token_shard(const std::string& path, const std::vector<std::vector<uint32_t>>& documents,
                       TokenDType dtype, uint64_t vocab_size);

// A read-only, memory-mapped shard. Opening validates the header, the file size and the document
// index; anything wrong is a UserError naming the file, the problem and the fix.
class TokenShard {
 public:
  explicit TokenShard(const std::string& path);
  ~TokenShard();
  TokenShard(TokenShard&& other) noexcept;
  TokenShard& operator=(TokenShard&& other) noexcept;
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;

  const std::string& path() const { return path_; }
  TokenDType dtype() const { return dtype_; }
  uint64_t token_count() const { return token_count_; }
  uint64_t document_count() const { return document_count_; }
  uint64_t vocab_size() const { return vocab_size_; }

  uint32_t token(uint64_t position) const;
  // Copies tokens [begin, end) into `out` as int32 (the trainer's token type).
  void copy_tokens(uint64_t begin, uint64_t end, int32_t* out) const;
  // Start of document `document` in tokens; document_start(document_count()) == token_count().
  uint64_t document_start(uint64_t document) const;
  // The document that holds token `position` (< token_count()).
  uint64_t document_of(uint64_t position) const;

 private:
  void release();

  std::string path_;
  const unsigned char* mapping_ = nullptr;
  uint64_t mapped_bytes_ = 0;
  TokenDType dtype_ = TokenDType::kUint16;
  uint64_t token_count_ = 0, document_count_ = 0, vocab_size_ = 0;
  const unsigned char* tokens_ = nullptr;
  const uint64_t* document_starts_ = nullptr;
};

// The shard files of `path`: every *.srtok in the directory sorted by name, or `path` itself
// when it is one shard file. UserError when there is none.
std::vector<std::string> list_token_shards(const std::string& path);

}  // namespace sparsering::data
