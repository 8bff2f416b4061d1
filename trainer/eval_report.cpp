#include "trainer/eval_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "trainer/hf/json.h"

namespace sparsering::trainer {
namespace {

std::string fixed(double value, int decimals) {
  if (!std::isfinite(value)) return "n/a";
  char text[32];
  std::snprintf(text, sizeof(text), "%.*f", decimals, value);
  return text;
}

std::string padded(const std::string& text, size_t width) {
  return text.size() >= width ? text : std::string(width - text.size(), ' ') + text;
}

// JSON has no NaN or infinity: those become null.
template <typename T, typename Format>
std::string json_list(const std::vector<T>& values, Format format) {
  std::string list = "[";
  for (size_t i = 0; i < values.size(); ++i) list += (i ? ", " : "") + format(values[i]);
  return list + "]";
}

std::string json_grid(const std::vector<std::vector<double>>& grid) {
  return json_list(grid,
                   [](const std::vector<double>& row) { return json_list(row, json_number); });
}

std::string needle_json(const NeedleGrid& grid) {
  return "{\"lengths\": " +
         json_list(grid.lengths, [](int64_t length) { return std::to_string(length); }) +
         ", \"depths\": " + json_list(grid.depths, json_number) +
         ", \"accuracy\": " + json_grid(grid.accuracy) +
         ", \"digit_accuracy\": " + json_grid(grid.digit_accuracy) +
         ", \"mean_accuracy\": " + json_number(grid.mean_accuracy()) + "}";
}

// Red (0) -> yellow (0.5) -> green (1).
void heat_color(double value, unsigned char* rgb) {
  const double v = std::clamp(std::isfinite(value) ? value : 0.0, 0.0, 1.0);
  rgb[0] = static_cast<unsigned char>(std::lround(255 * std::min(1.0, 2 * (1 - v))));
  rgb[1] = static_cast<unsigned char>(std::lround(200 * std::min(1.0, 2 * v)));
  rgb[2] = 40;
}

}  // namespace

double NeedleGrid::mean_accuracy() const {
  double sum = 0;
  size_t cells = 0;
  for (const auto& row : accuracy) {
    for (const double value : row) sum += value;
    cells += row.size();
  }
  return cells ? sum / static_cast<double>(cells) : 0.0;
}

std::string format_eval_table(const EvalReport& report) {
  constexpr size_t kLabelWidth = 22, kColumnWidth = 10;
  std::ostringstream out;
  out << "sparsering: eval of step " << report.step << " (" << report.checkpoint << ")\n"
      << "  data: " << report.data << "\n"
      << "  " << report.sequences << " sequences of " << report.sequence_length
      << " tokens from index " << report.first_sequence_index
      << (report.held_out ? " (held out)" : " (a corpus: may overlap the training data)")
      << ", loss over the " << report.loss_targets << "\n";
  auto row = [&](const std::string& label, auto value_of) {
    out << std::string(label.size() < kLabelWidth ? kLabelWidth - label.size() : 0, ' ') << label;
    for (const auto& result : report.results) out << padded(value_of(result), kColumnWidth);
    out << "\n";
  };
  row("attention", [](const AttentionResult& r) { return r.attention; });
  row("loss", [](const AttentionResult& r) { return fixed(r.loss, 4); });
  row("perplexity", [](const AttentionResult& r) { return fixed(r.perplexity, 3); });
  row("attention density", [](const AttentionResult& r) { return fixed(r.attention_density, 3); });
  if (!report.results.empty() && report.results[0].recall_accuracy) {
    row("recall accuracy", [](const AttentionResult& r) { return fixed(*r.recall_accuracy, 3); });
  }
  if (!report.results.empty() && report.results[0].copy_accuracy) {
    row("copy accuracy", [](const AttentionResult& r) { return fixed(*r.copy_accuracy, 4); });
  }
  if (report.results.empty() || !report.results[0].needle) return out.str();
  row("needle accuracy",
      [](const AttentionResult& r) { return fixed(r.needle->mean_accuracy(), 3); });

  // Depth down, context length across, one block of columns per attention mode.
  const NeedleGrid& shape = *report.results[0].needle;
  constexpr size_t kCellWidth = 8;
  const std::string separator = "  |";
  out << "\nneedle accuracy (passkeys retrieved whole) by needle depth and context length\n"
      << std::string(6, ' ');
  for (const auto& result : report.results) {
    const size_t width = kCellWidth * shape.lengths.size();
    out << separator << padded(result.attention, width);
  }
  out << "\n" << padded("depth", 6);
  for (size_t r = 0; r < report.results.size(); ++r) {
    out << separator;
    for (const int64_t length : shape.lengths) out << padded(std::to_string(length), kCellWidth);
  }
  out << "\n";
  for (size_t d = 0; d < shape.depths.size(); ++d) {
    out << padded(fixed(shape.depths[d], 2), 6);
    for (const auto& result : report.results) {
      out << separator;
      for (size_t l = 0; l < shape.lengths.size(); ++l) {
        out << padded(fixed(result.needle->accuracy[l][d], 2), kCellWidth);
      }
    }
    out << "\n";
  }
  return out.str();
}

std::string eval_json(const EvalReport& report) {
  std::ostringstream json;
  json << "{\"checkpoint\": " << json_quote(report.checkpoint) << ", \"step\": " << report.step
       << ", \"data\": " << json_quote(report.data)
       << ", \"sequence_length\": " << report.sequence_length
       << ", \"sequences\": " << report.sequences
       << ", \"first_sequence_index\": " << report.first_sequence_index
       << ", \"held_out\": " << (report.held_out ? "true" : "false")
       << ", \"loss_targets\": " << json_quote(report.loss_targets) << ", \"attention\": {";
  for (size_t i = 0; i < report.results.size(); ++i) {
    const AttentionResult& r = report.results[i];
    json << (i ? ", " : "") << json_quote(r.attention) << ": {\"loss\": " << json_number(r.loss)
         << ", \"perplexity\": " << json_number(r.perplexity)
         << ", \"attention_density\": " << json_number(r.attention_density);
    if (r.recall_accuracy) json << ", \"recall_accuracy\": " << json_number(*r.recall_accuracy);
    if (r.copy_accuracy) json << ", \"copy_accuracy\": " << json_number(*r.copy_accuracy);
    if (r.needle) json << ", \"needle\": " << needle_json(*r.needle);
    json << "}";
  }
  json << "}}\n";
  return json.str();
}

void write_needle_heatmap(const EvalReport& report, const std::string& path) {
  constexpr int kCell = 32, kGap = 16;
  const NeedleGrid& shape = *report.results.at(0).needle;
  const int columns = static_cast<int>(shape.lengths.size());
  const int rows = static_cast<int>(shape.depths.size());
  const int panels = static_cast<int>(report.results.size());
  const int width = panels * columns * kCell + (panels - 1) * kGap, height = rows * kCell;
  std::vector<unsigned char> pixels(static_cast<size_t>(width) * height * 3, 255);
  for (int p = 0; p < panels; ++p) {
    const NeedleGrid& grid = *report.results[p].needle;
    for (int l = 0; l < columns; ++l) {
      for (int d = 0; d < rows; ++d) {
        unsigned char rgb[3];
        heat_color(grid.accuracy[l][d], rgb);
        // One pixel of white between cells keeps neighbours apart.
        for (int y = d * kCell; y < (d + 1) * kCell - 1; ++y) {
          for (int x = 0; x < kCell - 1; ++x) {
            const size_t at =
                (static_cast<size_t>(y) * width + p * (columns * kCell + kGap) + l * kCell + x) * 3;
            std::copy(rgb, rgb + 3, pixels.begin() + static_cast<std::ptrdiff_t>(at));
          }
        }
      }
    }
  }
  std::ofstream file(path, std::ios::binary);
  file << "P6\n" << width << " " << height << "\n255\n";
  file.write(reinterpret_cast<const char*>(pixels.data()),
             static_cast<std::streamsize>(pixels.size()));
  if (!file) throw std::runtime_error(path + ": cannot write the needle heatmap");
}

}  // namespace sparsering::trainer
