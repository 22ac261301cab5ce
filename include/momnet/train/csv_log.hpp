// A CSV log of a training run, one row per epoch (or per evaluation):
//
//   CsvLog log("run.csv", {"epoch", "lr", "train_loss", "note"});
//   log.row(3, 0.05, 0.4123, "after warm-up");
//
// The file is RFC 4180: fields holding a comma, a double quote, CR or LF are
// enclosed in double quotes with each quote doubled (and an empty field that
// is the only one of its row is written "" so the row is not a blank line,
// which readers skip). Lines end with "\n", not RFC 4180's "\r\n": every CSV
// reader (Python's csv, pandas, R, spreadsheets) accepts both.
//
// Numbers are written in the C locale: integers exactly; floating-point
// values in the shortest form that reads back to the same value (std::to_chars,
// so 0.1 is "0.1" and never 0.10000000000000001); NaN and infinities as
// "nan", "inf", "-inf", which pandas and numpy read back.
//
// Each row is flushed to the operating system as it is written, so a run
// killed between rows leaves a valid file. Mode::append continues an existing
// file (a run resumed from a checkpoint) after checking its header.
#pragma once

#include <charconv>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

namespace momnet {

class CsvLog {
 public:
  using Cell = std::variant<long long, double, std::string>;
  enum class Mode {
    truncate,  // a new file: the header, then the rows
    append,    // after the rows of an existing file with the same header (a new file if none)
  };

  CsvLog(std::string path, std::vector<std::string> columns, Mode mode = Mode::truncate)
      : path_(std::move(path)), columns_(std::move(columns)) {
    if (columns_.empty()) throw std::invalid_argument(where("") + ": needs at least one column");
    for (std::size_t i = 0; i < columns_.size(); ++i) {
      if (columns_[i].empty()) {
        throw std::invalid_argument(where("") + ": column " + std::to_string(i) + " has an empty name");
      }
      for (std::size_t j = 0; j < i; ++j) {
        if (columns_[j] == columns_[i]) {
          throw std::invalid_argument(where("") + ": column '" + columns_[i] + "' appears twice, at " +
                                      std::to_string(j) + " and " + std::to_string(i));
        }
      }
    }
    std::string header;
    for (const std::string& column : columns_) {
      if (!header.empty()) header += ',';
      header += quote(column);
    }
    header += '\n';

    if (mode == Mode::append && append_to_existing(header)) return;
    open(std::ios::out | std::ios::trunc);
    write(header);
  }

  // One row: numbers (integers, floating point, bool as true/false), strings
  // (std::string, string_view, const char*) or Cells; one per column.
  template <class... Values>
  void row(const Values&... values) {
    check_count(sizeof...(Values));
    std::string line;
    (append_field(line, field(values)), ...);
    line += '\n';
    write(line);
  }
  void row(const std::vector<Cell>& cells) {
    check_count(cells.size());
    std::string line;
    for (const Cell& cell : cells) append_field(line, field(cell));
    line += '\n';
    write(line);
  }

  const std::string& path() const noexcept { return path_; }
  const std::vector<std::string>& columns() const noexcept { return columns_; }

  // `text` as an RFC 4180 field: quoted when it holds , " CR or LF.
  static std::string quote(std::string_view text) {
    if (text.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(text);
    std::string quoted = "\"";
    for (char c : text) {
      if (c == '"') quoted += '"';
      quoted += c;
    }
    return quoted + '"';
  }

  // The shortest decimal that reads back to `value` (in its own type).
  template <class F>
  static std::string number(F value) {
    static_assert(std::is_floating_point_v<F>, "momnet::CsvLog::number: a floating-point type");
    if (std::isnan(value)) return "nan";
    if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
    char text[64];
    // long double to_chars is not everywhere; a double keeps any value a log shows.
    using Written = std::conditional_t<std::is_same_v<F, float>, float, double>;
    const std::to_chars_result r = std::to_chars(text, text + sizeof text, static_cast<Written>(value));
    return std::string(text, r.ptr);
  }

 private:
  std::string where(const char* function) const {
    return std::string("momnet::CsvLog") + function + " ('" + path_ + "')";
  }

  void check_count(std::size_t count) const {
    if (count != columns_.size()) {
      throw std::invalid_argument(where("::row") + ": " + std::to_string(count) + " values for " +
                                  std::to_string(columns_.size()) + " columns");
    }
  }

  void append_field(std::string& line, const std::string& text) const {
    const bool first = line.empty();
    if (!first) line += ',';
    // A lone empty field would make a blank line, which readers skip.
    line += text.empty() && columns_.size() == 1 ? std::string("\"\"") : text;
  }

  template <class V>
  static std::string field(const V& value) {
    if constexpr (std::is_same_v<V, Cell>) {
      return std::visit([](const auto& v) { return field(v); }, value);
    } else if constexpr (std::is_same_v<V, bool>) {
      return value ? "true" : "false";
    } else if constexpr (std::is_integral_v<V> && !std::is_same_v<V, char>) {
      return std::to_string(value);
    } else if constexpr (std::is_floating_point_v<V>) {
      return number(value);
    } else if constexpr (std::is_convertible_v<const V&, std::string_view>) {
      return quote(std::string_view(value));
    } else {
      static_assert(std::is_arithmetic_v<V> && !std::is_same_v<V, char>,
                    "momnet::CsvLog::row: a field is a number, a string or a CsvLog::Cell");
      return std::string();
    }
  }

  void open(std::ios::openmode mode) {
    errno = 0;
    file_.open(path_, mode);
    if (!file_.is_open()) {
      const int error = errno;
      throw std::runtime_error(where("") + ": cannot open the file for writing" +
                               (error != 0 ? std::string(": ") + std::strerror(error) : std::string()));
    }
  }

  void write(const std::string& text) {
    file_ << text;
    file_.flush();
    if (!file_) throw std::runtime_error(where("") + ": writing failed (disk full?)");
  }

  // Opens an existing, non-empty file for appending after checking that it
  // starts with `header`; false when there is no such file.
  bool append_to_existing(const std::string& header) {
    std::ifstream existing(path_, std::ios::binary);
    if (!existing) return false;
    const std::string content((std::istreambuf_iterator<char>(existing)), std::istreambuf_iterator<char>());
    if (content.empty()) return false;
    if (content.compare(0, header.size(), header) != 0) {
      const std::string first_line = content.substr(0, content.find('\n'));
      throw std::runtime_error(where("") + ": cannot append: the file's header '" + first_line +
                               "' differs from the columns '" + header.substr(0, header.size() - 1) + "'");
    }
    open(std::ios::out | std::ios::app);
    // A run killed in the middle of a write leaves a partial last line; end
    // it so the new rows start on their own.
    if (content.back() != '\n') write("\n");
    return true;
  }

  std::string path_;
  std::vector<std::string> columns_;
  std::ofstream file_;
};

}  // namespace momnet
