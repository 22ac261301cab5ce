// libFuzzer target for momnet's IDX reader (include/momnet/data/idx.hpp).
//
// The first byte of an input chooses how the rest is read: as a raw IDX file
// when even, as a gzip-compressed one when odd (without zlib such an input
// must be refused for that reason). With bit 1 also set, the fuzzer gzips the
// rest itself first, so that the checks behind the gunzip see arbitrary
// contents rather than mostly broken streams; reading them gzipped must then
// agree with reading them raw. Any input must either throw
// std::runtime_error naming it or give an array of a valid type and rank
// whose dimensions account for its data exactly; anything else (another
// exception, a crash, a read out of bounds, undefined behaviour, running out
// of memory on a gzip bomb) is a bug. An accepted array must also survive the
// writer: a raw input comes back byte for byte, and the array reads back
// unchanged from the writer's raw and gzip bytes.
//
// Build and run: see fuzz/README.md. Built with -DMOMNET_FUZZ_MAIN (and
// without -fsanitize=fuzzer) it is a plain program that runs the files named
// on its command line, to replay the corpus with any compiler.
#include <momnet/data/idx.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

#ifdef MOMNET_HAVE_ZLIB
constexpr bool have_zlib = true;
#else
constexpr bool have_zlib = false;
#endif

[[noreturn]] void bug(const std::string& what) {
  std::fprintf(stderr, "idx_fuzzer: %s\n", what.c_str());
  std::abort();
}

bool contains(const char* text, const char* part) { return std::strstr(text, part) != nullptr; }

// The array's type, rank and dimensions are valid and account for its data.
void check_array(const momnet::IdxArray& a) {
  if (!momnet::is_idx_type(static_cast<std::uint8_t>(a.type))) bug("an array of an unknown type");
  if (a.dims.empty() || a.dims.size() > static_cast<std::size_t>(momnet::max_idx_rank)) {
    bug("an array of rank " + std::to_string(a.dims.size()));
  }
  // A zero dimension empties the array, however large the others are.
  std::uint64_t count = 1;
  bool overflow = false, empty = false;
  for (std::int64_t d : a.dims) {
    if (d < 0 || d > std::numeric_limits<std::int32_t>::max()) bug("a dimension of " + std::to_string(d));
    const auto u = static_cast<std::uint64_t>(d);
    empty = empty || u == 0;
    if (u != 0 && count > std::numeric_limits<std::uint64_t>::max() / u) overflow = true;
    count *= u;
  }
  if (empty) {
    count = 0;
    overflow = false;
  }
  const std::size_t element = momnet::idx_element_size(a.type);
  if (overflow || count > std::numeric_limits<std::uint64_t>::max() / element || count * element != a.data.size()) {
    bug("dimensions " + momnet::detail::idx_dims_string(a.dims) + " do not account for " +
        std::to_string(a.data.size()) + " bytes of data");
  }
  if (a.size() != count) bug("size() differs from the dimensions' product");
  if (a.values<double>().size() != count) bug("values<double>() gives the wrong count");
}

bool same(const momnet::IdxArray& a, const momnet::IdxArray& b) {
  return a.type == b.type && a.dims == b.dims && a.data == b.data;
}

// The writer's bytes read back as the same array (raw, and gzipped if zlib is
// there); a raw input is exactly what the writer writes for its array.
void round_trip(const momnet::IdxArray& a, const std::uint8_t* input, std::size_t size, bool compressed) {
  const std::vector<unsigned char> raw = momnet::serialize_idx(a, "round trip", false);
  if (!compressed && (raw.size() != size || (size != 0 && std::memcmp(raw.data(), input, size) != 0))) {
    bug("the writer's bytes differ from the raw input");
  }
  try {
    if (!same(momnet::parse_idx(raw.data(), raw.size(), "round trip", false), a)) bug("changed in a raw round trip");
    if (have_zlib) {
      const std::vector<unsigned char> packed = momnet::serialize_idx(a, "round trip", true);
      if (!same(momnet::parse_idx(packed.data(), packed.size(), "round trip", true), a)) {
        bug("changed in a gzip round trip");
      }
    }
  } catch (const std::runtime_error& e) {
    bug(std::string("the writer's bytes do not read back: ") + e.what());
  }
}

// The array in `file`, or nothing when the reader refuses it (as it must:
// with a std::runtime_error naming the input).
std::optional<momnet::IdxArray> parse(const unsigned char* file, std::size_t size, bool compressed) {
  try {
    return momnet::parse_idx(file, size, "fuzz input", compressed);
  } catch (const std::runtime_error& e) {
    if (!contains(e.what(), "momnet::parse_idx: 'fuzz input': ")) {
      bug(std::string("an error not naming the input: ") + e.what());
    }
    if (compressed && !have_zlib && !contains(e.what(), "built without zlib")) {
      bug(std::string("a gzip input without zlib refused for another reason: ") + e.what());
    }
    return std::nullopt;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const bool compressed = (data[0] & 1) != 0;
  const bool contents = compressed && have_zlib && (data[0] & 2) != 0;
  const std::uint8_t* file = data + 1;
  std::size_t file_size = size - 1;
#ifdef MOMNET_HAVE_ZLIB
  std::vector<unsigned char> packed;
  if (contents) {
    packed = momnet::detail::gzip("idx_fuzzer", "fuzz input", file, file_size);
    file = packed.data();
    file_size = packed.size();
  }
#endif
  const std::optional<momnet::IdxArray> array = parse(file, file_size, compressed);
  if (contents) {
    const std::optional<momnet::IdxArray> raw = parse(data + 1, size - 1, false);
    if (array.has_value() != raw.has_value() || (array && !same(*array, *raw))) {
      bug("the contents read differently gzipped and raw");
    }
  }
  if (!array) return 0;
  if (compressed && !have_zlib) bug("a gzip input read without zlib");
  check_array(*array);
  // The raw contents are known unless the input was a gzip stream as given.
  round_trip(*array, data + 1, size - 1, compressed && !contents);
  return 0;
}

#ifdef MOMNET_FUZZ_MAIN
#include <fstream>
#include <iterator>

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::ifstream in(argv[i], std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "cannot open %s\n", argv[i]);
      return 2;
    }
    const std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
  }
  std::printf("%d inputs ran\n", argc - 1);
  return 0;
}
#endif
