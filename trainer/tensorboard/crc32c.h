// CRC-32C (Castagnoli), the checksum of TFRecord framing, and TensorFlow's masking of it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace sparsering::tensorboard {

// CRC-32C of `data` (reflected polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF).
uint32_t crc32c(std::string_view data);

// TFRecord stores masked CRCs: a CRC computed over data that embeds CRCs is weak, so the stored
// value is rotated and offset (tensorflow/core/lib/hash/crc32c.h, Mask).
uint32_t mask_crc(uint32_t crc);
uint32_t unmask_crc(uint32_t masked);

}  // namespace sparsering::tensorboard
