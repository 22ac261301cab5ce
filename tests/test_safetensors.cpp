// safetensors files and model checkpoints: round trips of every dtype momnet
// writes, bytes identical to what Python's safetensors writes, exact F16,
// BF16 and F8 conversions, one malformed file for every check of the reader
// (each throwing FormatError naming the file and the problem), the writer's
// errors and atomic replacement, and PyTorch-style state_dict save and load
// (bitwise restore, strict and non-strict loads, dtype conversion, a loaded
// parameter refusing a stale backward). Also the inputs the fuzzer found.
#include <catch2/catch.hpp>

#include <momnet/io/safetensors.hpp>
#include <momnet/io/state_dict.hpp>
#include <momnet/momnet.hpp>

#include "support.hpp"

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

using momnet::ByteView;
using momnet::Dtype;
using momnet::FormatError;
using momnet::NamedTensor;
using momnet::SafetensorsFile;
using momnet::Shape;
using momnet::Tensor;
using Bytes = std::vector<std::uint8_t>;

namespace fs = std::filesystem;

// A unique path under the temporary directory, removed (with anything a
// failed write left beside it) when the test ends.
class TempPath {
 public:
  TempPath() {
    static std::atomic<int> counter{0};
    std::random_device device;
    path_ = (fs::temp_directory_path() /
             ("momnet-test-" + std::to_string(device()) + "-" + std::to_string(counter++) + ".safetensors"))
                .string();
  }
  ~TempPath() {
    std::error_code ignored;
    fs::remove(path_, ignored);
  }
  TempPath(const TempPath&) = delete;
  TempPath& operator=(const TempPath&) = delete;
  const std::string& str() const { return path_; }
  // Files beside this one whose name starts with it (temporary files of a write).
  std::vector<std::string> leftovers() const {
    std::vector<std::string> found;
    const std::string stem = fs::path(path_).filename().string() + ".";
    for (const auto& entry : fs::directory_iterator(fs::path(path_).parent_path())) {
      if (entry.path().filename().string().rfind(stem, 0) == 0) found.push_back(entry.path().string());
    }
    return found;
  }

 private:
  std::string path_;
};

Bytes read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}
void write_bytes(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void append_u64(Bytes& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

// A file image: the length of `header` (padded with spaces to a multiple of 8
// when `pad`), the header, then `data`.
Bytes file_of(std::string header, const Bytes& data = {}, bool pad = true) {
  if (pad) header.append((8 - header.size() % 8) % 8, ' ');
  Bytes out;
  append_u64(out, header.size());
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

Bytes zeros(std::size_t n) { return Bytes(n, 0); }

SafetensorsFile parse(const Bytes& bytes, const std::string& label = "bad.safetensors") {
  return SafetensorsFile::parse(bytes.data(), bytes.size(), label);
}

template <class T>
Bytes raw_bytes(const T* p, std::size_t n) {
  Bytes out(n * sizeof(T));
  if (n != 0) std::memcpy(out.data(), p, out.size());
  return out;
}

// Little-endian bytes of 16-bit patterns.
Bytes u16_bytes(const std::vector<std::uint16_t>& bits) {
  Bytes out;
  for (std::uint16_t b : bits) {
    out.push_back(static_cast<std::uint8_t>(b & 0xFF));
    out.push_back(static_cast<std::uint8_t>(b >> 8));
  }
  return out;
}

template <class T>
std::uint64_t bits_of(T v) {
  std::uint64_t b = 0;
  std::memcpy(&b, &v, sizeof v);
  return b;
}

}  // namespace

// ---- files ------------------------------------------------------------------

TEST_CASE("write_safetensors round-trips F32, F64 and I64 tensors, scalars, empty tensors and metadata",
          "[io][safetensors]") {
  TempPath path;
  Tensor<float> weight(Shape{2, 3});
  for (int i = 0; i < 6; ++i) weight.data()[i] = 0.1f * static_cast<float>(i) - 0.25f;
  weight.data()[5] = -std::numeric_limits<float>::denorm_min();
  Tensor<double> vector(Shape{4});
  vector.data()[0] = 1.0 / 3.0;
  vector.data()[1] = -0.0;
  vector.data()[2] = std::numeric_limits<double>::infinity();
  vector.data()[3] = std::numeric_limits<double>::quiet_NaN();
  Tensor<std::int64_t> counts(Shape{2, 2});
  counts.data()[0] = std::numeric_limits<std::int64_t>::min();
  counts.data()[1] = -1;
  counts.data()[2] = 7;
  counts.data()[3] = std::numeric_limits<std::int64_t>::max();
  Tensor<float> scalar{Shape{}};
  scalar.data()[0] = 2.5f;
  Tensor<double> empty(Shape{0, 3});
  const std::map<std::string, std::string> metadata{{"epoch", "3"}, {"note", "caf\xc3\xa9 \"quoted\"\n"}};

  momnet::write_safetensors(path.str(),
                            {NamedTensor("weight", weight), NamedTensor("vector", vector), NamedTensor("steps", counts),
                             NamedTensor("scalar", scalar), NamedTensor("empty", empty)},
                            metadata);
  CHECK(path.leftovers().empty());

  const SafetensorsFile file(path.str());
  CHECK(file.label() == path.str());
  CHECK(file.metadata() == metadata);
  // Ordered as Python orders them: by dtype (I64, F64, F32), then name; every
  // tensor aligned to its element size.
  std::vector<std::string> names;
  for (const auto& e : file.entries()) names.push_back(e.name);
  CHECK(names == std::vector<std::string>{"steps", "empty", "vector", "scalar", "weight"});
  CHECK(file.entry("steps").dtype == Dtype::I64);
  CHECK(file.entry("vector").dtype == Dtype::F64);
  CHECK(file.entry("weight").dtype == Dtype::F32);
  CHECK(file.entry("scalar").shape.empty());
  CHECK(file.entry("empty").shape == std::vector<std::int64_t>{0, 3});
  CHECK(file.entry("empty").begin == file.entry("empty").end);

  const Bytes raw = read_bytes(path.str());
  std::uint64_t header = 0;
  for (int i = 0; i < 8; ++i) header |= static_cast<std::uint64_t>(raw[static_cast<std::size_t>(i)]) << (8 * i);
  CHECK(header % 8 == 0);

  const Tensor<float> w = file.tensor<float>("weight");
  CHECK(w.shape() == Shape{2, 3});
  CHECK(raw_bytes(w.data(), 6) == raw_bytes(weight.data(), 6));
  const Tensor<double> v = file.tensor<double>("vector");
  CHECK(raw_bytes(v.data(), 4) == raw_bytes(vector.data(), 4));  // -0, inf and NaN bit for bit
  const Tensor<std::int64_t> c = file.tensor<std::int64_t>("steps");
  CHECK(raw_bytes(c.data(), 4) == raw_bytes(counts.data(), 4));
  CHECK(file.int64s("steps") == std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::min(), -1, 7,
                                                           std::numeric_limits<std::int64_t>::max()});
  const Tensor<float> s = file.tensor<float>("scalar");
  CHECK(s.shape() == Shape{});
  CHECK(s.data()[0] == 2.5f);
  CHECK(file.tensor<double>("empty").shape() == Shape{0, 3});
  // Conversions: F64 into float, F32 into double.
  CHECK(file.tensor<float>("vector").data()[0] == static_cast<float>(1.0 / 3.0));
  CHECK(file.tensor<double>("weight").data()[1] == static_cast<double>(weight.data()[1]));
  CHECK(file.bytes("weight").size == 24);

  // An empty file: no tensors, no metadata.
  momnet::write_safetensors(path.str(), {});
  const SafetensorsFile nothing(path.str());
  CHECK(nothing.entries().empty());
  CHECK(nothing.metadata().empty());
}

TEST_CASE("Bytes are those Python's safetensors writes, and its files load", "[io][safetensors]") {
  // The reference implementation's own expected outputs: an empty file, and
  // one F32 tensor whose header needs 7 spaces of padding.
  CHECK(momnet::serialize_safetensors({}) == Bytes{8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '});
  const std::string metadata_only = "{\"__metadata__\":{\"framework\":\"pt\"}}";
  CHECK(momnet::serialize_safetensors({}, {{"framework", "pt"}}) == file_of(metadata_only));
  CHECK(file_of(metadata_only).size() == 48);

  const float values[6] = {0, 1, 2, 3, 4, 5};
  const std::string header = "{\"attn0\":{\"dtype\":\"F32\",\"shape\":[1,1,2,3],\"data_offsets\":[0,24]}}";
  const Bytes expected = file_of(header, raw_bytes(values, 6));
  CHECK(expected.size() == 8 + 72 + 24);
  Tensor<float> attn(Shape{1, 1, 2, 3});
  std::copy(values, values + 6, attn.data());
  CHECK(momnet::serialize_safetensors({NamedTensor("attn0", attn)}) == expected);

  // What safetensors.torch.save_file({"n": tensor(7), "w": ones(2, 2)},
  // metadata={"format": "pt"}) writes: metadata first, then the tensors by
  // descending alignment, compact JSON, spaces to a multiple of 8.
  const std::int64_t seven = 7;
  const float ones[4] = {1, 1, 1, 1};
  Bytes data = raw_bytes(&seven, 1);
  const Bytes w = raw_bytes(ones, 4);
  data.insert(data.end(), w.begin(), w.end());
  const Bytes python = file_of(
      "{\"__metadata__\":{\"format\":\"pt\"},\"n\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]},"
      "\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[8,24]}}",
      data);
  TempPath path;
  write_bytes(path.str(), python);
  const SafetensorsFile file(path.str());
  CHECK(file.metadata() == std::map<std::string, std::string>{{"format", "pt"}});
  CHECK(file.int64s("n") == std::vector<std::int64_t>{7});
  CHECK(file.tensor<double>("w").array().isApprox(Eigen::ArrayXd::Ones(4).eval(), 0.0));
  Tensor<std::int64_t> n{Shape{}};
  n.data()[0] = 7;
  Tensor<float> ones_tensor(Shape{2, 2});
  ones_tensor.array().setOnes();
  CHECK(momnet::serialize_safetensors({NamedTensor("w", ones_tensor), NamedTensor("n", n)}, {{"format", "pt"}}) ==
        python);

  // Older writers: tensors listed in any order, whitespace and newlines, no
  // padding, no metadata.
  const Bytes loose = file_of(
      "{ \"w\": {\"data_offsets\": [8, 24], \"dtype\": \"F32\", \"shape\": [2, 2]},\n"
      "  \"n\": {\"dtype\": \"I64\", \"shape\": [], \"data_offsets\": [0, 8]} }\n",
      data, false);
  const SafetensorsFile again = parse(loose, "loose");
  CHECK(again.entries().front().name == "n");
  CHECK(again.int64s("n") == std::vector<std::int64_t>{7});
  CHECK(again.metadata().empty());
}

TEST_CASE("F16, BF16 and F8 values convert exactly, including subnormals, infinities and NaN",
          "[io][safetensors]") {
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<std::uint16_t> f16 = {0x3C00, 0xC100, 0x7BFF, 0x0001, 0x8001, 0x03FF, 0x0400,
                                          0x7C00, 0xFC00, 0x8000, 0x7E00, 0xFE01};
  const std::vector<double> f16_values = {1.0,   -2.5, 65504.0, std::ldexp(1.0, -24), -std::ldexp(1.0, -24),
                                          std::ldexp(1023.0, -24), std::ldexp(1.0, -14), inf, -inf, -0.0};
  const std::vector<std::uint16_t> bf16 = {0x3F80, 0xC020, 0x7F7F, 0x0001, 0x807F, 0x0080, 0x7F80, 0xFF80, 0x7FC0};
  const std::vector<double> bf16_values = {1.0, -2.5, std::ldexp(255.0, 127 - 7), std::ldexp(1.0, -133),
                                           -std::ldexp(127.0, -133), std::ldexp(1.0, -126), inf, -inf};
  Bytes data = u16_bytes(f16);
  const Bytes b = u16_bytes(bf16);
  data.insert(data.end(), b.begin(), b.end());
  const Bytes f8 = {0x7E, 0x01, 0x7F, 0xB8, 0x3C, 0x7C, 0x01, 0xFF};  // E4M3 x4, E5M2 x4
  data.insert(data.end(), f8.begin(), f8.end());
  const SafetensorsFile file = parse(
      file_of("{\"h\":{\"dtype\":\"F16\",\"shape\":[12],\"data_offsets\":[0,24]},"
              "\"b\":{\"dtype\":\"BF16\",\"shape\":[9],\"data_offsets\":[24,42]},"
              "\"e4\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[42,46]},"
              "\"e5\":{\"dtype\":\"F8_E5M2\",\"shape\":[4],\"data_offsets\":[46,50]}}",
              data),
      "halves");
  const Tensor<double> h = file.tensor<double>("h");
  const Tensor<float> hf = file.tensor<float>("h");
  for (std::size_t i = 0; i < f16_values.size(); ++i) {
    CHECK(h.data()[i] == f16_values[i]);
    CHECK(hf.data()[i] == static_cast<float>(f16_values[i]));
  }
  CHECK(std::signbit(h.data()[9]));
  CHECK(std::isnan(h.data()[10]));
  CHECK((std::isnan(h.data()[11]) && std::signbit(h.data()[11])));
  const Tensor<float> bf = file.tensor<float>("b");
  for (std::size_t i = 0; i < bf16_values.size(); ++i) CHECK(bf.data()[i] == static_cast<float>(bf16_values[i]));
  CHECK(std::isnan(bf.data()[8]));
  const Tensor<double> e4 = file.tensor<double>("e4");
  CHECK(e4.data()[0] == 448.0);  // the largest E4M3: no infinities
  CHECK(e4.data()[1] == std::ldexp(1.0, -9));
  CHECK(std::isnan(e4.data()[2]));
  CHECK(e4.data()[3] == -1.0);
  const Tensor<double> e5 = file.tensor<double>("e5");
  CHECK(e5.data()[0] == 1.0);
  CHECK(e5.data()[1] == inf);
  CHECK(e5.data()[2] == std::ldexp(1.0, -16));
  CHECK(std::isnan(e5.data()[3]));

  // Every one of the 2^16 patterns: BF16 is the top half of a float, and F16
  // (decoded exactly) encodes back to itself through the writer.
  for (std::uint32_t bits = 0; bits < 65536; ++bits) {
    const double x = momnet::detail::bf16_to_double(static_cast<std::uint16_t>(bits));
    const float f = static_cast<float>(x);
    if (!std::isnan(x)) {
      REQUIRE(bits_of(f) == (bits << 16));
      REQUIRE(momnet::detail::double_to_bf16(x) == bits);
    }
    const double h = momnet::detail::f16_to_double(static_cast<std::uint16_t>(bits));
    if (!std::isnan(h)) REQUIRE(momnet::detail::double_to_f16(h) == bits);
    REQUIRE(std::isnan(h) == ((bits & 0x7C00) == 0x7C00 && (bits & 0x3FF) != 0));
  }
  // Rounding to nearest, ties to even, overflow to infinity.
  using momnet::detail::double_to_f16;
  CHECK(double_to_f16(1.0 + std::ldexp(1.0, -11)) == 0x3C00);      // tie: down to even
  CHECK(double_to_f16(1.0 + 3 * std::ldexp(1.0, -11)) == 0x3C02);  // tie: up to even
  CHECK(double_to_f16(65519.0) == 0x7BFF);
  CHECK(double_to_f16(65520.0) == 0x7C00);  // halfway to 65536: rounds to infinity
  CHECK(double_to_f16(std::ldexp(1.0, -25)) == 0x0000);
  CHECK(double_to_f16(std::ldexp(1.0, -25) * 1.5) == 0x0001);
  CHECK(double_to_f16(-1e300) == 0xFC00);
  CHECK(double_to_f16(std::numeric_limits<double>::quiet_NaN()) == 0x7E00);
  CHECK(momnet::detail::double_to_bf16(1.0 + std::ldexp(1.0, -8)) == 0x3F80);

  // Written as F16 and BF16 from float values.
  Tensor<float> values(Shape{3});
  values.data()[0] = 1.0f;
  values.data()[1] = -2.5f;
  values.data()[2] = 65504.0f;
  const Bytes written = momnet::serialize_safetensors(
      {NamedTensor("h", values, Dtype::F16), NamedTensor("b", values, Dtype::BF16)});
  const SafetensorsFile back = parse(written, "written");
  CHECK(back.entry("h").dtype == Dtype::F16);
  CHECK(std::memcmp(back.bytes("h").data, u16_bytes({0x3C00, 0xC100, 0x7BFF}).data(), 6) == 0);
  CHECK(std::memcmp(back.bytes("b").data, u16_bytes({0x3F80, 0xC020, 0x4780}).data(), 6) == 0);  // 65536 in BF16
}

TEST_CASE("A malformed file's length or header throws FormatError naming the file and the problem",
          "[io][safetensors]") {
  using E = FormatError;
  REQUIRE_THROWS_EXACT(parse(Bytes{}), E, "'bad.safetensors'", "has 0 bytes, fewer than the 8");
  REQUIRE_THROWS_EXACT(parse(zeros(7)), E, "'bad.safetensors'", "has 7 bytes, fewer than the 8");
  Bytes huge;
  append_u64(huge, 100'000'001);
  REQUIRE_THROWS_EXACT(parse(huge), E, "'bad.safetensors'", "header length 100000001 exceeds the limit");
  Bytes absurd;
  append_u64(absurd, ~std::uint64_t{0});
  REQUIRE_THROWS_EXACT(parse(absurd), E, "header length 18446744073709551615 exceeds the limit");
  Bytes beyond;
  append_u64(beyond, 16);
  beyond.push_back('{');
  beyond.push_back('}');
  REQUIRE_THROWS_EXACT(parse(beyond), E, "'bad.safetensors'", "header length 16 runs past the end of the file (2 bytes");
  REQUIRE_THROWS_EXACT(parse(zeros(8)), E, "'bad.safetensors'", "header must be a JSON object beginning with '{', but it is empty");
  REQUIRE_THROWS_EXACT(parse(file_of("[1, 2]")), E, "'bad.safetensors'", "beginning with '{', but it begins with byte 91");
  REQUIRE_THROWS_EXACT(parse(file_of(" {}")), E, "begins with byte 32");
  REQUIRE_THROWS_EXACT(parse(file_of("{\"a\":")), E, "'bad.safetensors'", "header is not valid JSON", "parse error");
  REQUIRE_THROWS_EXACT(parse(file_of("{}x")), E, "header is not valid JSON", "parse error");
  REQUIRE_THROWS_EXACT(parse(file_of("{\"\xff\":1}")), E, "header is not valid JSON", "UTF-8");
  REQUIRE_THROWS_EXACT(parse(file_of(std::string("{}\0", 3))), E, "'bad.safetensors'", "header holds a NUL byte at offset 2");
  REQUIRE_THROWS_EXACT(parse(file_of(std::string("{\"a\0\":1}", 8))), E, "header holds a NUL byte at offset 3");
  REQUIRE_THROWS_EXACT(parse(file_of("{\"a\":{\"dtype\":\"F32\",\"shape\":[[1]],\"data_offsets\":[0,4]}}", zeros(4))),
                       E, "header nests JSON deeper than the format's three levels");
  REQUIRE_THROWS_EXACT(parse(file_of("{\"__metadata__\":[[[1]]]}")), E, "deeper than the format's three levels");

  // From a file on disk, too: the message names its path.
  TempPath path;
  write_bytes(path.str(), zeros(5));
  REQUIRE_THROWS_EXACT(SafetensorsFile(path.str()), E, "safetensors file '" + path.str() + "'", "has 5 bytes");
  TempPath missing;
  REQUIRE_THROWS_EXACT(SafetensorsFile(missing.str()), std::runtime_error, "cannot read '" + missing.str() + "'");
}

TEST_CASE("A malformed tensor entry throws FormatError naming the file, the tensor and the problem",
          "[io][safetensors]") {
  using E = FormatError;
  const auto one = [](const std::string& entry, std::size_t data = 4) {
    return parse(file_of("{\"t\":" + entry + "}", zeros(data)));
  };
  REQUIRE_THROWS_EXACT(one("3"), E, "'bad.safetensors'", "tensor \"t\" must be an object with dtype, shape and data_offsets, got 3");
  REQUIRE_THROWS_EXACT(one("{\"shape\":[1],\"data_offsets\":[0,4]}"), E, "'bad.safetensors'", "tensor \"t\" has no \"dtype\"");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F32\",\"data_offsets\":[0,4]}"), E, "tensor \"t\" has no \"shape\"");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F32\",\"shape\":[1]}"), E, "tensor \"t\" has no \"data_offsets\"");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,4]}"), E, "tensor \"t\": \"dtype\" must be a string, got 5");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,4]}"), E, "'bad.safetensors'",
                       "tensor \"t\" has unknown dtype \"F128\" (momnet reads BOOL, U8,");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}"), E, "unknown dtype \"f32\"");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}"), E, "tensor \"t\": \"shape\" must be an array of dimensions, got 1");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}"), E, "tensor \"t\": dimension 0 must be a non-negative integer, got -1");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F32\",\"shape\":[1,2.5],\"data_offsets\":[0,4]}"), E, "dimension 1 must be a non-negative integer, got 2.5");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}"), E, "dimension 0 must be a non-negative integer, got \"1\"");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F32\",\"shape\":[1e0],\"data_offsets\":[0,4]}"), E, "dimension 0 must be a non-negative integer");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F32\",\"shape\":[9223372036854775808],\"data_offsets\":[0,4]}"), E,
                       "dimension 0 is 9223372036854775808, beyond the largest 64-bit signed integer");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}"), E,
                       "tensor \"t\" has shape [4294967296, 4294967296], whose size in bytes overflows 64 bits");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F64\",\"shape\":[2147483648,2147483648,2],\"data_offsets\":[0,4]}"), E,
                       "whose size in bytes overflows 64 bits");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":4}"), E, "tensor \"t\": \"data_offsets\" must be an array [begin, end], got 4");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}"), E, "must be an array [begin, end], got [0,4,8]");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,4]}"), E, "data_offsets begin must be a non-negative integer, got -4");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,null]}"), E, "data_offsets end must be a non-negative integer, got null");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}"), E, "'bad.safetensors'",
                       "tensor \"t\" has data_offsets [4, 0]: begin is after end");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"), E, "'bad.safetensors'",
                       "tensor \"t\" has data_offsets [0, 8] outside the 4-byte data buffer");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F32\",\"shape\":[9223372036854775807],\"data_offsets\":[0,9223372036854775807]}"), E,
                       "outside the 4-byte data buffer");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}"), E, "'bad.safetensors'",
                       "tensor \"t\" spans 4 bytes, but shape [2] of F32 needs 8 (2 x 4)");
  REQUIRE_THROWS_EXACT(one("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"dtype\":\"F64\"}"), E,
                       "header repeats the key \"dtype\" inside an entry");
}

TEST_CASE("Tensors that do not tile the buffer, duplicates and bad metadata throw FormatError",
          "[io][safetensors]") {
  using E = FormatError;
  const std::string a = "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":";
  const std::string b = "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":";
  REQUIRE_THROWS_EXACT(parse(file_of("{" + a + "[0,8]}," + b + "[4,12]}}", zeros(12))), E, "'bad.safetensors'",
                       "tensor \"b\" (bytes 4 to 12) overlaps tensor \"a\" (bytes 0 to 8)");
  REQUIRE_THROWS_EXACT(parse(file_of("{" + a + "[0,8]}," + b + "[0,8]}}", zeros(8))), E, "overlaps");
  REQUIRE_THROWS_EXACT(parse(file_of("{" + a + "[0,8]}," + b + "[12,20]}}", zeros(20))), E, "'bad.safetensors'",
                       "bytes 8 to 12 of the data buffer belong to no tensor (a gap before tensor \"b\")");
  REQUIRE_THROWS_EXACT(parse(file_of("{" + a + "[4,12]}}", zeros(12))), E, "bytes 0 to 4 of the data buffer belong to no tensor");
  REQUIRE_THROWS_EXACT(parse(file_of("{" + a + "[0,8]}}", zeros(11))), E, "'bad.safetensors'",
                       "the data buffer has 3 bytes beyond the last tensor (11 bytes, tensors cover 8)");
  REQUIRE_THROWS_EXACT(parse(file_of("{}", zeros(1))), E, "the data buffer has 1 bytes beyond the last tensor");
  REQUIRE_THROWS_EXACT(parse(file_of("{" + a + "[0,8]}," + a + "[8,16]}}", zeros(16))), E, "'bad.safetensors'",
                       "header repeats the key \"a\"");
  REQUIRE_THROWS_EXACT(parse(file_of("{\"__metadata__\":3}")), E, "'bad.safetensors'",
                       "\"__metadata__\" must be an object of strings, got 3");
  REQUIRE_THROWS_EXACT(parse(file_of("{\"__metadata__\":{\"epoch\":1}}")), E, "'bad.safetensors'",
                       "\"__metadata__\" must map strings to strings, but \"epoch\" maps to 1");
  REQUIRE_THROWS_EXACT(parse(file_of("{\"__metadata__\":{\"k\":\"v\"},\"__metadata__\":{}}")), E, "repeats the key \"__metadata__\"");

  // Valid: empty tensors anywhere (even at the same offset), tensors listed
  // out of order, a null metadata map.
  const SafetensorsFile ok = parse(file_of("{\"e\":{\"dtype\":\"F64\",\"shape\":[0,5],\"data_offsets\":[8,8]}," + b +
                                           "[8,16]}," + a + "[0,8]},\"z\":{\"dtype\":\"U8\",\"shape\":[0],"
                                           "\"data_offsets\":[8,8]},\"__metadata__\":null}",
                                           zeros(16)));
  CHECK(ok.entries().size() == 4);
  CHECK(ok.entries().back().name == "b");
}

TEST_CASE("Reading a tensor as a type that cannot hold it throws naming the file and the tensor",
          "[io][safetensors]") {
  std::uint64_t big = std::uint64_t{1} << 63;
  Bytes data = raw_bytes(&big, 1);
  data.push_back(0x80);  // I8: -128
  data.push_back(0x01);  // BOOL
  const SafetensorsFile file = parse(
      file_of("{\"u\":{\"dtype\":\"U64\",\"shape\":[1],\"data_offsets\":[0,8]},"
              "\"i\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[8,9]},"
              "\"flag\":{\"dtype\":\"BOOL\",\"shape\":[],\"data_offsets\":[9,10]},"
              "\"f\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,0],\"data_offsets\":[10,10]}}",
              data),
      "types.safetensors");
  REQUIRE_THROWS_EXACT(file.int64s("u"), std::range_error, "tensor 'u' in 'types.safetensors' holds 9223372036854775808",
                       "outside the range of the 64-bit integer type");
  CHECK(file.tensor<double>("u").data()[0] == std::ldexp(1.0, 63));
  CHECK(file.int64s("i") == std::vector<std::int64_t>{-128});
  CHECK(file.int64s("flag") == std::vector<std::int64_t>{1});
  CHECK(file.tensor<float>("flag").data()[0] == 1.0f);
  REQUIRE_THROWS_EXACT(file.int64s("f"), std::invalid_argument, "tensor 'f' in 'types.safetensors' is F32, not an integer dtype");
  REQUIRE_THROWS_EXACT(file.tensor<float>("f"), std::invalid_argument, "'f' in 'types.safetensors' has shape [1, 1, 1, 1, 0] of rank 5",
                       "at most 4");
  REQUIRE_THROWS_EXACT(file.tensor<float>("nope"), std::out_of_range, "no tensor 'nope' in 'types.safetensors'");
  CHECK_FALSE(file.contains("nope"));
  float one = 0;
  REQUIRE_THROWS_EXACT(file.copy_to("i", &one, 2), std::invalid_argument, "tensor 'i' in 'types.safetensors' has 1 elements, not 2");
}

TEST_CASE("write_safetensors refuses bad tensors and never leaves half a file", "[io][safetensors]") {
  TempPath path;
  Tensor<double> x(Shape{2});
  x.data()[0] = 1;
  momnet::write_safetensors(path.str(), {NamedTensor("x", x)});
  const Bytes before = read_bytes(path.str());
  const std::string who = "momnet::write_safetensors('" + path.str() + "')";

  Tensor<std::int64_t> n(Shape{1});
  REQUIRE_THROWS_EXACT(momnet::write_safetensors(path.str(), {NamedTensor("x", x), NamedTensor("x", x)}),
                       std::invalid_argument, who, "tensor 'x' appears twice");
  REQUIRE_THROWS_EXACT(momnet::write_safetensors(path.str(), {NamedTensor("__metadata__", x)}), std::invalid_argument,
                       "the name is reserved for metadata");
  REQUIRE_THROWS_EXACT(momnet::write_safetensors(path.str(), {NamedTensor("n", n, Dtype::F32)}), std::invalid_argument,
                       "tensor 'n': values of int64 cannot be stored as F32");
  REQUIRE_THROWS_EXACT(momnet::write_safetensors(path.str(), {NamedTensor("x", x, Dtype::I32)}), std::invalid_argument,
                       "values of a float type cannot be stored as I32");
  REQUIRE_THROWS_EXACT(momnet::write_safetensors(path.str(), {NamedTensor("bad\xff", x)}), std::invalid_argument,
                       "not valid UTF-8");
  const std::uint8_t three[3] = {1, 2, 3};
  REQUIRE_THROWS_EXACT(momnet::write_safetensors(path.str(), {NamedTensor::raw("r", Dtype::F32, {1}, ByteView{three, 3})}),
                       std::invalid_argument, "tensor 'r' has 3 bytes; shape [1] of F32 needs 4");
  // Every failure left the old file as it was, and no temporary beside it.
  CHECK(read_bytes(path.str()) == before);
  CHECK(path.leftovers().empty());

  const std::string nowhere = (fs::path(path.str()).parent_path() / "momnet-no-such-directory" / "x.safetensors").string();
  REQUIRE_THROWS_EXACT(momnet::write_safetensors(nowhere, {NamedTensor("x", x)}), std::runtime_error, "cannot create");

  // A raw tensor is copied as it is: re-saving a file keeps every byte.
  const SafetensorsFile file(path.str());
  const auto& e = file.entry("x");
  CHECK(momnet::serialize_safetensors({NamedTensor::raw(e.name, e.dtype, e.shape, file.bytes("x"))}) == before);
}

// ---- hostile inputs --------------------------------------------------------------
// fuzz/safetensors_fuzzer.cpp found no crash, leak or wrong acceptance (see
// fuzz/README.md); these are the inputs of the kinds it looks for, pinned.

TEST_CASE("Hostile headers are rejected cleanly", "[io][safetensors][fuzz]") {
  using E = FormatError;
  // Deep nesting stops at the fourth level, not after a million.
  REQUIRE_THROWS_EXACT(parse(file_of("{\"a\":" + std::string(1'000'000, '['))), E, "deeper than the format's three levels");
  REQUIRE_THROWS_EXACT(parse(file_of("{\"t\":{\"dtype\":\"F32\",\"shape\":[1e999],\"data_offsets\":[0,4]}}", zeros(4))), E,
                       "header is not valid JSON");
  REQUIRE_THROWS_EXACT(parse(file_of("{\"\xc3\":1}")), E, "header is not valid JSON");          // truncated UTF-8
  REQUIRE_THROWS_EXACT(parse(file_of("{\"\xc0\xaf\":1}")), E, "header is not valid JSON");      // overlong UTF-8
  REQUIRE_THROWS_EXACT(parse(file_of("{\"\\ud800\":1}")), E, "header is not valid JSON");       // lone surrogate
  REQUIRE_THROWS_EXACT(parse(file_of("{\"a\":1} // comment")), E, "header is not valid JSON");
  REQUIRE_THROWS_EXACT(parse(file_of("{\"a\":NaN}")), E, "header is not valid JSON");
  // Escapes are names like any other: "\u0000" is a NUL inside a name, legal JSON.
  const SafetensorsFile escaped = parse(file_of("{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", zeros(1)));
  CHECK(escaped.contains(std::string("a\0b", 3)));
  CHECK(parse(momnet::serialize_safetensors({NamedTensor::raw(std::string("a\0b", 3), Dtype::U8, {1}, escaped.bytes(std::string("a\0b", 3)))}))
            .contains(std::string("a\0b", 3)));
  // Many empty tensors at one offset are valid; a huge empty shape too.
  std::string many = "{";
  for (int i = 0; i < 1000; ++i) many += (i ? ",\"" : "\"") + std::to_string(i) + "\":{\"dtype\":\"F64\",\"shape\":[0],\"data_offsets\":[0,0]}";
  CHECK(parse(file_of(many + ",\"z\":{\"dtype\":\"F64\",\"shape\":[9223372036854775807,0],\"data_offsets\":[0,0]}}")).entries().size() == 1001);
}

// ---- model checkpoints --------------------------------------------------------

namespace {

// A module with a real and an integer buffer, like BatchNorm.
template <class T>
struct Stats {
  using Scalar = T;
  momnet::Parameter<T> weight{Shape{6}};
  Tensor<T> running_mean{Shape{6}};
  Tensor<std::int64_t> num_batches_tracked{Shape{}};

  explicit Stats(momnet::Rng& rng) {
    for (Eigen::Index i = 0; i < 6; ++i) {
      weight.value_data()[i] = static_cast<T>(rng.uniform(-1, 1));
      running_mean.data()[i] = static_cast<T>(rng.uniform(-1, 1));
    }
    num_batches_tracked.data()[0] = static_cast<std::int64_t>(rng.uniform(0, 1000));
  }
  momnet::Var<T> forward(momnet::Tape<T>& tape, const momnet::Var<T>& x) { return mul(x, tape.param(weight)); }
  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.parameter("weight", weight);
    visit.buffer("running_mean", running_mean);
    visit.buffer("num_batches_tracked", num_batches_tracked);
  }
};

template <class T>
momnet::Sequential<T> make_model(std::uint64_t seed, Eigen::Index out = 3) {
  momnet::Rng rng(seed);
  momnet::Sequential<T> model;
  model.add(momnet::Linear<T>(4, 6, rng));
  std::vector<momnet::MLPBlock<T>> blocks;
  for (int i = 0; i < 2; ++i) blocks.emplace_back(6, 5, rng);
  model.add(momnet::MomentumResidual<momnet::MLPBlock<T>>(std::move(blocks)));
  model.add(Stats<T>(rng));
  model.add(momnet::Linear<T>(6, out, rng, false));
  return model;
}

// Every value of the model's state, as bytes, in state_dict order.
template <class Model>
Bytes state_bytes(Model& model) {
  Bytes out;
  for (const auto& s : momnet::state_of(model)) {
    const Bytes b = s.real != nullptr ? raw_bytes(s.real, static_cast<std::size_t>(s.shape.size()))
                                      : raw_bytes(s.integer, static_cast<std::size_t>(s.shape.size()));
    out.insert(out.end(), b.begin(), b.end());
  }
  return out;
}

}  // namespace

TEMPLATE_TEST_CASE("save and load restore a model bitwise under PyTorch's state_dict names", "[io][state_dict]",
                   float, double) {
  using T = TestType;
  TempPath path;
  auto saved = make_model<T>(1);
  momnet::save(saved, path.str(), {{"step", "12"}});

  const SafetensorsFile file(path.str());
  CHECK(file.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"step", "12"}});
  std::vector<std::string> names;
  for (const auto& s : momnet::state_of(saved)) names.push_back(s.name);
  CHECK(names == std::vector<std::string>{"0.weight", "0.bias", "1.0.fc1.weight", "1.0.fc1.bias", "1.0.fc2.weight",
                                          "1.0.fc2.bias", "1.1.fc1.weight", "1.1.fc1.bias", "1.1.fc2.weight",
                                          "1.1.fc2.bias", "2.weight", "3.weight", "2.running_mean",
                                          "2.num_batches_tracked"});
  for (const std::string& name : names) CHECK(file.contains(name));
  CHECK(file.entries().size() == names.size());
  CHECK(file.entry("0.weight").dtype == momnet::dtype_of<T>());
  CHECK(file.entry("0.weight").shape == std::vector<std::int64_t>{6, 4});
  CHECK(file.entry("2.running_mean").dtype == momnet::dtype_of<T>());
  CHECK(file.entry("2.num_batches_tracked").dtype == Dtype::I64);
  CHECK(file.entry("2.num_batches_tracked").shape.empty());

  auto loaded = make_model<T>(2);
  REQUIRE(state_bytes(loaded) != state_bytes(saved));
  const momnet::LoadReport report = momnet::load(loaded, path.str());
  CHECK(report.ok());
  CHECK(report.loaded_keys.size() == names.size());
  CHECK(report.metadata.at("step") == "12");
  CHECK(state_bytes(loaded) == state_bytes(saved));

  // The loaded model computes what the saved one does, bit for bit.
  const Tensor<double> values = momnet_test::uniform(Shape{2, 4}, 3);
  Tensor<T> input(Shape{2, 4});
  for (int i = 0; i < 8; ++i) input.data()[i] = static_cast<T>(values.data()[i]);
  const Tensor<T> a = saved.infer(input);
  const Tensor<T> b = loaded.infer(input);
  CHECK(raw_bytes(a.data(), 6) == raw_bytes(b.data(), 6));
}

TEST_CASE("A strict load reports every missing, unexpected and mismatched key at once and changes nothing",
          "[io][state_dict]") {
  TempPath path;
  auto source = make_model<double>(1, 7);  // the last layer is [7, 6], not [3, 6]
  std::vector<NamedTensor> tensors;
  for (const auto& s : momnet::state_of(source)) {
    if (s.name == "0.bias" || s.name == "2.running_mean") continue;  // missing
    if (s.real != nullptr) tensors.emplace_back(s.name, static_cast<const double*>(s.real), s.shape);
    else tensors.emplace_back(s.name, static_cast<const std::int64_t*>(s.integer), s.shape);
  }
  Tensor<double> extra(Shape{2});
  tensors.emplace_back("extra.weight", extra);
  Tensor<double> stray(Shape{1});
  tensors.emplace_back("1.9.fc1.weight", stray);
  momnet::write_safetensors(path.str(), tensors);

  auto model = make_model<double>(2);
  const Bytes before = state_bytes(model);
  std::vector<std::uint64_t> versions;
  for (auto* p : momnet::parameters_of(model)) versions.push_back(p->version());
  REQUIRE_THROWS_EXACT(
      momnet::load(model, path.str()), momnet::StateDictError,
      "Error(s) in loading state_dict from '" + path.str() + "':",
      "\n\tMissing key(s) in state_dict: \"0.bias\", \"2.running_mean\".",
      "\n\tUnexpected key(s) in state_dict: \"1.9.fc1.weight\", \"extra.weight\".",
      "\n\tsize mismatch for 3.weight: copying a param with shape [7, 6] from checkpoint, the shape in current model "
      "is [3, 6].");
  CHECK(state_bytes(model) == before);
  std::vector<std::uint64_t> after;
  for (auto* p : momnet::parameters_of(model)) after.push_back(p->version());
  CHECK(after == versions);
  try {
    momnet::load(model, path.str());
  } catch (const momnet::StateDictError& e) {
    CHECK(e.report().missing_keys == std::vector<std::string>{"0.bias", "2.running_mean"});
    CHECK(e.report().mismatches.size() == 1);
    CHECK(e.report().mismatches[0].key == "3.weight");
    CHECK(e.report().loaded_keys.empty());
  }

  // Not strict: everything else loads, the rest is reported and untouched.
  const momnet::LoadReport report = momnet::load(model, path.str(), momnet::LoadOptions{false});
  CHECK_FALSE(report.ok());
  CHECK(report.missing_keys == std::vector<std::string>{"0.bias", "2.running_mean"});
  CHECK(report.unexpected_keys == std::vector<std::string>{"1.9.fc1.weight", "extra.weight"});
  REQUIRE(report.mismatches.size() == 1);
  CHECK(report.mismatches[0].key == "3.weight");
  CHECK(report.loaded_keys.size() == 14 - 3);
  auto& first = model.get<momnet::Linear<double>>(0);
  auto& source_first = source.get<momnet::Linear<double>>(0);
  CHECK(first.weight().array().isApprox(source_first.weight().array(), 0.0));
  CHECK_FALSE(first.bias().array().isApprox(source_first.bias().array(), 0.0));  // missing: kept
  auto& stats = model.get<Stats<double>>(2);
  CHECK(stats.num_batches_tracked.data()[0] == source.get<Stats<double>>(2).num_batches_tracked.data()[0]);
  CHECK(model.get<momnet::Linear<double>>(3).weight().shape() == Shape{3, 6});
}

TEST_CASE("Loading converts F64, F16 and BF16 files into a float model; integer buffers take integers only",
          "[io][state_dict]") {
  TempPath path;
  auto wide = make_model<double>(5);
  momnet::save(wide, path.str());
  auto narrow = make_model<float>(6);
  CHECK(momnet::load(narrow, path.str()).ok());
  const auto wide_state = momnet::state_of(wide);
  const auto narrow_state = momnet::state_of(narrow);
  for (std::size_t i = 0; i < wide_state.size(); ++i) {
    for (Eigen::Index j = 0; j < wide_state[i].shape.size(); ++j) {
      if (wide_state[i].real != nullptr) {
        REQUIRE(narrow_state[i].real[j] == static_cast<float>(wide_state[i].real[j]));
      } else {
        REQUIRE(narrow_state[i].integer[j] == wide_state[i].integer[j]);
      }
    }
  }

  // Half precision: parameters stored as F16 and BF16 load as those values.
  std::vector<NamedTensor> tensors;
  for (const auto& s : narrow_state) {
    if (s.real != nullptr) {
      tensors.emplace_back(s.name, static_cast<const float*>(s.real), s.shape, s.name[0] == '1' ? Dtype::BF16 : Dtype::F16);
    } else {
      tensors.emplace_back(s.name, static_cast<const std::int64_t*>(s.integer), s.shape);
    }
  }
  momnet::write_safetensors(path.str(), tensors);
  auto half = make_model<float>(7);
  CHECK(momnet::load(half, path.str()).ok());
  const auto half_state = momnet::state_of(half);
  for (std::size_t i = 0; i < half_state.size(); ++i) {
    if (half_state[i].real == nullptr) continue;
    const bool bf = half_state[i].name[0] == '1';
    for (Eigen::Index j = 0; j < half_state[i].shape.size(); ++j) {
      const double original = narrow_state[i].real[j];
      const double expected = bf ? momnet::detail::bf16_to_double(momnet::detail::double_to_bf16(original))
                                 : momnet::detail::f16_to_double(momnet::detail::double_to_f16(original));
      REQUIRE(half_state[i].real[j] == static_cast<float>(expected));
    }
  }

  // num_batches_tracked written as F32: reported, not truncated.
  tensors.clear();
  for (const auto& s : narrow_state) tensors.emplace_back(s.name, static_cast<const float*>(s.real != nullptr ? s.real : narrow_state[0].real), s.shape);
  momnet::write_safetensors(path.str(), tensors);
  REQUIRE_THROWS_EXACT(momnet::load(half, path.str()), momnet::StateDictError,
                       "dtype mismatch for 2.num_batches_tracked: cannot copy F32 from checkpoint into an int64 buffer");
}

TEST_CASE("Loading a parameter marks it modified: a tape recorded before refuses its backward pass",
          "[io][state_dict]") {
  TempPath path;
  momnet::Rng rng(4);
  momnet::Linear<double> layer(3, 2, rng);
  momnet::save(layer, path.str());
  CHECK(momnet::SafetensorsFile(path.str()).contains("weight"));
  momnet::Tape<double> tape;
  const momnet::Var<double> x = tape.variable(momnet_test::uniform(Shape{2, 3}, 1));
  const momnet::Var<double> loss = momnet::sum(layer.forward(tape, x));
  const std::uint64_t version = layer.weight().version();
  momnet::load(layer, path.str());
  CHECK(layer.weight().version() == version + 1);
  REQUIRE_THROWS_AS(tape.backward(loss), std::logic_error);
}

TEST_CASE("save_state and load_state checkpoint an explicit list of values", "[io][state_dict]") {
  TempPath path;
  Tensor<double> moment(Shape{2, 2});
  moment.array() << 1, 2, 3, 4;
  Tensor<std::int64_t> step{Shape{}};
  step.data()[0] = 41;
  double raw[3] = {0.5, -0.5, 8};
  momnet::save_state<double>({momnet::StateRef<double>::of("adam.exp_avg", moment),
                              momnet::StateRef<double>::of("adam.step", step),
                              momnet::StateRef<double>::of("raw", raw, Shape{3})},
                             path.str(), {{"kind", "optimizer"}});
  Tensor<double> moment2(Shape{2, 2});
  Tensor<std::int64_t> step2{Shape{}};
  double raw2[3] = {};
  const auto report = momnet::load_state<double>({momnet::StateRef<double>::of("adam.exp_avg", moment2),
                                                  momnet::StateRef<double>::of("adam.step", step2),
                                                  momnet::StateRef<double>::of("raw", raw2, Shape{3})},
                                                 path.str());
  CHECK(report.ok());
  CHECK(report.metadata.at("kind") == "optimizer");
  CHECK(moment2.array().isApprox(moment.array(), 0.0));
  CHECK(step2.data()[0] == 41);
  CHECK(raw2[2] == 8);
}
