// safetensors files (Hugging Face's format, the one PyTorch checkpoints are
// shared in): read and written with the reference implementation's checks.
//
// Layout: an 8-byte little-endian u64 N; N bytes of UTF-8 JSON beginning with
// '{' (writers pad it with spaces to a multiple of 8), an object mapping each
// tensor name to {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin,
// end]}, plus an optional "__metadata__" object of strings; then the byte
// buffer the offsets point into (relative to its start), row-major and
// little-endian. The tensors must tile the buffer exactly: sorted by offset,
// each begins where the previous one ends, the last ends at the end of the
// file, and each spans elements x dtype size bytes.
//
// A file is untrusted input: every malformed one throws FormatError naming
// the file and the problem; nothing is read outside the file's bytes and
// nothing is allocated from a size before it has been checked against them.
// This is the only header of momnet that needs nlohmann-json; momnet.hpp does
// not include it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#include <chrono>

#include <nlohmann/json.hpp>

#include "momnet/shape.hpp"
#include "momnet/tensor.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <unistd.h>
#endif

namespace momnet {

// A file that is not a valid safetensors file (or not one momnet can read).
class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The element types of the format, by their names in the header. F8_E4M3 is
// PyTorch's float8_e4m3fn (no infinities; S.1111.111 is NaN). In the
// reference implementation's order, which its writer sorts the data by
// (descending), and so does ours.
enum class Dtype { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64 };

inline constexpr Dtype all_dtypes[] = {Dtype::BOOL, Dtype::U8,   Dtype::I8,  Dtype::F8_E5M2, Dtype::F8_E4M3,
                                       Dtype::I16,  Dtype::U16,  Dtype::F16, Dtype::BF16,    Dtype::I32,
                                       Dtype::U32,  Dtype::F32,  Dtype::F64, Dtype::I64,     Dtype::U64};

inline const char* dtype_name(Dtype d) noexcept {
  switch (d) {
    case Dtype::BOOL: return "BOOL";
    case Dtype::U8: return "U8";
    case Dtype::I8: return "I8";
    case Dtype::F8_E5M2: return "F8_E5M2";
    case Dtype::F8_E4M3: return "F8_E4M3";
    case Dtype::I16: return "I16";
    case Dtype::U16: return "U16";
    case Dtype::F16: return "F16";
    case Dtype::BF16: return "BF16";
    case Dtype::I32: return "I32";
    case Dtype::U32: return "U32";
    case Dtype::F32: return "F32";
    case Dtype::F64: return "F64";
    case Dtype::I64: return "I64";
    case Dtype::U64: return "U64";
  }
  return "?";
}

inline std::size_t dtype_size(Dtype d) noexcept {
  switch (d) {
    case Dtype::BOOL: case Dtype::U8: case Dtype::I8: case Dtype::F8_E5M2: case Dtype::F8_E4M3: return 1;
    case Dtype::I16: case Dtype::U16: case Dtype::F16: case Dtype::BF16: return 2;
    case Dtype::I32: case Dtype::U32: case Dtype::F32: return 4;
    case Dtype::F64: case Dtype::I64: case Dtype::U64: return 8;
  }
  return 0;
}

inline bool is_floating(Dtype d) noexcept {
  return d == Dtype::F8_E5M2 || d == Dtype::F8_E4M3 || d == Dtype::F16 || d == Dtype::BF16 || d == Dtype::F32 ||
         d == Dtype::F64;
}

// The dtype momnet writes a C++ type as.
template <class T>
constexpr Dtype dtype_of() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, std::int64_t>,
                "momnet::dtype_of: momnet writes float, double and std::int64_t values");
  if constexpr (std::is_same_v<T, float>) return Dtype::F32;
  else if constexpr (std::is_same_v<T, double>) return Dtype::F64;
  else return Dtype::I64;
}

namespace detail {

// Little-endian loads and stores by shifts: correct on any host (the format
// is little-endian whatever the machine), and compiled to plain moves on a
// little-endian one.
template <class U>
U load_le(const std::uint8_t* p) noexcept {
  U v = 0;
  for (std::size_t i = 0; i < sizeof(U); ++i) v = static_cast<U>(v | (static_cast<U>(p[i]) << (8 * i)));
  return v;
}
template <class U>
void store_le(U v, std::uint8_t* p) noexcept {
  for (std::size_t i = 0; i < sizeof(U); ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}

// A small IEEE-style binary float (F16: 5 exponent bits, 10 mantissa bits;
// BF16: 8, 7; F8_E5M2: 5, 2; F8_E4M3: 4, 3 without infinities) as a double:
// exact, every such value is a double (and a float).
inline double decode_small_float(std::uint32_t bits, int exponent_bits, int mantissa_bits, bool finite_only) noexcept {
  const std::uint32_t mantissa = bits & ((1u << mantissa_bits) - 1u);
  const std::uint32_t exponent = (bits >> mantissa_bits) & ((1u << exponent_bits) - 1u);
  const bool negative = ((bits >> (exponent_bits + mantissa_bits)) & 1u) != 0;
  const int bias = (1 << (exponent_bits - 1)) - 1;
  const std::uint32_t top = (1u << exponent_bits) - 1u;
  double value;
  if (!finite_only && exponent == top) {
    value = mantissa == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  } else if (finite_only && exponent == top && mantissa == (1u << mantissa_bits) - 1u) {
    value = std::numeric_limits<double>::quiet_NaN();
  } else if (exponent == 0) {
    value = std::ldexp(static_cast<double>(mantissa), 1 - bias - mantissa_bits);
  } else {
    value = std::ldexp(static_cast<double>(mantissa | (1u << mantissa_bits)),
                       static_cast<int>(exponent) - bias - mantissa_bits);
  }
  return negative ? -value : value;
}

// x rounded to the nearest such float (ties to even), overflowing to
// infinity; NaN stays a (quiet) NaN. From double in one rounding, so a float
// or a double source is rounded once.
inline std::uint32_t encode_small_float(double x, int exponent_bits, int mantissa_bits) noexcept {
  const std::uint32_t sign = std::signbit(x) ? 1u << (exponent_bits + mantissa_bits) : 0u;
  const std::uint32_t top = (1u << exponent_bits) - 1u;
  const std::uint32_t infinity = top << mantissa_bits;
  if (std::isnan(x)) return sign | infinity | (1u << (mantissa_bits - 1));
  const double a = std::fabs(x);
  if (std::isinf(a)) return sign | infinity;
  if (a == 0.0) return sign;
  const int bias = (1 << (exponent_bits - 1)) - 1;
  int e2 = 0;
  std::frexp(a, &e2);
  const int exponent = e2 - 1;  // a = 1.m x 2^exponent
  if (exponent > bias) return sign | infinity;
  // The weight of the last mantissa bit: a / 2^quantum is an integer when a is
  // representable, exact in double (a power-of-two scaling).
  const int quantum = std::max(exponent, 1 - bias) - mantissa_bits;
  const double scaled = std::ldexp(a, -quantum);
  double n = std::floor(scaled);
  const double rest = scaled - n;
  if (rest > 0.5 || (rest == 0.5 && std::fmod(n, 2.0) != 0.0)) n += 1.0;
  // Subnormals are n itself; normals add the exponent field, and a mantissa
  // rounded up to 2^(m+1) carries into it (n == 2^m for a subnormal likewise
  // becomes the smallest normal).
  const std::uint32_t bits =
      exponent < 1 - bias
          ? static_cast<std::uint32_t>(n)
          : (static_cast<std::uint32_t>(exponent + bias - 1) << mantissa_bits) + static_cast<std::uint32_t>(n);
  return bits >= infinity ? sign | infinity : sign | bits;
}

inline double f16_to_double(std::uint16_t bits) noexcept { return decode_small_float(bits, 5, 10, false); }
inline double bf16_to_double(std::uint16_t bits) noexcept { return decode_small_float(bits, 8, 7, false); }
inline std::uint16_t double_to_f16(double x) noexcept { return static_cast<std::uint16_t>(encode_small_float(x, 5, 10)); }
inline std::uint16_t double_to_bf16(double x) noexcept { return static_cast<std::uint16_t>(encode_small_float(x, 8, 7)); }

// Calls f(value) for each of `count` elements of `dtype` at `p`, each value
// as the C++ type that holds it exactly (double for every float dtype, the
// matching integer type, bool). One switch, then a plain loop.
template <class F>
void for_each_value(Dtype dtype, const std::uint8_t* p, std::size_t count, F&& f) {
  switch (dtype) {
    case Dtype::BOOL: for (std::size_t i = 0; i < count; ++i) f(p[i] != 0); return;
    case Dtype::U8: for (std::size_t i = 0; i < count; ++i) f(p[i]); return;
    case Dtype::I8: for (std::size_t i = 0; i < count; ++i) f(static_cast<std::int8_t>(p[i])); return;
    case Dtype::F8_E5M2: for (std::size_t i = 0; i < count; ++i) f(decode_small_float(p[i], 5, 2, false)); return;
    case Dtype::F8_E4M3: for (std::size_t i = 0; i < count; ++i) f(decode_small_float(p[i], 4, 3, true)); return;
    case Dtype::I16:
      for (std::size_t i = 0; i < count; ++i) f(static_cast<std::int16_t>(load_le<std::uint16_t>(p + 2 * i)));
      return;
    case Dtype::U16: for (std::size_t i = 0; i < count; ++i) f(load_le<std::uint16_t>(p + 2 * i)); return;
    case Dtype::F16: for (std::size_t i = 0; i < count; ++i) f(f16_to_double(load_le<std::uint16_t>(p + 2 * i))); return;
    case Dtype::BF16: for (std::size_t i = 0; i < count; ++i) f(bf16_to_double(load_le<std::uint16_t>(p + 2 * i))); return;
    case Dtype::I32:
      for (std::size_t i = 0; i < count; ++i) f(static_cast<std::int32_t>(load_le<std::uint32_t>(p + 4 * i)));
      return;
    case Dtype::U32: for (std::size_t i = 0; i < count; ++i) f(load_le<std::uint32_t>(p + 4 * i)); return;
    case Dtype::F32:
      for (std::size_t i = 0; i < count; ++i) {
        const std::uint32_t bits = load_le<std::uint32_t>(p + 4 * i);
        float v;
        std::memcpy(&v, &bits, sizeof v);
        f(v);
      }
      return;
    case Dtype::F64:
      for (std::size_t i = 0; i < count; ++i) {
        const std::uint64_t bits = load_le<std::uint64_t>(p + 8 * i);
        double v;
        std::memcpy(&v, &bits, sizeof v);
        f(v);
      }
      return;
    case Dtype::I64:
      for (std::size_t i = 0; i < count; ++i) f(static_cast<std::int64_t>(load_le<std::uint64_t>(p + 8 * i)));
      return;
    case Dtype::U64: for (std::size_t i = 0; i < count; ++i) f(load_le<std::uint64_t>(p + 8 * i)); return;
  }
}

inline std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// The number of elements of `shape`, or false when it does not fit in 64 bits
// (a shape with a zero dimension has none, whatever the others).
inline bool element_count(const std::vector<std::int64_t>& shape, std::uint64_t& count) noexcept {
  count = 1;
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) {
    count = 0;
    return true;
  }
  for (std::int64_t d : shape) {
    const auto u = static_cast<std::uint64_t>(d);
    if (count > std::numeric_limits<std::uint64_t>::max() / u) return false;
    count *= u;
  }
  return true;
}

}  // namespace detail

// A tensor's entry in the header. `begin` and `end` are its data_offsets:
// bytes [begin, end) of the buffer after the header.
struct TensorEntry {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;

  std::size_t elements() const noexcept { return static_cast<std::size_t>((end - begin) / dtype_size(dtype)); }
  std::size_t bytes() const noexcept { return static_cast<std::size_t>(end - begin); }
};

// A tensor's bytes, as stored (little-endian, row-major).
struct ByteView {
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;
};

// A whole safetensors file in memory, checked when it is read.
class SafetensorsFile {
 public:
  // The largest header accepted, as the reference implementation (a header
  // that size holds millions of tensors; a larger one is an attack or noise).
  static constexpr std::uint64_t max_header_bytes = 100'000'000;

  // Reads and checks the file at `path`.
  explicit SafetensorsFile(const std::string& path) : label_(path) {
    std::error_code error;
    const std::uintmax_t size = std::filesystem::file_size(path, error);
    if (error) throw std::runtime_error("momnet::SafetensorsFile: cannot read '" + path + "': " + error.message());
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("momnet::SafetensorsFile: cannot open '" + path + "'");
    bytes_.resize(static_cast<std::size_t>(size));
    in.read(reinterpret_cast<char*>(bytes_.data()), static_cast<std::streamsize>(size));
    if (static_cast<std::uintmax_t>(in.gcount()) != size) {
      throw std::runtime_error("momnet::SafetensorsFile: cannot read '" + path + "': read " +
                               std::to_string(in.gcount()) + " of " + std::to_string(size) + " bytes");
    }
    check();
  }

  // Checks `size` bytes at `data` (copied), naming them `label` in errors.
  static SafetensorsFile parse(const std::uint8_t* data, std::size_t size, const std::string& label) {
    return SafetensorsFile(std::vector<std::uint8_t>(data, data + size), label);
  }

  const std::string& label() const noexcept { return label_; }
  // Every tensor, ordered by its offset in the buffer.
  const std::vector<TensorEntry>& entries() const noexcept { return entries_; }
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }

  // The entry of tensor `name`; std::out_of_range if there is none.
  const TensorEntry& entry(const std::string& name) const {
    const auto it = index_.find(name);
    if (it == index_.end()) {
      throw std::out_of_range("momnet::SafetensorsFile: no tensor '" + name + "' in '" + label_ + "'");
    }
    return entries_[it->second];
  }

  ByteView bytes(const std::string& name) const {
    const TensorEntry& e = entry(name);
    return ByteView{bytes_.data() + data_start_ + e.begin, e.bytes()};
  }

  // Tensor `name` converted to T: a float type from any dtype (F16, BF16 and
  // F8 exactly), an integer type from an integer dtype whose values it holds.
  // std::invalid_argument for a rank above momnet's 4.
  template <class T>
  Tensor<T> tensor(const std::string& name) const {
    const TensorEntry& e = entry(name);
    if (e.shape.size() > static_cast<std::size_t>(Shape::max_rank)) {
      throw std::invalid_argument("momnet::SafetensorsFile::tensor: '" + name + "' in '" + label_ +
                                  "' has shape " + detail::shape_string(e.shape) + " of rank " +
                                  std::to_string(e.shape.size()) + "; momnet tensors have rank at most 4");
    }
    Tensor<T> t(Shape(std::vector<Eigen::Index>(e.shape.begin(), e.shape.end())));
    copy_to(name, t.data(), static_cast<std::size_t>(t.size()));
    return t;
  }

  // Tensor `name` converted into `count` elements at `out` (its element
  // count); the conversions and errors of tensor<T>().
  template <class T>
  void copy_to(const std::string& name, T* out, std::size_t count) const {
    static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>,
                  "momnet::SafetensorsFile: tensors convert to float and integer types");
    const TensorEntry& e = entry(name);
    const std::string where = "momnet::SafetensorsFile: tensor '" + name + "' in '" + label_ + "'";
    if (count != e.elements()) {
      throw std::invalid_argument(where + " has " + std::to_string(e.elements()) + " elements, not " +
                                  std::to_string(count));
    }
    const std::uint8_t* p = bytes_.data() + data_start_ + e.begin;
    if constexpr (std::is_floating_point_v<T>) {
      detail::for_each_value(e.dtype, p, count, [&out](auto v) { *out++ = static_cast<T>(v); });
    } else {
      if (is_floating(e.dtype)) {
        throw std::invalid_argument(where + " is " + dtype_name(e.dtype) + ", not an integer dtype");
      }
      // Every value is checked before anything is written.
      detail::for_each_value(e.dtype, p, count, [&](auto v) {
        using V = decltype(v);
        bool fits;
        if constexpr (std::is_same_v<V, bool>) {
          fits = true;
        } else if constexpr (std::is_floating_point_v<V>) {
          fits = false;  // float dtypes were refused above
        } else if constexpr (std::is_signed_v<V> == std::is_signed_v<T>) {
          fits = v >= std::numeric_limits<T>::min() && v <= std::numeric_limits<T>::max();
        } else if constexpr (std::is_signed_v<V>) {
          fits = v >= 0 && static_cast<std::make_unsigned_t<V>>(v) <= std::numeric_limits<T>::max();
        } else {
          fits = v <= static_cast<std::make_unsigned_t<T>>(std::numeric_limits<T>::max());
        }
        if (!fits) {
          throw std::range_error(where + " holds " + std::to_string(v) + ", outside the range of the " +
                                 std::to_string(8 * sizeof(T)) + "-bit integer type it is read as");
        }
      });
      detail::for_each_value(e.dtype, p, count, [&out](auto v) { *out++ = static_cast<T>(v); });
    }
  }

  // Tensor `name` (an integer dtype) as a flat list.
  std::vector<std::int64_t> int64s(const std::string& name) const {
    std::vector<std::int64_t> values(entry(name).elements());
    copy_to(name, values.data(), values.size());
    return values;
  }

 private:
  SafetensorsFile(std::vector<std::uint8_t> bytes, std::string label)
      : label_(std::move(label)), bytes_(std::move(bytes)) {
    check();
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError("safetensors file '" + label_ + "': " + what);
  }

  // A JSON value for a message, cut short.
  static std::string show(const nlohmann::json& value) {
    std::string s = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    return s.size() > 60 ? s.substr(0, 57) + "..." : s;
  }

  void check() {
    if (bytes_.size() < 8) {
      fail("has " + std::to_string(bytes_.size()) + " bytes, fewer than the 8 of the header length");
    }
    const std::uint64_t n = detail::load_le<std::uint64_t>(bytes_.data());
    if (n > max_header_bytes) {
      fail("header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(max_header_bytes) +
           " bytes");
    }
    if (n > bytes_.size() - 8) {
      fail("header length " + std::to_string(n) + " runs past the end of the file (" +
           std::to_string(bytes_.size() - 8) + " bytes follow the length)");
    }
    data_start_ = 8 + static_cast<std::size_t>(n);
    const std::uint8_t* first = bytes_.data() + 8;
    if (n == 0 || first[0] != '{') {
      fail(std::string("header must be a JSON object beginning with '{'") +
           (n == 0 ? ", but it is empty" : ", but it begins with byte " + std::to_string(first[0])));
    }
    // nlohmann stops at a NUL byte as at the end of its input, which would
    // let anything follow one; JSON never holds a raw NUL.
    if (const void* nul = std::memchr(first, 0, static_cast<std::size_t>(n))) {
      fail("header holds a NUL byte at offset " +
           std::to_string(static_cast<const std::uint8_t*>(nul) - first) + " (it must be UTF-8 JSON text)");
    }
    const nlohmann::json header = parse_header(first, first + n);
    std::vector<TensorEntry> entries;
    for (const auto& item : header.items()) {
      if (item.key() == "__metadata__") {
        read_metadata(item.value());
      } else {
        entries.push_back(read_entry(item.key(), item.value()));
      }
    }
    check_layout(entries);
    entries_ = std::move(entries);
    for (std::size_t i = 0; i < entries_.size(); ++i) index_.emplace(entries_[i].name, i);
  }

  // The header as JSON, refusing duplicate keys (nlohmann keeps the last one
  // silently; the format forbids them) and nesting deeper than the format's
  // (header, entry, shape), which also bounds the work a hostile header costs.
  nlohmann::json parse_header(const std::uint8_t* first, const std::uint8_t* last) const {
    std::vector<std::set<std::string>> keys;  // one set per open object
    const auto callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
      using Event = nlohmann::json::parse_event_t;
      if ((event == Event::object_start || event == Event::array_start) && depth >= 3) {
        fail("header nests JSON deeper than the format's three levels");
      }
      if (event == Event::object_start) keys.emplace_back();
      if (event == Event::object_end) keys.pop_back();
      if (event == Event::key && !keys.empty()) {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (!keys.back().insert(key).second) {
          fail("header repeats the key \"" + key + "\"" + (depth == 1 ? "" : " inside an entry"));
        }
      }
      return true;
    };
    try {
      return nlohmann::json::parse(first, last, callback);
    } catch (const nlohmann::json::exception& e) {
      fail(std::string("header is not valid JSON: ") + e.what());
    }
  }

  void read_metadata(const nlohmann::json& value) {
    if (value.is_null()) return;  // as the reference: an absent map
    if (!value.is_object()) fail("\"__metadata__\" must be an object of strings, got " + show(value));
    for (const auto& item : value.items()) {
      if (!item.value().is_string()) {
        fail("\"__metadata__\" must map strings to strings, but \"" + item.key() + "\" maps to " +
             show(item.value()));
      }
      metadata_.emplace(item.key(), item.value().get<std::string>());
    }
  }

  // A non-negative integer that fits in an int64 (a dimension or an offset).
  std::uint64_t read_count(const nlohmann::json& value, const std::string& where) const {
    if (!value.is_number_integer()) fail(where + " must be a non-negative integer, got " + show(value));
    if (!value.is_number_unsigned() && value.get<std::int64_t>() < 0) {
      fail(where + " must be a non-negative integer, got " + show(value));
    }
    const auto v = value.get<std::uint64_t>();
    if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      fail(where + " is " + std::to_string(v) + ", beyond the largest 64-bit signed integer");
    }
    return v;
  }

  TensorEntry read_entry(const std::string& name, const nlohmann::json& value) const {
    const std::string where = "tensor \"" + name + "\"";
    if (!value.is_object()) fail(where + " must be an object with dtype, shape and data_offsets, got " + show(value));
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
      if (!value.contains(field)) fail(where + " has no \"" + field + "\"");
    }
    TensorEntry e;
    e.name = name;
    const nlohmann::json& dtype = value["dtype"];
    if (!dtype.is_string()) fail(where + ": \"dtype\" must be a string, got " + show(dtype));
    const std::string& dtype_text = dtype.get_ref<const std::string&>();
    const auto known = std::find_if(std::begin(all_dtypes), std::end(all_dtypes),
                                    [&](Dtype d) { return dtype_text == dtype_name(d); });
    if (known == std::end(all_dtypes)) {
      std::string list;
      for (Dtype d : all_dtypes) list += (list.empty() ? "" : ", ") + std::string(dtype_name(d));
      fail(where + " has unknown dtype \"" + dtype_text + "\" (momnet reads " + list + ")");
    }
    e.dtype = *known;

    const nlohmann::json& shape = value["shape"];
    if (!shape.is_array()) fail(where + ": \"shape\" must be an array of dimensions, got " + show(shape));
    for (std::size_t i = 0; i < shape.size(); ++i) {
      e.shape.push_back(static_cast<std::int64_t>(read_count(shape[i], where + ": dimension " + std::to_string(i))));
    }

    const nlohmann::json& offsets = value["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2) {
      fail(where + ": \"data_offsets\" must be an array [begin, end], got " + show(offsets));
    }
    e.begin = read_count(offsets[0], where + ": data_offsets begin");
    e.end = read_count(offsets[1], where + ": data_offsets end");
    const std::uint64_t buffer = bytes_.size() - data_start_;
    if (e.begin > e.end) {
      fail(where + " has data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
           "]: begin is after end");
    }
    if (e.end > buffer) {
      fail(where + " has data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
           "] outside the " + std::to_string(buffer) + "-byte data buffer");
    }
    std::uint64_t count = 0;
    if (!detail::element_count(e.shape, count) || count > std::numeric_limits<std::uint64_t>::max() / dtype_size(e.dtype)) {
      fail(where + " has shape " + detail::shape_string(e.shape) + ", whose size in bytes overflows 64 bits");
    }
    if (count * dtype_size(e.dtype) != e.end - e.begin) {
      fail(where + " spans " + std::to_string(e.end - e.begin) + " bytes, but shape " +
           detail::shape_string(e.shape) + " of " + dtype_name(e.dtype) + " needs " +
           std::to_string(count * dtype_size(e.dtype)) + " (" + std::to_string(count) + " x " +
           std::to_string(dtype_size(e.dtype)) + ")");
    }
    return e;
  }

  // The tensors must tile the buffer: in offset order (the header's order is
  // free), each starting where the previous ends, the last at its end.
  void check_layout(std::vector<TensorEntry>& entries) const {
    std::sort(entries.begin(), entries.end(), [](const TensorEntry& a, const TensorEntry& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    std::uint64_t position = 0;
    for (std::size_t i = 0; i < entries.size(); ++i) {
      const TensorEntry& e = entries[i];
      if (e.begin < position) {
        fail("tensor \"" + e.name + "\" (bytes " + std::to_string(e.begin) + " to " + std::to_string(e.end) +
             ") overlaps tensor \"" + entries[i - 1].name + "\" (bytes " + std::to_string(entries[i - 1].begin) +
             " to " + std::to_string(entries[i - 1].end) + ")");
      }
      if (e.begin > position) {
        fail("bytes " + std::to_string(position) + " to " + std::to_string(e.begin) +
             " of the data buffer belong to no tensor (a gap before tensor \"" + e.name + "\")");
      }
      position = e.end;
    }
    const std::uint64_t buffer = bytes_.size() - data_start_;
    if (position != buffer) {
      fail("the data buffer has " + std::to_string(buffer - position) + " bytes beyond the last tensor (" +
           std::to_string(buffer) + " bytes, tensors cover " + std::to_string(position) + ")");
    }
  }

  std::string label_;
  std::vector<std::uint8_t> bytes_;  // the whole file
  std::size_t data_start_ = 0;       // 8 + header length
  std::vector<TensorEntry> entries_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: its name, shape and the dtype it is stored as, with
// values either in memory as float, double or std::int64_t (converted on
// writing: a float type may be stored as F16, BF16, F32 or F64, int64 as
// I64), or as bytes already in the file's layout (raw()). Refers to the
// values; they must outlive the write.
class NamedTensor {
 public:
  template <class T>
  NamedTensor(std::string name, const Tensor<T>& tensor) : NamedTensor(std::move(name), tensor, dtype_of<T>()) {}
  template <class T>
  NamedTensor(std::string name, const Tensor<T>& tensor, Dtype stored)
      : NamedTensor(std::move(name), tensor.data(), tensor.shape(), stored) {}
  template <class T>
  NamedTensor(std::string name, const T* values, const Shape& shape, Dtype stored = dtype_of<T>())
      : name_(std::move(name)), stored_(stored), source_(dtype_of<T>()), values_(values) {
    for (Eigen::Index d : shape.dims()) shape_.push_back(static_cast<std::int64_t>(d));
  }
  // Bytes as the file holds them: `bytes` must be elements x dtype size long.
  static NamedTensor raw(std::string name, Dtype dtype, std::vector<std::int64_t> shape, ByteView bytes) {
    NamedTensor t;
    t.name_ = std::move(name);
    t.shape_ = std::move(shape);
    t.stored_ = dtype;
    t.raw_ = true;
    t.values_ = bytes.data;
    t.raw_size_ = bytes.size;
    return t;
  }

  const std::string& name() const noexcept { return name_; }
  const std::vector<std::int64_t>& shape() const noexcept { return shape_; }
  Dtype dtype() const noexcept { return stored_; }

 private:
  NamedTensor() = default;

  template <class Sink>
  friend void write_safetensors_to(Sink&, const std::vector<NamedTensor>&, const std::map<std::string, std::string>&,
                                   const std::string&);

  std::string name_;
  std::vector<std::int64_t> shape_;
  Dtype stored_ = Dtype::F32;
  Dtype source_ = Dtype::F32;  // F32, F64 or I64: the C++ type of values_, unless raw_
  bool raw_ = false;
  const void* values_ = nullptr;
  std::size_t raw_size_ = 0;
};

// Writes `tensors` and `metadata` as safetensors bytes to `sink(const
// std::uint8_t*, std::size_t)`, byte for byte as Python's safetensors does:
// compact JSON padded with spaces to a multiple of 8, the data ordered by
// dtype (largest elements first, so each tensor is aligned to its element
// size), then name. `who` names the caller in std::invalid_argument messages.
template <class Sink>
void write_safetensors_to(Sink& sink, const std::vector<NamedTensor>& tensors,
                          const std::map<std::string, std::string>& metadata, const std::string& who) {
  std::vector<const NamedTensor*> order;
  std::vector<std::uint64_t> sizes;
  std::set<std::string> names;
  for (const NamedTensor& t : tensors) {
    const std::string where = who + ": tensor '" + t.name_ + "'";
    if (t.name_ == "__metadata__") throw std::invalid_argument(where + ": the name is reserved for metadata");
    if (!names.insert(t.name_).second) throw std::invalid_argument(where + " appears twice");
    for (std::int64_t d : t.shape_) {
      if (d < 0) throw std::invalid_argument(where + " has negative dimension in shape " + detail::shape_string(t.shape_));
    }
    std::uint64_t count = 0;
    if (!detail::element_count(t.shape_, count) || count > max_allocation_bytes / 8) {
      throw std::invalid_argument(where + " has shape " + detail::shape_string(t.shape_) + ", too large to write");
    }
    if (t.raw_) {
      if (t.raw_size_ != count * dtype_size(t.stored_)) {
        throw std::invalid_argument(where + " has " + std::to_string(t.raw_size_) + " bytes; shape " +
                                    detail::shape_string(t.shape_) + " of " + dtype_name(t.stored_) + " needs " +
                                    std::to_string(count * dtype_size(t.stored_)));
      }
    } else {
      const bool ok = t.source_ == Dtype::I64
                          ? t.stored_ == Dtype::I64
                          : (t.stored_ == Dtype::F16 || t.stored_ == Dtype::BF16 || t.stored_ == Dtype::F32 ||
                             t.stored_ == Dtype::F64);
      if (!ok) {
        throw std::invalid_argument(where + ": values of " + (t.source_ == Dtype::I64 ? "int64" : "a float type") +
                                    " cannot be stored as " + dtype_name(t.stored_));
      }
    }
    order.push_back(&t);
  }
  // Dtype's order is the reference's (element sizes never decrease along it).
  std::sort(order.begin(), order.end(), [](const NamedTensor* a, const NamedTensor* b) {
    return a->stored_ != b->stored_ ? a->stored_ > b->stored_ : a->name_ < b->name_;
  });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const NamedTensor* t : order) {
    std::uint64_t count = 0;
    detail::element_count(t->shape_, count);
    const std::uint64_t end = offset + count * dtype_size(t->stored_);
    nlohmann::ordered_json entry;
    entry["dtype"] = dtype_name(t->stored_);
    entry["shape"] = t->shape_;
    entry["data_offsets"] = {offset, end};
    header[t->name_] = std::move(entry);
    offset = end;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(who + ": a tensor name or metadata string is not valid UTF-8 (" + e.what() + ")");
  }
  text.append((8 - text.size() % 8) % 8, ' ');

  std::uint8_t length[8];
  detail::store_le<std::uint64_t>(text.size(), length);
  sink(length, 8);
  sink(reinterpret_cast<const std::uint8_t*>(text.data()), text.size());

  // Values are converted a chunk at a time into a small buffer.
  std::vector<std::uint8_t> chunk(1 << 16);
  for (const NamedTensor* t : order) {
    std::uint64_t count = 0;
    detail::element_count(t->shape_, count);
    const std::size_t size = dtype_size(t->stored_);
    if (t->raw_) {
      sink(static_cast<const std::uint8_t*>(t->values_), t->raw_size_);
      continue;
    }
    const std::size_t per_chunk = chunk.size() / size;
    for (std::size_t first = 0; first < count; first += per_chunk) {
      const std::size_t n = std::min<std::size_t>(per_chunk, static_cast<std::size_t>(count) - first);
      std::uint8_t* out = chunk.data();
      for (std::size_t i = first; i < first + n; ++i, out += size) {
        double v = 0.0;
        if (t->source_ == Dtype::I64) {
          detail::store_le(static_cast<std::uint64_t>(static_cast<const std::int64_t*>(t->values_)[i]), out);
          continue;
        }
        v = t->source_ == Dtype::F32 ? static_cast<double>(static_cast<const float*>(t->values_)[i])
                                     : static_cast<const double*>(t->values_)[i];
        if (t->stored_ == Dtype::F64) {
          std::uint64_t bits;
          std::memcpy(&bits, &v, sizeof bits);
          detail::store_le(bits, out);
        } else if (t->stored_ == Dtype::F32) {
          const float f = static_cast<float>(v);
          std::uint32_t bits;
          std::memcpy(&bits, &f, sizeof bits);
          detail::store_le(bits, out);
        } else {
          detail::store_le(t->stored_ == Dtype::F16 ? detail::double_to_f16(v) : detail::double_to_bf16(v), out);
        }
      }
      sink(chunk.data(), n * size);
    }
  }
}

// The bytes of a safetensors file holding `tensors` and `metadata`.
inline std::vector<std::uint8_t> serialize_safetensors(const std::vector<NamedTensor>& tensors,
                                                       const std::map<std::string, std::string>& metadata = {}) {
  std::vector<std::uint8_t> out;
  auto sink = [&out](const std::uint8_t* p, std::size_t n) { out.insert(out.end(), p, p + n); };
  write_safetensors_to(sink, tensors, metadata, "momnet::serialize_safetensors");
  return out;
}

namespace detail {
// Flushes a written file to the disk, so that the rename that follows never
// publishes a file whose data a power cut could still lose.
inline void sync_file(const std::string& path) {
#if defined(__unix__) || defined(__APPLE__)
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd >= 0) {
    (void)::fsync(fd);
    (void)::close(fd);
  }
#else
  (void)path;
#endif
}
}  // namespace detail

// Writes a safetensors file at `path` (loadable by Python's safetensors and
// so PyTorch): into a temporary file beside it, renamed over `path` only when
// complete, so a crash never leaves half a checkpoint. std::invalid_argument
// for bad tensors (duplicate or reserved names, dtypes the values cannot be
// stored as), std::runtime_error for I/O failures; `path` is unchanged then.
inline void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
  const std::string who = "momnet::write_safetensors('" + path + "')";
  std::random_device device;
  const auto salt = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
                    (static_cast<std::uint64_t>(device()) << 32);
  char suffix[17];
  for (int i = 0; i < 16; ++i) suffix[i] = "0123456789abcdef"[(salt >> (4 * i)) & 15u];
  suffix[16] = '\0';
  const std::string temporary = path + ".tmp-" + suffix;

  struct Cleanup {
    const std::string& file;
    bool armed = true;
    ~Cleanup() {
      if (armed) {
        std::error_code ignored;
        std::filesystem::remove(file, ignored);
      }
    }
  } cleanup{temporary};

  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(who + ": cannot create '" + temporary + "'");
    auto sink = [&out](const std::uint8_t* p, std::size_t n) {
      out.write(reinterpret_cast<const char*>(p), static_cast<std::streamsize>(n));
    };
    write_safetensors_to(sink, tensors, metadata, who);
    out.flush();
    out.close();
    if (!out) throw std::runtime_error(who + ": writing '" + temporary + "' failed");
  }
  detail::sync_file(temporary);
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) throw std::runtime_error(who + ": cannot rename '" + temporary + "' to it: " + error.message());
  cleanup.armed = false;
}

}  // namespace momnet
