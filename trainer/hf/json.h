// A small JSON reader and string quoting for the Hugging Face interchange files (safetensors
// headers, config.json, model.safetensors.index.json): enough of RFC 8259 for them, no new
// dependency. Numbers keep their text so 64-bit byte offsets survive without rounding.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace sparsering::trainer {

struct JsonValue {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  bool boolean = false;
  std::string text;  // a string's value, or a number's text
  std::vector<JsonValue> items;
  std::vector<std::pair<std::string, JsonValue>> members;  // in file order

  // The member `key`, or nullptr (also when this is not an object).
  const JsonValue* find(const std::string& key) const;
  bool is_number() const { return kind == Kind::kNumber; }
  double number() const;
  // The number as an integer; throws std::invalid_argument when it has a fraction or exponent.
  int64_t integer() const;
};

// Parses `text`; throws UserError "<source>: malformed JSON (<what>) at byte N".
JsonValue parse_json(const std::string& text, const std::string& source);

// `value` as a JSON string literal, quotes included.
std::string json_quote(const std::string& value);

// The shortest decimal text that reads back as exactly `value` (config.json numbers).
std::string json_number(double value);

}  // namespace sparsering::trainer
