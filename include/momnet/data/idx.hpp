// IDX files, the format of MNIST and Fashion-MNIST: two zero bytes, a type
// code (0x08 ubyte, 0x09 sbyte, 0x0B int16, 0x0C int32, 0x0D float32,
// 0x0E float64), a rank byte, the dimensions as big-endian int32, then the
// elements, row-major and big-endian.
//
// read_idx reads the whole file into memory and checks it before trusting
// anything in it: the header, that the dimensions' product neither overflows
// nor differs from the data actually present, and that nothing follows the
// data. A path ending in ".gz" is gunzipped with zlib when MOMNET_HAVE_ZLIB is
// defined (the momnet::data CMake target links zlib and defines it); without
// it such a path throws. Every error is a std::runtime_error naming the file.
// A gzip stream is never trusted for its size either: the buffer grows only
// as output arrives and never past the size the IDX header gives, so a small
// file that inflates to gigabytes (a gzip bomb) is refused, not read.
//
// parse_idx and serialize_idx are read_idx and write_idx on bytes in memory
// (the same code, which fuzz/idx_fuzzer.cpp exercises).
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#ifdef MOMNET_HAVE_ZLIB
#include <zlib.h>
#endif

namespace momnet {

enum class IdxType : std::uint8_t {
  ubyte = 0x08,
  sbyte = 0x09,
  int16 = 0x0B,
  int32 = 0x0C,
  float32 = 0x0D,
  float64 = 0x0E,
};

inline const char* to_string(IdxType type) noexcept {
  switch (type) {
    case IdxType::ubyte: return "ubyte";
    case IdxType::sbyte: return "sbyte";
    case IdxType::int16: return "int16";
    case IdxType::int32: return "int32";
    case IdxType::float32: return "float32";
    case IdxType::float64: return "float64";
  }
  return "unknown";
}

inline bool is_idx_type(std::uint8_t code) noexcept {
  return code == 0x08 || code == 0x09 || code == 0x0B || code == 0x0C || code == 0x0D || code == 0x0E;
}

// Bytes per element of `type` (0 for a code that is not an IDX type).
inline std::size_t idx_element_size(IdxType type) noexcept {
  switch (type) {
    case IdxType::ubyte:
    case IdxType::sbyte: return 1;
    case IdxType::int16: return 2;
    case IdxType::int32:
    case IdxType::float32: return 4;
    case IdxType::float64: return 8;
  }
  return 0;
}

// The highest rank read or written. The format allows 255; real files have 1
// to 4, and a larger rank byte is far likelier to be a damaged file.
inline constexpr int max_idx_rank = 8;

// The IDX type whose elements are V (uint8_t, int8_t, int16_t, int32_t,
// float, double).
template <class V>
struct idx_type_of;
template <>
struct idx_type_of<std::uint8_t> : std::integral_constant<IdxType, IdxType::ubyte> {};
template <>
struct idx_type_of<std::int8_t> : std::integral_constant<IdxType, IdxType::sbyte> {};
template <>
struct idx_type_of<std::int16_t> : std::integral_constant<IdxType, IdxType::int16> {};
template <>
struct idx_type_of<std::int32_t> : std::integral_constant<IdxType, IdxType::int32> {};
template <>
struct idx_type_of<float> : std::integral_constant<IdxType, IdxType::float32> {};
template <>
struct idx_type_of<double> : std::integral_constant<IdxType, IdxType::float64> {};

// An IDX array in memory. `data` holds the elements in the machine's byte
// order (memcpy one into its element type), converted from the file's
// big-endian order by read_idx and back by write_idx.
struct IdxArray {
  IdxType type = IdxType::ubyte;
  std::vector<std::int64_t> dims;
  std::vector<unsigned char> data;

  // The number of elements the data holds.
  std::size_t size() const noexcept {
    const std::size_t bytes = idx_element_size(type);
    return bytes == 0 ? 0 : data.size() / bytes;
  }

  // Every element converted to V by static_cast (V must hold the values: a
  // float outside an integer type's range is undefined behaviour).
  template <class V>
  std::vector<V> values() const {
    switch (type) {
      case IdxType::ubyte: return convert<std::uint8_t, V>();
      case IdxType::sbyte: return convert<std::int8_t, V>();
      case IdxType::int16: return convert<std::int16_t, V>();
      case IdxType::int32: return convert<std::int32_t, V>();
      case IdxType::float32: return convert<float, V>();
      case IdxType::float64: return convert<double, V>();
    }
    return {};
  }

 private:
  template <class Stored, class V>
  std::vector<V> convert() const {
    std::vector<V> out(data.size() / sizeof(Stored));
    for (std::size_t i = 0; i < out.size(); ++i) {
      Stored s;
      std::memcpy(&s, data.data() + i * sizeof(Stored), sizeof(Stored));
      out[i] = static_cast<V>(s);
    }
    return out;
  }
};

namespace detail {

inline std::string idx_dims_string(const std::vector<std::int64_t>& dims) {
  std::string s = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// The element count of `dims`, or false when it is negative or would exceed
// `limit` (checked as it grows, so it never wraps).
inline bool idx_element_count(const std::vector<std::int64_t>& dims, std::uint64_t limit, std::uint64_t& count) {
  count = 1;
  bool zero = false;
  for (std::int64_t d : dims) {
    if (d < 0) return false;
    zero = zero || d == 0;
  }
  if (zero) {
    count = 0;
    return true;
  }
  for (std::int64_t d : dims) {
    const auto u = static_cast<std::uint64_t>(d);
    if (u > limit / count) return false;
    count *= u;
  }
  return true;
}

// Swaps each element between big-endian and the machine's order, in place.
// Written with shifts and memcpy so that it is right on any host, with the
// (universal) assumption that floats share the integers' byte order.
template <class Word>
void idx_swap_words(unsigned char* bytes, std::size_t count, bool to_big_endian) {
  for (std::size_t i = 0; i < count; ++i) {
    unsigned char* p = bytes + i * sizeof(Word);
    if (to_big_endian) {
      Word w;
      std::memcpy(&w, p, sizeof(Word));
      for (std::size_t b = sizeof(Word); b-- > 0;) {
        p[b] = static_cast<unsigned char>(w & 0xFFu);
        w = static_cast<Word>(w >> 8);
      }
    } else {
      Word w = 0;
      for (std::size_t b = 0; b < sizeof(Word); ++b) w = static_cast<Word>((w << 8) | p[b]);
      std::memcpy(p, &w, sizeof(Word));
    }
  }
}

inline void idx_swap_elements(IdxType type, unsigned char* bytes, std::size_t byte_count, bool to_big_endian) {
  switch (idx_element_size(type)) {
    case 2: idx_swap_words<std::uint16_t>(bytes, byte_count / 2, to_big_endian); break;
    case 4: idx_swap_words<std::uint32_t>(bytes, byte_count / 4, to_big_endian); break;
    case 8: idx_swap_words<std::uint64_t>(bytes, byte_count / 8, to_big_endian); break;
    default: break;
  }
}

inline bool ends_with_gz(const std::string& path) {
  return path.size() >= 3 && path.compare(path.size() - 3, 3, ".gz") == 0;
}

[[noreturn]] inline void throw_file_error(const char* function, const std::string& path, const std::string& what) {
  throw std::runtime_error(std::string(function) + ": '" + path + "': " + what);
}

inline std::string hex_byte(unsigned value) {
  const char digits[] = "0123456789ABCDEF";
  return std::string("0x") + digits[(value >> 4) & 0xF] + digits[value & 0xF];
}

struct FileCloser {
  void operator()(std::FILE* f) const noexcept { std::fclose(f); }
};

inline std::vector<unsigned char> read_file_bytes(const char* function, const std::string& path) {
  // fopen opens a directory on POSIX systems; its reads then fail.
  std::error_code ignored;
  if (std::filesystem::is_directory(path, ignored)) {
    throw_file_error(function, path, std::string("cannot open: ") + std::strerror(EISDIR));
  }
  errno = 0;
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) throw_file_error(function, path, std::string("cannot open: ") + std::strerror(errno));
  // The size is only a hint for the first allocation (one byte more, so that
  // the read meeting the end needs no second one); the loop reads to the end
  // whatever it is.
  std::size_t hint = std::size_t{1} << 16;
  if (std::fseek(file.get(), 0, SEEK_END) == 0) {
    const long end = std::ftell(file.get());
    if (end >= 0 && end < (long{1} << 40)) hint = static_cast<std::size_t>(end) + 1;
    std::rewind(file.get());
  }
  std::vector<unsigned char> bytes(hint);
  std::size_t size = 0;
  for (;;) {
    if (size == bytes.size()) bytes.resize(size * 2);
    const std::size_t got = std::fread(bytes.data() + size, 1, bytes.size() - size, file.get());
    size += got;
    if (got == 0) break;
  }
  if (std::ferror(file.get())) throw_file_error(function, path, std::string("read error: ") + std::strerror(errno));
  bytes.resize(size);
  return bytes;
}

inline void write_file_bytes(const char* function, const std::string& path, const unsigned char* data,
                             std::size_t size) {
  errno = 0;
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) throw_file_error(function, path, std::string("cannot open for writing: ") + std::strerror(errno));
  const bool written = size == 0 || std::fwrite(data, 1, size, file) == size;
  const int write_errno = errno;
  // fclose flushes: a full disk may only show here.
  const bool closed = std::fclose(file) == 0;
  if (!written || !closed) {
    throw_file_error(function, path, std::string("write error: ") + std::strerror(written ? errno : write_errno));
  }
}

// The big-endian 32-bit word at `p`.
inline std::uint32_t idx_word(const unsigned char* p) {
  return std::uint32_t{p[0]} << 24 | std::uint32_t{p[1]} << 16 | std::uint32_t{p[2]} << 8 | p[3];
}

// How many bytes an IDX file must have, told by its first `n` bytes `p`: the
// header's and its data's, or only the first 4 (or the header's) when those
// are invalid, which is enough to report them. 0 while `n` bytes cannot tell.
// The gzip reader keeps no more than this, whatever the stream holds.
inline std::uint64_t idx_file_size(const unsigned char* p, std::size_t n) {
  if (n < 4) return 0;
  if (p[0] != 0 || p[1] != 0 || !is_idx_type(p[2]) || p[3] < 1 || p[3] > max_idx_rank) return 4;
  const std::size_t header = 4 + 4 * static_cast<std::size_t>(p[3]);
  if (n < header) return 0;
  std::vector<std::int64_t> dims;
  for (std::size_t i = 4; i < header; i += 4) {
    const std::uint32_t d = idx_word(p + i);
    if (d > static_cast<std::uint32_t>(std::numeric_limits<std::int32_t>::max())) return header;
    dims.push_back(static_cast<std::int64_t>(d));
  }
  const std::uint64_t element = idx_element_size(static_cast<IdxType>(p[2]));
  const std::uint64_t most = std::numeric_limits<std::uint64_t>::max();
  std::uint64_t count = 0;
  if (!idx_element_count(dims, most / element, count)) return header;
  return count * element > most - header ? most : header + count * element;
}

#ifdef MOMNET_HAVE_ZLIB
struct InflateGuard {
  z_stream* stream;
  ~InflateGuard() { inflateEnd(stream); }
};
struct DeflateGuard {
  z_stream* stream;
  ~DeflateGuard() { deflateEnd(stream); }
};

// zlib counts in uInt (32 bits): larger buffers go in pieces.
inline uInt zlib_chunk(std::size_t remaining) {
  return static_cast<uInt>(std::min<std::size_t>(remaining, std::numeric_limits<uInt>::max()));
}

// The start of a gzip file's contents and their size.
struct Gunzipped {
  std::vector<unsigned char> bytes;  // the first bytes of the contents (all of them unless `keep` said fewer)
  std::uint64_t size = 0;            // the size of the contents
  bool cut = false;                  // whether inflating stopped early: `size` is then only a lower bound
};

// The contents of the gzip data `in` (several concatenated members, as gzip
// itself reads them; zlib checks each member's CRC and length). A gzip bomb
// must not exhaust memory, and the trailer's length is as untrusted as the
// rest, so the buffer only grows as output arrives, up to what `keep(bytes,
// n)` allows once the first `n` bytes tell (0 until then): the rest is only
// counted, and inflating stops once that count passes `keep`'s limit by
// `excess` bytes (a damaged file anyway, not worth reading to its end).
template <class Keep>
Gunzipped gunzip(const char* function, const std::string& path, const unsigned char* in, std::size_t in_size,
                 Keep keep, std::uint64_t excess = std::uint64_t{1} << 20) {
  if (in_size < 2 || in[0] != 0x1F || in[1] != 0x8B) {
    throw_file_error(function, path,
                     "corrupt gzip stream: no gzip header (the file has " + std::to_string(in_size) +
                         " bytes and does not start with 1F 8B)");
  }
  Gunzipped result;
  std::vector<unsigned char>& out = result.bytes;
  out.resize(std::size_t{1} << 12);
  std::vector<unsigned char> discard;
  std::uint64_t limit = 0;  // what `keep` allows, once known
  std::size_t kept = 0;     // the bytes of `out` holding output
  z_stream s{};
  if (inflateInit2(&s, 16 + MAX_WBITS) != Z_OK) throw_file_error(function, path, "zlib's inflateInit2 failed");
  InflateGuard guard{&s};
  std::size_t consumed = 0;
  for (;;) {
    const bool keeping = limit == 0 || kept < limit;
    if (keeping && kept == out.size()) {
      std::uint64_t grown = std::uint64_t{out.size()} * 2;
      if (limit != 0) grown = std::min(grown, limit);
      out.resize(static_cast<std::size_t>(grown));
    }
    if (!keeping && discard.empty()) discard.resize(std::size_t{1} << 16);
    unsigned char* dest = keeping ? out.data() + kept : discard.data();
    s.next_in = const_cast<Bytef*>(in + consumed);
    s.avail_in = zlib_chunk(in_size - consumed);
    s.next_out = dest;
    s.avail_out = zlib_chunk(keeping ? out.size() - kept : discard.size());
    const uInt in_given = s.avail_in, out_given = s.avail_out;
    const int ret = inflate(&s, Z_NO_FLUSH);
    consumed += in_given - s.avail_in;
    const std::size_t got = out_given - s.avail_out;
    result.size += got;
    if (keeping) kept += got;
    if (limit == 0) {
      limit = keep(out.data(), kept);
      // Room for all that is kept, in one allocation without copies, as far
      // as the input can fill it (deflate expands by 1032 at most) and up to
      // 1 GiB (beyond, the buffer doubles): reserving touches no memory, and
      // resizing only follows the output.
      const std::uint64_t room = std::min({limit, std::uint64_t{in_size} * 1032, std::uint64_t{1} << 30});
      if (limit != 0) out.reserve(static_cast<std::size_t>(room));
    }
    if (limit != 0 && result.size > limit && result.size - limit > excess) {
      result.cut = true;
      break;
    }
    if (ret == Z_STREAM_END) {
      if (consumed == in_size) break;
      if (in_size - consumed >= 2 && in[consumed] == 0x1F && in[consumed + 1] == 0x8B) {
        inflateReset(&s);  // another member follows
        continue;
      }
      throw_file_error(function, path,
                       "corrupt gzip stream: " + std::to_string(in_size - consumed) +
                           " bytes of trailing garbage after the gzip data");
    }
    if (ret == Z_OK) continue;
    if (ret == Z_BUF_ERROR && s.avail_out == 0) continue;  // output full: grow or discard, and go on
    if (ret == Z_BUF_ERROR && consumed == in_size) {
      throw_file_error(function, path,
                       "truncated gzip stream: the file ends before the end of its compressed data (" +
                           std::to_string(in_size) + " bytes read)");
    }
    throw_file_error(function, path,
                     "corrupt gzip stream: " +
                         (s.msg != nullptr ? std::string(s.msg) : "zlib error " + std::to_string(ret)));
  }
  out.resize(limit != 0 && kept > limit ? static_cast<std::size_t>(limit) : kept);
  return result;
}

inline std::vector<unsigned char> gzip(const char* function, const std::string& path, const unsigned char* data,
                                       std::size_t size) {
  z_stream s{};
  if (deflateInit2(&s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
    throw_file_error(function, path, "zlib's deflateInit2 failed");
  }
  DeflateGuard guard{&s};
  std::vector<unsigned char> out(size / 2 + 1024);
  std::size_t consumed = 0, produced = 0;
  for (;;) {
    if (produced == out.size()) out.resize(out.size() * 2);
    s.next_in = const_cast<Bytef*>(data + consumed);
    s.avail_in = zlib_chunk(size - consumed);
    const bool last = s.avail_in == size - consumed;
    s.next_out = out.data() + produced;
    s.avail_out = zlib_chunk(out.size() - produced);
    const uInt in_given = s.avail_in, out_given = s.avail_out;
    const int ret = deflate(&s, last ? Z_FINISH : Z_NO_FLUSH);
    consumed += in_given - s.avail_in;
    produced += out_given - s.avail_out;
    if (ret == Z_STREAM_END) break;
    if (ret != Z_OK && ret != Z_BUF_ERROR) {
      throw_file_error(function, path, "zlib's deflate failed with code " + std::to_string(ret));
    }
  }
  out.resize(produced);
  return out;
}
#endif

[[noreturn]] inline void throw_no_zlib(const char* function, const std::string& path) {
  throw_file_error(function, path,
                   "momnet was built without zlib (MOMNET_HAVE_ZLIB is not defined), so it cannot read or write "
                   "gzip files: link the CMake target momnet::data, or decompress the file (gunzip)");
}

// The array an IDX file holds, from `bytes`, the start of its contents (all
// of them, or as much as idx_file_size keeps), and `size`, the contents' size
// (a lower bound when `cut`). Reuses the buffer of `bytes` for the data.
inline IdxArray idx_from_bytes(const char* function, const std::string& path, std::vector<unsigned char> bytes,
                               std::uint64_t size, bool compressed, bool cut) {
  const std::string at_least = cut ? "at least " : "";
  const std::string held = at_least + std::to_string(size) + (compressed ? " bytes once decompressed" : " bytes");
  const auto fail = [&](const std::string& what) { throw_file_error(function, path, what); };

  if (size < 4) fail("truncated header: the file has " + held + ", an IDX header needs at least 4");
  if (bytes[0] != 0 || bytes[1] != 0) {
    const bool gzip_magic = bytes[0] == 0x1F && bytes[1] == 0x8B;
    fail("wrong magic number: the file starts with " + hex_byte(bytes[0]) + " " + hex_byte(bytes[1]) +
         ", an IDX file with two zero bytes" +
         (gzip_magic ? " (this looks gzip-compressed: name it *.gz or gunzip it)" : ""));
  }
  if (!is_idx_type(bytes[2])) {
    fail("wrong magic number: unknown element type code " + hex_byte(bytes[2]) +
         " (IDX types: 0x08 ubyte, 0x09 sbyte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64)");
  }
  const auto type = static_cast<IdxType>(bytes[2]);
  const int rank = bytes[3];
  if (rank < 1 || rank > max_idx_rank) {
    fail("wrong magic number: rank " + std::to_string(rank) + " in the header (momnet reads ranks 1 to " +
         std::to_string(max_idx_rank) + ")");
  }
  const std::size_t header = 4 + 4 * static_cast<std::size_t>(rank);
  if (size < header) {
    fail("truncated header: rank " + std::to_string(rank) + " needs a " + std::to_string(header) +
         "-byte header, the file has " + held);
  }
  IdxArray array;
  array.type = type;
  for (int i = 0; i < rank; ++i) {
    const std::uint32_t d = idx_word(bytes.data() + 4 + 4 * i);
    if (d > static_cast<std::uint32_t>(std::numeric_limits<std::int32_t>::max())) {
      fail("dimension " + std::to_string(i) + " is negative (" +
           std::to_string(static_cast<std::int64_t>(d) - (std::int64_t{1} << 32)) + ")");
    }
    array.dims.push_back(static_cast<std::int64_t>(d));
  }
  const std::size_t element = idx_element_size(type);
  const std::string dims_text = idx_dims_string(array.dims) + " of " + to_string(type);
  std::uint64_t count = 0;
  if (!idx_element_count(array.dims, std::numeric_limits<std::uint64_t>::max() / element, count)) {
    fail("size overflow: dimensions " + dims_text + " hold more elements than a 64-bit count");
  }
  const std::uint64_t expected = count * element;
  const std::uint64_t actual = size - header;
  if (actual < expected) {
    fail("truncated data: dimensions " + dims_text + " need " + std::to_string(expected) +
         " bytes of data after the " + std::to_string(header) + "-byte header, the file has " +
         std::to_string(actual) + (compressed ? " (once decompressed)" : ""));
  }
  if (actual > expected) {
    fail("trailing bytes: dimensions " + dims_text + " need " + std::to_string(expected) +
         " bytes of data after the " + std::to_string(header) + "-byte header, the file has " + at_least +
         std::to_string(actual) + " (" + at_least + std::to_string(actual - expected) + " too many" +
         (compressed ? ", once decompressed)" : ")"));
  }
  // The header goes; the data stays in this buffer (no second copy).
  bytes.erase(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(header));
  idx_swap_elements(type, bytes.data(), bytes.size(), false);
  array.data = std::move(bytes);
  return array;
}

// The array in the IDX file whose bytes are `data`, gunzipped first if `gzip`.
inline IdxArray parse_idx(const char* function, const unsigned char* data, std::size_t size, const std::string& label,
                          bool gzip) {
  if (!gzip) return idx_from_bytes(function, label, std::vector<unsigned char>(data, data + size), size, false, false);
#ifdef MOMNET_HAVE_ZLIB
  Gunzipped contents = gunzip(function, label, data, size, idx_file_size);
  return idx_from_bytes(function, label, std::move(contents.bytes), contents.size, true, contents.cut);
#else
  throw_no_zlib(function, label);
#endif
}

// The bytes of the IDX file holding `array`, gzip-compressed if `gzip`.
inline std::vector<unsigned char> serialize_idx(const char* function, const IdxArray& array, const std::string& label,
                                                bool gzip) {
  const int rank = static_cast<int>(array.dims.size());
  const auto invalid = [&](const std::string& what) {
    throw std::invalid_argument(std::string(function) + ": '" + label + "': " + what);
  };
  if (!is_idx_type(static_cast<std::uint8_t>(array.type))) {
    invalid("unknown element type code " + hex_byte(static_cast<unsigned>(array.type)));
  }
  if (rank < 1 || rank > max_idx_rank) {
    invalid("rank " + std::to_string(rank) + " (IDX files of ranks 1 to " + std::to_string(max_idx_rank) + ")");
  }
  for (std::int64_t d : array.dims) {
    if (d < 0 || d > std::numeric_limits<std::int32_t>::max()) {
      invalid("dimension " + std::to_string(d) + " of " + idx_dims_string(array.dims) +
              " is outside an IDX dimension's range [0, 2^31 - 1]");
    }
  }
  const std::size_t element = idx_element_size(array.type);
  std::uint64_t count = 0;
  if (!idx_element_count(array.dims, std::numeric_limits<std::uint64_t>::max() / element, count) ||
      count * element != array.data.size()) {
    invalid("dimensions " + idx_dims_string(array.dims) + " of " + to_string(array.type) + " need " +
            std::to_string(count * element) + " bytes of data, the array holds " + std::to_string(array.data.size()));
  }
#ifndef MOMNET_HAVE_ZLIB
  if (gzip) throw_no_zlib(function, label);
#endif
  std::vector<unsigned char> bytes(4 + 4 * static_cast<std::size_t>(rank));
  bytes[2] = static_cast<unsigned char>(array.type);
  bytes[3] = static_cast<unsigned char>(rank);
  for (int i = 0; i < rank; ++i) {
    const auto d = static_cast<std::uint32_t>(array.dims[static_cast<std::size_t>(i)]);
    for (int b = 0; b < 4; ++b) bytes[static_cast<std::size_t>(4 + 4 * i + b)] = static_cast<unsigned char>(d >> (24 - 8 * b));
  }
  const std::size_t header = bytes.size();
  bytes.insert(bytes.end(), array.data.begin(), array.data.end());
  idx_swap_elements(array.type, bytes.data() + header, array.data.size(), true);
#ifdef MOMNET_HAVE_ZLIB
  if (gzip) return detail::gzip(function, label, bytes.data(), bytes.size());
#endif
  return bytes;
}

}  // namespace detail

// The array in the IDX file whose bytes are `data` (gzip-compressed if
// `gzip`), as read_idx reads a file: the same checks, the same errors, with
// `label` in place of the file's name.
inline IdxArray parse_idx(const unsigned char* data, std::size_t size, const std::string& label, bool gzip) {
  return detail::parse_idx("momnet::parse_idx", data, size, label, gzip);
}

// The array in the IDX file at `path` (gunzipped first if it ends in ".gz").
inline IdxArray read_idx(const std::string& path) {
  const char* function = "momnet::read_idx";
  const bool compressed = detail::ends_with_gz(path);
#ifndef MOMNET_HAVE_ZLIB
  if (compressed) detail::throw_no_zlib(function, path);
#endif
  std::vector<unsigned char> bytes = detail::read_file_bytes(function, path);
  if (compressed) return detail::parse_idx(function, bytes.data(), bytes.size(), path, true);
  // What parse_idx does, without copying the file's bytes.
  const std::size_t size = bytes.size();
  return detail::idx_from_bytes(function, path, std::move(bytes), size, false, false);
}

// An IdxArray of `dims` holding `values` (its type follows V).
template <class V>
IdxArray make_idx(std::vector<std::int64_t> dims, const std::vector<V>& values) {
  std::uint64_t count = 0;
  if (!detail::idx_element_count(dims, std::numeric_limits<std::uint64_t>::max(), count) ||
      count != values.size()) {
    throw std::invalid_argument("momnet::make_idx: dimensions " + detail::idx_dims_string(dims) + " do not hold " +
                                std::to_string(values.size()) + " values");
  }
  IdxArray array;
  array.type = idx_type_of<V>::value;
  array.dims = std::move(dims);
  array.data.resize(values.size() * sizeof(V));
  if (!values.empty()) std::memcpy(array.data.data(), values.data(), array.data.size());
  return array;
}

// The bytes of the IDX file holding `array`, gzip-compressed if `gzip`, as
// write_idx writes them (`label` names the array in its errors: the same as
// write_idx's, with the label in place of the file's name).
inline std::vector<unsigned char> serialize_idx(const IdxArray& array, const std::string& label, bool gzip) {
  return detail::serialize_idx("momnet::serialize_idx", array, label, gzip);
}

// Writes `array` to `path` as an IDX file, gzip-compressed when the path ends
// in ".gz" (which needs zlib). Throws std::invalid_argument for an array that
// is not a valid IDX array, std::runtime_error naming the file when it cannot
// be written.
inline void write_idx(const std::string& path, const IdxArray& array) {
  const char* function = "momnet::write_idx";
  const std::vector<unsigned char> bytes = detail::serialize_idx(function, array, path, detail::ends_with_gz(path));
  detail::write_file_bytes(function, path, bytes.data(), bytes.size());
}

}  // namespace momnet
