// Packing and sampling: each epoch serves every packed token exactly once, in stream order
// without shuffling and as a permutation with it; the same index always gives the same sequence;
// document ids mark every document boundary, including shard boundaries.
#include "data/token_dataset.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "configs/user_error.h"
#include "data/index_permutation.h"
#include "tests/data_test_util.h"

namespace sparsering {
namespace {

using data::TokenDataset;
using data::TokenDType;
using testing::ScopedTempDir;

// Documents of lengths 1..n over two shards, token values counting up so the stream position of
// every token is visible: stream token i has value i mod vocab.
struct Corpus {
  Corpus(uint64_t vocab, TokenDType dtype) {
    int32_t document = 0;
    for (const char* name : {"part-0.srtok", "part-1.srtok"}) {
      data::TokenShardWriter writer(dir.file(name), dtype, vocab);
      for (int length = 1; length <= 12; ++length, ++document) {
        std::vector<uint32_t> tokens;
        for (int i = 0; i < length; ++i) {
          tokens.push_back(static_cast<uint32_t>(stream.size() % vocab));
          stream.push_back(tokens.back());
          document_of_token.push_back(document);
        }
        writer.add_document(tokens);
        if (length == 5) writer.add_document({});  // empty documents are allowed
      }
      writer.finish();
    }
  }  // 2 x 78 = 156 tokens

  ScopedTempDir dir;
  std::vector<uint32_t> stream;
  std::vector<int32_t> document_of_token;  // global document number of each stream token
};

TEST(IndexPermutation, IsABijectionForEverySize) {
  for (uint64_t size : {1, 2, 3, 7, 64, 100, 1000, 4097}) {
    const data::IndexPermutation permutation(size, 42);
    std::vector<bool> seen(size, false);
    for (uint64_t i = 0; i < size; ++i) {
      const uint64_t value = permutation(i);
      ASSERT_LT(value, size);
      EXPECT_FALSE(seen[value]) << "size " << size << " repeats " << value;
      seen[value] = true;
    }
  }
}

TEST(IndexPermutation, KeyChangesTheOrder) {
  const data::IndexPermutation a(1000, 1), b(1000, 2);
  int same = 0, fixed = 0;
  for (uint64_t i = 0; i < 1000; ++i) {
    same += a(i) == b(i);
    fixed += a(i) == i;
  }
  EXPECT_LT(same, 20);  // about 1 expected for independent permutations
  EXPECT_LT(fixed, 20);
}

TEST(TokenDataset, PackingCoversEveryTokenOnceInOrder) {
  for (const TokenDType dtype : {TokenDType::kUint16, TokenDType::kUint32}) {
    const Corpus corpus(dtype == TokenDType::kUint16 ? 1000 : 70000, dtype);
    const int64_t length = 13;  // sequences cross document and shard boundaries
    const auto dataset = TokenDataset::open(corpus.dir.path(), length, 7, /*shuffle=*/false);
    ASSERT_EQ(dataset.num_tokens(), corpus.stream.size());
    ASSERT_EQ(dataset.num_sequences(), corpus.stream.size() / length);
    std::vector<uint32_t> served;
    for (uint64_t i = 0; i < dataset.num_sequences(); ++i) {
      const auto sequence = dataset.sequence(i);
      ASSERT_EQ(static_cast<int64_t>(sequence.size()), length);
      served.insert(served.end(), sequence.begin(), sequence.end());
    }
    // Everything but the last stream_tokens mod length tokens, in stream order.
    EXPECT_EQ(served,
              std::vector<uint32_t>(corpus.stream.begin(), corpus.stream.begin() + served.size()));
  }
}

TEST(TokenDataset, ShuffledEpochsArePermutationsOfThePackedSequences) {
  const Corpus corpus(1000, TokenDType::kUint16);
  const auto ordered = TokenDataset::open(corpus.dir.path(), 8, 7, false);
  const auto shuffled = TokenDataset::open(corpus.dir.path(), 8, 7, true);
  const uint64_t n = shuffled.num_sequences();
  std::vector<uint64_t> epoch0, epoch1;
  for (uint64_t i = 0; i < n; ++i) {
    epoch0.push_back(shuffled.packed_index(i));
    epoch1.push_back(shuffled.packed_index(n + i));
    // A shuffled index serves exactly the packed sequence it maps to.
    EXPECT_EQ(shuffled.sequence(i), ordered.sequence(shuffled.packed_index(i)));
  }
  EXPECT_NE(epoch0, epoch1);  // each epoch has its own order
  std::vector<uint64_t> expected(n);
  std::iota(expected.begin(), expected.end(), 0);
  for (auto* epoch : {&epoch0, &epoch1}) {
    EXPECT_NE(*epoch, expected);
    std::sort(epoch->begin(), epoch->end());
    EXPECT_EQ(*epoch, expected);
  }
}

TEST(TokenDataset, SameIndexGivesTheSameSequence) {
  const Corpus corpus(1000, TokenDType::kUint16);
  const auto a = TokenDataset::open(corpus.dir.path(), 8, 99, true);
  const auto b = TokenDataset::open(corpus.dir.path(), 8, 99, true);
  const auto other_seed = TokenDataset::open(corpus.dir.path(), 8, 100, true);
  bool seed_matters = false;
  for (uint64_t i = 0; i < 3 * a.num_sequences(); i += 5) {
    EXPECT_EQ(a.sequence(i), b.sequence(i));
    EXPECT_EQ(a.sequence(i), a.sequence(i));
    seed_matters |= a.packed_index(i) != other_seed.packed_index(i);
  }
  EXPECT_TRUE(seed_matters);
}

TEST(TokenDataset, EpochsWrapAround) {
  const Corpus corpus(1000, TokenDType::kUint16);
  const auto dataset = TokenDataset::open(corpus.dir.path(), 16, 3, false);
  const uint64_t n = dataset.num_sequences();
  EXPECT_EQ(dataset.sequence(2 * n + 3), dataset.sequence(3));
  EXPECT_EQ(dataset.packed_index(5 * n + 1), 1u);
}

TEST(TokenDataset, DocumentIdsMarkEveryBoundary) {
  const Corpus corpus(1000, TokenDType::kUint16);
  const int64_t length = 17;
  const auto dataset = TokenDataset::open(corpus.dir.path(), length, 3, false);
  for (uint64_t i = 0; i < dataset.num_sequences(); ++i) {
    const auto packed = dataset.sequence_with_documents(i);
    ASSERT_EQ(packed.document_ids.size(), packed.tokens.size());
    EXPECT_EQ(packed.tokens, dataset.sequence(i));
    const auto first = corpus.document_of_token.begin() + static_cast<int64_t>(i) * length;
    for (int64_t t = 0; t < length; ++t) {
      // Ids count the documents since the sequence's first token.
      EXPECT_EQ(packed.document_ids[t], first[t] - first[0]) << "sequence " << i << " token " << t;
    }
  }
}

TEST(TokenDataset, TooFewTokensForOneSequenceIsAUserError) {
  const Corpus corpus(1000, TokenDType::kUint16);
  EXPECT_THROW(TokenDataset::open(corpus.dir.path(), 1000, 0, true), UserError);
}

TEST(TokenDataset, TokenBeyondTheShardVocabularyIsAUserError) {
  const ScopedTempDir dir;
  data::write_token_shard(dir.file("a.srtok"), {{1, 2, 3, 4}}, TokenDType::kUint16, 10);
  std::string bytes = testing::read_bytes(dir.file("a.srtok"));
  bytes[40 + 2 * 2] = 12;  // third token := 12 >= vocabulary 10
  testing::write_bytes(dir.file("a.srtok"), bytes);
  const auto dataset = TokenDataset::open(dir.path(), 4, 0, false);
  try {
    dataset.sequence(0);
    FAIL() << "expected a UserError";
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("token 12 at position 2"), std::string::npos)
        << error.what();
  }
}

}  // namespace
}  // namespace sparsering
