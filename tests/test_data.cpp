// Data loading: IDX files (raw and gzip) written and read back for every type
// and rank, with their exact bytes; each kind of damaged file refused with a
// message naming the file and the problem; image data sets (scaling,
// normalisation, slices, statistics); Fashion-MNIST from a fake directory and
// the message when it is missing; the loader's epochs (every index once,
// reproducible shuffles, drop_last, disjoint covering shards); and the
// augmentations' outputs on tiny known images and their determinism.
// The real Fashion-MNIST is checked by a hidden test ([.real]).
#include <catch2/catch.hpp>

#include <momnet/data/augment.hpp>
#include <momnet/data/batch_iterator.hpp>
#include <momnet/data/idx.hpp>
#include <momnet/data/image_dataset.hpp>

#include "support.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using momnet::Augmentation;
using momnet::AugmentKey;
using momnet::DataLoader;
using momnet::DataLoaderOptions;
using momnet::IdxArray;
using momnet::IdxType;
using momnet::ImageDataset;
using momnet::RandomCrop;
using momnet::RandomHorizontalFlip;
using momnet::Shape;
using momnet::Tensor;
using Bytes = std::vector<unsigned char>;
using Index = Eigen::Index;

#ifdef MOMNET_HAVE_ZLIB
constexpr bool have_zlib = true;
#else
constexpr bool have_zlib = false;
#endif

// A fresh directory under the system's temporary directory, removed with
// everything in it at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::random_device entropy;
    for (;;) {
      path_ = fs::temp_directory_path() / ("momnet-test-data-" + std::to_string(entropy()) + std::to_string(entropy()));
      if (fs::create_directory(path_)) break;
    }
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

// Sets an environment variable for the scope of a test, then restores it.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    if (value != nullptr) {
      setenv(name, value, 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (had_) {
      setenv(name_.c_str(), old_.c_str(), 1);
    } else {
      unsetenv(name_.c_str());
    }
  }

 private:
  std::string name_, old_;
  bool had_ = false;
};

void write_bytes(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

Bytes read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A raw IDX file's bytes: header then `data` as given (already big-endian).
Bytes idx_bytes(std::uint8_t type, const std::vector<std::uint32_t>& dims, const Bytes& data) {
  Bytes b = {0, 0, type, static_cast<unsigned char>(dims.size())};
  for (std::uint32_t d : dims) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<unsigned char>(d >> s));
  }
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

template <class V>
std::vector<V> sample_values(std::size_t n) {
  std::vector<V> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    const double x = (static_cast<double>(i) * 37.0 + 11.0) - static_cast<double>(n) * 3.0;
    if constexpr (std::is_floating_point_v<V>) {
      v[i] = static_cast<V>(x / 7.0);
    } else if constexpr (std::is_unsigned_v<V>) {
      v[i] = static_cast<V>((i * 53 + 7) % 256);
    } else {
      v[i] = static_cast<V>(static_cast<long long>(x) % 100);
    }
  }
  return v;
}

// An ubyte images file [n, h, w] whose pixel (k, y, x) is (k * 16 + y * w + x) % 256, and labels k % 10.
void write_fake_split(const std::string& images, const std::string& labels, std::int64_t n, std::int64_t h,
                      std::int64_t w, int label_offset = 0) {
  std::vector<std::uint8_t> pixels(static_cast<std::size_t>(n * h * w));
  for (std::size_t i = 0; i < pixels.size(); ++i) {
    const auto k = static_cast<std::int64_t>(i) / (h * w), r = static_cast<std::int64_t>(i) % (h * w);
    pixels[i] = static_cast<std::uint8_t>((k * 16 + r) % 256);
  }
  std::vector<std::uint8_t> l(static_cast<std::size_t>(n));
  for (std::size_t k = 0; k < l.size(); ++k) l[k] = static_cast<std::uint8_t>((static_cast<int>(k) + label_offset) % 10);
  momnet::write_idx(images, momnet::make_idx<std::uint8_t>({n, h, w}, pixels));
  momnet::write_idx(labels, momnet::make_idx<std::uint8_t>({n}, l));
}

// A data set of n images [c, h, w] whose values are their flat index, labels index % 7.
template <class T>
ImageDataset<T> counting_dataset(Index n, Index c = 1, Index h = 2, Index w = 3) {
  Tensor<T> images(Shape{n, c, h, w});
  for (Index i = 0; i < images.size(); ++i) images.data()[i] = static_cast<T>(i);
  std::vector<int> labels(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<int>(i % 7);
  return ImageDataset<T>(std::move(images), std::move(labels));
}

[[maybe_unused]] std::string read_idx_message(const std::string& path) {
  try {
    momnet::read_idx(path);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "(no exception)";
}

}  // namespace

// ---- IDX files ----------------------------------------------------------------

TEMPLATE_TEST_CASE("IDX files round-trip raw and gzipped, for every type and rank", "[data][idx]", std::uint8_t,
                   std::int8_t, std::int16_t, std::int32_t, float, double) {
  using V = TestType;
  TempDir dir;
  const std::vector<std::vector<std::int64_t>> shapes = {{7}, {3, 5}, {2, 3, 4}, {2, 1, 3, 2}, {2, 0, 3}, {1, 1, 1, 1, 1}};
  for (const auto& dims : shapes) {
    std::size_t n = 1;
    for (auto d : dims) n *= static_cast<std::size_t>(d);
    const std::vector<V> values = sample_values<V>(n);
    const IdxArray array = momnet::make_idx(dims, values);
    CHECK(array.type == momnet::idx_type_of<V>::value);
    CHECK(array.size() == n);
    for (const std::string name : {"a.idx", "a.idx.gz"}) {
      if (!have_zlib && name == "a.idx.gz") continue;
      CAPTURE(name, dims.size());
      momnet::write_idx(dir / name, array);
      const IdxArray back = momnet::read_idx(dir / name);
      CHECK(back.type == array.type);
      CHECK(back.dims == dims);
      CHECK(back.values<V>() == values);
      if (name == "a.idx") {
        CHECK(read_bytes(dir / name).size() == 4 + 4 * dims.size() + n * sizeof(V));
      } else {
        const Bytes packed = read_bytes(dir / name);
        REQUIRE(packed.size() >= 2);
        CHECK((packed[0] == 0x1F && packed[1] == 0x8B));
      }
    }
  }
}

TEST_CASE("IDX files are big-endian, byte for byte", "[data][idx]") {
  TempDir dir;
  momnet::write_idx(dir / "x", momnet::make_idx<std::int16_t>({2}, {0x0102, -2}));
  CHECK(read_bytes(dir / "x") == Bytes{0, 0, 0x0B, 1, 0, 0, 0, 2, 0x01, 0x02, 0xFF, 0xFE});

  // float32 1.0f is 3F 80 00 00, float64 -2.0 is C0 00 ... 00.
  write_bytes(dir / "f", idx_bytes(0x0D, {1}, {0x3F, 0x80, 0, 0}));
  CHECK(momnet::read_idx(dir / "f").values<float>() == std::vector<float>{1.0f});
  write_bytes(dir / "d", idx_bytes(0x0E, {1}, {0xC0, 0, 0, 0, 0, 0, 0, 0}));
  CHECK(momnet::read_idx(dir / "d").values<double>() == std::vector<double>{-2.0});
  write_bytes(dir / "i", idx_bytes(0x0C, {2, 1}, {0xFF, 0xFF, 0xFF, 0xFE, 0x00, 0x01, 0x00, 0x00}));
  const IdxArray i = momnet::read_idx(dir / "i");
  CHECK(i.dims == std::vector<std::int64_t>{2, 1});
  CHECK(i.values<std::int32_t>() == std::vector<std::int32_t>{-2, 65536});
  // values<V>() converts between types.
  CHECK(i.values<double>() == std::vector<double>{-2.0, 65536.0});
}

TEST_CASE("read_idx refuses damaged files, naming the file and the problem", "[data][idx]") {
  TempDir dir;
  const auto check = [&](const Bytes& bytes, const std::vector<std::string>& parts) {
    const std::string path = dir / "bad-file";
    write_bytes(path, bytes);
    std::vector<std::string> all = parts;
    all.push_back("momnet::read_idx");
    all.push_back("'" + path + "'");
    REQUIRE_THROWS_MATCHES(momnet::read_idx(path), std::runtime_error,
                           momnet_test::ExceptionIs<std::runtime_error>(all));
  };
  const Bytes good = idx_bytes(0x08, {2, 3}, {1, 2, 3, 4, 5, 6});

  SECTION("missing") {
    const std::string path = dir / "nothing-here";
    REQUIRE_THROWS_EXACT(momnet::read_idx(path), std::runtime_error, "momnet::read_idx", "'" + path + "'",
                         "cannot open", "No such file or directory");
  }
  SECTION("a directory") {
    REQUIRE_THROWS_EXACT(momnet::read_idx(dir.str()), std::runtime_error, "'" + dir.str() + "'", "cannot open",
                         "Is a directory");
  }
  SECTION("truncated header") {
    check({}, {"truncated header", "the file has 0 bytes"});
    check({0, 0, 8}, {"truncated header", "has 3 bytes", "at least 4"});
    check(Bytes(good.begin(), good.begin() + 9), {"truncated header", "rank 2 needs a 12-byte header", "has 9 bytes"});
  }
  SECTION("wrong magic") {
    Bytes b = good;
    b[0] = 1;
    check(b, {"wrong magic number", "starts with 0x01 0x00", "two zero bytes"});
    check({0x1F, 0x8B, 8, 0, 0, 0}, {"wrong magic number", "looks gzip-compressed"});
  }
  SECTION("unknown type") {
    Bytes b = good;
    b[2] = 0x07;
    check(b, {"wrong magic number", "unknown element type code 0x07", "0x08 ubyte"});
  }
  SECTION("rank 0 or absurd") {
    check({0, 0, 8, 0, 1, 2}, {"wrong magic number", "rank 0", "ranks 1 to 8"});
    check(idx_bytes(0x08, std::vector<std::uint32_t>(200, 1), {1}), {"wrong magic number", "rank 200"});
  }
  SECTION("negative dimension") {
    check(idx_bytes(0x08, {2, 0xFFFFFFFEu}, {}), {"dimension 1 is negative (-2)"});
  }
  SECTION("dimensions whose product overflows") {
    check(idx_bytes(0x0E, {0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF}, {}),
          {"size overflow", "[2147483647, 2147483647, 2147483647] of float64"});
  }
  SECTION("truncated data") {
    check(Bytes(good.begin(), good.end() - 1), {"truncated data", "[2, 3] of ubyte", "need 6 bytes", "has 5"});
    check(idx_bytes(0x0C, {3}, Bytes(11, 0)), {"truncated data", "[3] of int32 need 12 bytes", "the file has 11"});
  }
  SECTION("trailing bytes") {
    Bytes b = good;
    b.push_back(0);
    b.push_back(0);
    check(b, {"trailing bytes", "need 6 bytes", "the file has 8 (2 too many)"});
  }
}

TEST_CASE("read_idx reads gzip files only with zlib, and refuses damaged ones", "[data][idx]") {
  TempDir dir;
  const std::string path = dir / "x.idx.gz";
#ifndef MOMNET_HAVE_ZLIB
  write_bytes(path, {0x1F, 0x8B});
  REQUIRE_THROWS_EXACT(momnet::read_idx(path), std::runtime_error, "'" + path + "'", "built without zlib",
                       "momnet::data", "decompress");
  REQUIRE_THROWS_EXACT(momnet::write_idx(path, momnet::make_idx<std::uint8_t>({1}, {1})), std::runtime_error,
                       "momnet::write_idx", "built without zlib");
#else
  std::vector<std::uint8_t> values(1000);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<std::uint8_t>(i * i % 251);
  momnet::write_idx(path, momnet::make_idx<std::uint8_t>({10, 100}, values));
  const Bytes packed = read_bytes(path);
  REQUIRE(packed.size() > 30);
  const auto message_for = [&](const Bytes& bytes) {
    write_bytes(path, bytes);
    return read_idx_message(path);
  };
  const auto has = [](const std::string& message, const std::string& part) {
    return message.find(part) != std::string::npos;
  };

  SECTION("a damaged checksum") {
    Bytes b = packed;
    b[b.size() - 6] ^= 0x55;  // inside the CRC-32 of the trailer
    const std::string m = message_for(b);
    CHECK(has(m, "'" + path + "'"));
    CHECK(has(m, "corrupt gzip stream"));
    CHECK(has(m, "incorrect data check"));
  }
  SECTION("damaged compressed data") {
    Bytes b = packed;
    for (std::size_t i = 12; i < b.size() - 8; i += 3) b[i] ^= 0xA5;
    const std::string m = message_for(b);
    CHECK(has(m, "'" + path + "'"));
    CHECK((has(m, "corrupt gzip stream") || has(m, "truncated gzip stream")));
  }
  SECTION("truncated") {
    const std::string m = message_for(Bytes(packed.begin(), packed.end() - 5));
    CHECK(has(m, "'" + path + "'"));
    CHECK(has(m, "truncated gzip stream"));
  }
  SECTION("not gzip at all") {
    const std::string m = message_for(idx_bytes(0x08, {1}, {1}));
    CHECK(has(m, "corrupt gzip stream: no gzip header"));
  }
  SECTION("garbage after the gzip data") {
    Bytes b = packed;
    b.push_back(0);
    CHECK(has(message_for(b), "corrupt gzip stream: 1 bytes of trailing garbage"));
  }
  // Arbitrary bytes gzipped (write_idx only gzips whole IDX files).
  const auto gzip = [&](const Bytes& content) {
    return momnet::detail::gzip("test", "memory", content.data(), content.size());
  };
  SECTION("concatenated gzip members read as one file, as gzip does") {
    const std::string whole = dir / "whole.idx";
    momnet::write_idx(whole, momnet::make_idx<std::uint8_t>({10, 100}, values));
    const Bytes raw = read_bytes(whole);
    Bytes two = gzip(Bytes(raw.begin(), raw.begin() + 10));
    const Bytes rest = gzip(Bytes(raw.begin() + 10, raw.end()));
    two.insert(two.end(), rest.begin(), rest.end());
    write_bytes(path, two);
    const IdxArray back = momnet::read_idx(path);
    CHECK(back.dims == std::vector<std::int64_t>{10, 100});
    CHECK(back.values<std::uint8_t>() == values);
  }
  SECTION("an IDX problem inside a good gzip stream") {
    const std::string m = message_for(gzip(idx_bytes(0x08, {3}, {1, 2, 3, 4})));
    CHECK(has(m, "'" + path + "'"));
    CHECK(has(m, "trailing bytes"));
    CHECK(has(m, "the file has 4 (1 too many, once decompressed)"));
    CHECK(has(message_for(gzip({0, 0, 8})), "truncated header: the file has 3 bytes once decompressed"));
  }
#endif
}

TEST_CASE("write_idx refuses invalid arrays and unwritable paths", "[data][idx]") {
  TempDir dir;
  IdxArray a = momnet::make_idx<std::uint8_t>({2, 2}, {1, 2, 3, 4});
  a.data.pop_back();
  REQUIRE_THROWS_EXACT(momnet::write_idx(dir / "x", a), std::invalid_argument, "momnet::write_idx",
                       "[2, 2] of ubyte need 4 bytes of data, the array holds 3");
  IdxArray b = momnet::make_idx<std::uint8_t>({1}, {1});
  b.dims.clear();
  REQUIRE_THROWS_EXACT(momnet::write_idx(dir / "x", b), std::invalid_argument, "rank 0");
  IdxArray c = momnet::make_idx<std::uint8_t>({1}, {1});
  c.dims = {std::int64_t{1} << 31};
  REQUIRE_THROWS_EXACT(momnet::write_idx(dir / "x", c), std::invalid_argument, "2147483648", "outside");
  const std::string nowhere = dir / "no-such-directory/x";
  REQUIRE_THROWS_EXACT(momnet::write_idx(nowhere, momnet::make_idx<std::uint8_t>({1}, {1})), std::runtime_error,
                       "momnet::write_idx", "'" + nowhere + "'", "cannot open for writing",
                       "No such file or directory");
  REQUIRE_THROWS_EXACT(momnet::make_idx<float>({2, 2}, {1.f, 2.f, 3.f}), std::invalid_argument,
                       "momnet::make_idx", "[2, 2] do not hold 3 values");
}

TEST_CASE("parse_idx and serialize_idx are read_idx and write_idx on bytes in memory", "[data][idx]") {
  TempDir dir;
  const IdxArray a = momnet::make_idx<std::int16_t>({2, 3}, {1, -2, 3, -4, 5, 0x0102});
  const Bytes raw = momnet::serialize_idx(a, "a", false);
  momnet::write_idx(dir / "a.idx", a);
  CHECK(raw == read_bytes(dir / "a.idx"));
  const IdxArray back = momnet::parse_idx(raw.data(), raw.size(), "a", false);
  CHECK(back.type == a.type);
  CHECK(back.dims == a.dims);
  CHECK(back.data == a.data);
  if (have_zlib) {
    const Bytes packed = momnet::serialize_idx(a, "a", true);
    REQUIRE(packed.size() >= 2);
    CHECK((packed[0] == 0x1F && packed[1] == 0x8B));
    CHECK(momnet::parse_idx(packed.data(), packed.size(), "a", true).data == a.data);
    write_bytes(dir / "b.idx.gz", packed);
    CHECK(momnet::read_idx(dir / "b.idx.gz").data == a.data);
  } else {
    REQUIRE_THROWS_EXACT(momnet::serialize_idx(a, "a", true), std::runtime_error, "momnet::serialize_idx: 'a': ",
                         "built without zlib");
    REQUIRE_THROWS_EXACT(momnet::parse_idx(raw.data(), raw.size(), "a", true), std::runtime_error,
                         "momnet::parse_idx: 'a': ", "built without zlib");
  }
  // The label stands for the file's name in the errors.
  REQUIRE_THROWS_EXACT(momnet::parse_idx(raw.data(), raw.size() - 1, "my label", false), std::runtime_error,
                       "momnet::parse_idx: 'my label': truncated data", "[2, 3] of int16 need 12 bytes",
                       "the file has 11");
  REQUIRE_THROWS_EXACT(momnet::parse_idx(nullptr, 0, "nothing", false), std::runtime_error,
                       "momnet::parse_idx: 'nothing': truncated header: the file has 0 bytes");
  IdxArray bad = a;
  bad.data.pop_back();
  REQUIRE_THROWS_EXACT(momnet::serialize_idx(bad, "bad", false), std::invalid_argument,
                       "momnet::serialize_idx: 'bad': ", "need 12 bytes of data, the array holds 11");
}

TEST_CASE("read_idx refuses a gzip bomb without inflating it into memory", "[data][idx]") {
#ifdef MOMNET_HAVE_ZLIB
  TempDir dir;
  const std::string path = dir / "bomb.idx.gz";
  const auto gzip = [](const Bytes& content) {
    return momnet::detail::gzip("test", "memory", content.data(), content.size());
  };
  // 1 MiB of zeros gzips to about 1 KiB: 256 such members after a valid file
  // make 256 MiB of trailing zeros from 260 KiB. The reader keeps the 10
  // bytes the header asks for and stops counting past 1 MiB more.
  const Bytes member = gzip(Bytes(std::size_t{1} << 20, 0));
  const auto bomb = [&](const Bytes& idx, int mebibytes) {
    Bytes b = gzip(idx);
    for (int i = 0; i < mebibytes; ++i) b.insert(b.end(), member.begin(), member.end());
    return b;
  };
  write_bytes(path, bomb(idx_bytes(0x08, {2}, {1, 2}), 256));
  const std::string m = read_idx_message(path);
  CHECK(m.find("momnet::read_idx: '" + path + "': trailing bytes: dimensions [2] of ubyte need 2 bytes of data after "
               "the 8-byte header, the file has at least ") == 0);
  CHECK(m.find("too many, once decompressed)") != std::string::npos);
  CHECK(m.find("268435458") == std::string::npos);  // the whole stream's size: it did not read it all
  // A damaged header is reported as such, without reading the rest either.
  write_bytes(path, bomb({0, 0, 0x07, 1, 0, 0, 0, 2, 1, 2}, 256));
  REQUIRE_THROWS_EXACT(momnet::read_idx(path), std::runtime_error, "'" + path + "'", "unknown element type code 0x07");
  // A header claiming 2^62 bytes costs only what the stream holds.
  const Bytes huge = bomb(idx_bytes(0x08, {0x7FFFFFFF, 0x7FFFFFFF}, {}), 4);
  REQUIRE_THROWS_EXACT(momnet::parse_idx(huge.data(), huge.size(), "huge", true), std::runtime_error,
                       "momnet::parse_idx: 'huge': truncated data", "[2147483647, 2147483647] of ubyte need",
                       "the file has 4194304 (once decompressed)");
#endif
}

// Each input below is a fuzz/idx_fuzzer.cpp finding (without its mode byte),
// with what the reader must do with it.
TEST_CASE("IDX inputs found by fuzzing are rejected cleanly", "[data][idx]") {
  const auto parse = [](const Bytes& b, bool gzip) { return momnet::parse_idx(b.data(), b.size(), "found", gzip); };
  const auto gzip = [](const Bytes& content) {
#ifdef MOMNET_HAVE_ZLIB
    return momnet::detail::gzip("test", "memory", content.data(), content.size());
#else
    return content;
#endif
  };
  SECTION("a zero dimension after others whose product overflows: an empty array, not an overflow") {
    // int16 [1, 1, 65535, 1421735005, 2019558160, 1024, 1677721600, 0]:
    // the product of the first seven is past 2^64, the eighth makes it 0.
    const Bytes found = {0x00, 0x00, 0x0B, 0x08, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01,
                         0x00, 0x00, 0xFF, 0xFF, 0x54, 0xBD, 0xF4, 0x5D, 0x78, 0x60, 0x03, 0x10,
                         0x00, 0x00, 0x04, 0x00, 0x64, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
    const std::vector<std::int64_t> dims = {1, 1, 65535, 1421735005, 2019558160, 1024, 1677721600, 0};
    const IdxArray a = parse(found, false);
    CHECK(a.type == IdxType::int16);
    CHECK(a.dims == dims);
    CHECK(a.data.empty());
    CHECK(a.size() == 0);
    CHECK(momnet::serialize_idx(a, "found", false) == found);
    if (have_zlib) CHECK(parse(gzip(found), true).dims == dims);
    // Without the zero it is an overflow; with data after it, trailing bytes.
    Bytes full = found;
    full[35] = 1;
    REQUIRE_THROWS_EXACT(parse(full, false), std::runtime_error, "momnet::parse_idx: 'found': size overflow");
    Bytes trailing = found;
    trailing.push_back(0);
    REQUIRE_THROWS_EXACT(parse(trailing, false), std::runtime_error, "trailing bytes", "need 0 bytes",
                         "the file has 1 (1 too many)");
    if (have_zlib) {
      REQUIRE_THROWS_EXACT(parse(gzip(full), true), std::runtime_error, "size overflow");
      REQUIRE_THROWS_EXACT(parse(gzip(trailing), true), std::runtime_error, "(1 too many, once decompressed)");
    }
  }
}

// ---- data sets ----------------------------------------------------------------

TEMPLATE_TEST_CASE("load_idx_dataset scales ubyte images to [0, 1] and reads labels", "[data][dataset]", float,
                   double) {
  using T = TestType;
  TempDir dir;
  SECTION("[N, H, W] images get one channel") {
    momnet::write_idx(dir / "img", momnet::make_idx<std::uint8_t>({2, 1, 3}, {0, 51, 255, 1, 2, 128}));
    momnet::write_idx(dir / "lbl", momnet::make_idx<std::uint8_t>({2}, {7, 3}));
    const ImageDataset<T> d = momnet::load_idx_dataset<T>(dir / "img", dir / "lbl");
    CHECK(d.size() == 2);
    CHECK(d.images().shape() == Shape{2, 1, 1, 3});
    CHECK(d.image_shape() == Shape{1, 1, 3});
    CHECK(d.labels() == std::vector<int>{7, 3});
    const std::vector<T> expected = {T(0), T(51) / T(255), T(1), T(1) / T(255), T(2) / T(255), T(128) / T(255)};
    CHECK(std::vector<T>(d.images().data(), d.images().data() + 6) == expected);
    CHECK(d.image(1)[2] == T(128) / T(255));
    CHECK(d.label(1) == 3);
    CHECK_THROWS_AS(d.image(2), std::out_of_range);
  }
  SECTION("[N, C, H, W] images, float32 values kept, int32 labels") {
    const std::vector<float> v = {0.5f, -1.25f, 3.0f, 4.0f, 5.5f, 6.0f, -7.0f, 8.0f};
    momnet::write_idx(dir / "img", momnet::make_idx<float>({2, 2, 2, 1}, v));
    momnet::write_idx(dir / "lbl", momnet::make_idx<std::int32_t>({2}, {-1, 100000}));
    const ImageDataset<T> d = momnet::load_idx_dataset<T>(dir / "img", dir / "lbl");
    CHECK(d.images().shape() == Shape{2, 2, 2, 1});
    for (std::size_t i = 0; i < v.size(); ++i) CHECK(d.images().data()[i] == static_cast<T>(v[i]));
    CHECK(d.labels() == std::vector<int>{-1, 100000});
  }
  SECTION("errors name the files") {
    momnet::write_idx(dir / "img", momnet::make_idx<std::uint8_t>({3, 2, 2}, std::vector<std::uint8_t>(12, 1)));
    momnet::write_idx(dir / "lbl2", momnet::make_idx<std::uint8_t>({2}, {1, 2}));
    REQUIRE_THROWS_EXACT(momnet::load_idx_dataset<T>(dir / "img", dir / "lbl2"), std::runtime_error,
                         "momnet::load_idx_dataset", "'" + dir / "img" + "' holds 3 images",
                         "'" + dir / "lbl2" + "' holds 2 labels");
    momnet::write_idx(dir / "lbl3", momnet::make_idx<std::uint8_t>({3, 1}, {1, 2, 3}));
    REQUIRE_THROWS_EXACT(momnet::load_idx_dataset<T>(dir / "img", dir / "lbl3"), std::runtime_error,
                         "'" + dir / "lbl3" + "'", "labels must be [N], the file holds [3, 1]");
    momnet::write_idx(dir / "lblf", momnet::make_idx<float>({3}, {1, 2, 3}));
    REQUIRE_THROWS_EXACT(momnet::load_idx_dataset<T>(dir / "img", dir / "lblf"), std::runtime_error,
                         "'" + dir / "lblf" + "'", "labels of type float32");
    momnet::write_idx(dir / "img2", momnet::make_idx<std::uint8_t>({3, 4}, std::vector<std::uint8_t>(12, 1)));
    REQUIRE_THROWS_EXACT(momnet::load_idx_dataset<T>(dir / "img2", dir / "lbl2"), std::runtime_error,
                         "'" + dir / "img2" + "'", "[N, H, W] or [N, C, H, W]", "[3, 4]");
    momnet::write_idx(dir / "img16", momnet::make_idx<std::int16_t>({1, 1, 1}, {1}));
    REQUIRE_THROWS_EXACT(momnet::load_idx_dataset<T>(dir / "img16", dir / "lbl2"), std::runtime_error,
                         "'" + dir / "img16" + "'", "images of type int16");
    REQUIRE_THROWS_EXACT(momnet::load_idx_dataset<T>(dir / "none", dir / "lbl2"), std::runtime_error,
                         "'" + dir / "none" + "'", "cannot open");
  }
}

TEMPLATE_TEST_CASE("ImageDataset normalises per channel as torchvision's Normalize", "[data][dataset]", float,
                   double) {
  using T = TestType;
  ImageDataset<T> d = counting_dataset<T>(3, 2, 2, 2);  // values 0..23
  const ImageDataset<T> original = d;
  d.normalise({1.0, -2.0}, {0.5, 4.0});
  for (Index n = 0; n < 3; ++n) {
    for (Index c = 0; c < 2; ++c) {
      for (Index i = 0; i < 4; ++i) {
        const Index at = (n * 2 + c) * 4 + i;
        const T m = c == 0 ? T(1.0) : T(-2.0), s = c == 0 ? T(0.5) : T(4.0);
        CHECK(d.images().data()[at] == (original.images().data()[at] - m) / s);
      }
    }
  }
  ImageDataset<T> e = original;
  e.normalise(0.25, 2.0);  // one value for every channel
  for (Index i = 0; i < e.images().size(); ++i) {
    CHECK(e.images().data()[i] == (original.images().data()[i] - T(0.25)) / T(2.0));
  }
  REQUIRE_THROWS_EXACT(d.normalise({0.0, 0.0}, {1.0, 0.0}), std::invalid_argument,
                       "momnet::ImageDataset::normalise", "std[1] = 0.000000 must be positive");
  REQUIRE_THROWS_EXACT(d.normalise({0.0}, {-1.0}), std::invalid_argument, "std[0] = -1.0");
  REQUIRE_THROWS_EXACT(d.normalise({0.0}, {NAN}), std::invalid_argument, "std[0]");
  REQUIRE_THROWS_EXACT(d.normalise({0.0, 0.0, 0.0}, {1.0}), std::invalid_argument,
                       "mean has 3 values for 2 channel(s)");
  REQUIRE_THROWS_EXACT(d.normalise({INFINITY}, {1.0}), std::invalid_argument, "mean[0]", "not finite");
}

TEMPLATE_TEST_CASE("ImageDataset slices and statistics", "[data][dataset]", float, double) {
  using T = TestType;
  const ImageDataset<T> d = counting_dataset<T>(5, 1, 2, 3);
  const ImageDataset<T> t = d.take(2, 2);
  CHECK(t.size() == 2);
  CHECK(t.images().shape() == Shape{2, 1, 2, 3});
  CHECK(t.images().data()[0] == T(12));
  CHECK(t.images().data()[11] == T(23));
  CHECK(t.labels() == std::vector<int>{2, 3});
  CHECK(d.subset(3).size() == 3);
  CHECK(d.subset(3).labels() == std::vector<int>{0, 1, 2});
  CHECK(d.subset(99).size() == 5);
  CHECK(d.take(5, 0).size() == 0);
  REQUIRE_THROWS_EXACT(d.take(4, 2), std::invalid_argument, "momnet::ImageDataset::take", "[4, 4 + 2)",
                       "data set of 5");
  REQUIRE_THROWS_EXACT(d.take(-1, 1), std::invalid_argument, "momnet::ImageDataset::take");
  REQUIRE_THROWS_EXACT(d.subset(-1), std::invalid_argument, "count must be >= 0");

  // Two channels: channel 0 holds 0..5, channel 1 holds 10 everywhere.
  Tensor<T> images(Shape{2, 2, 1, 3});
  for (Index i = 0; i < 3; ++i) {
    images.data()[i] = T(i);
    images.data()[6 + i] = T(3 + i);
    images.data()[3 + i] = images.data()[9 + i] = T(10);
  }
  const ImageDataset<T> s(std::move(images), {0, 1});
  const std::vector<double> mean = s.channel_mean(), stddev = s.channel_std();
  REQUIRE(mean.size() == 2);
  CHECK(mean[0] == Approx(2.5));
  CHECK(mean[1] == Approx(10.0));
  CHECK(stddev[0] == Approx(std::sqrt(17.5 / 6.0)));
  CHECK(stddev[1] == 0.0);

  REQUIRE_THROWS_EXACT(ImageDataset<T>(Tensor<T>(Shape{2, 3}), {0, 1}), std::invalid_argument,
                       "must be [N, C, H, W]", "[2, 3]");
  REQUIRE_THROWS_EXACT(ImageDataset<T>(Tensor<T>(Shape{2, 1, 1, 1}), {0}), std::invalid_argument,
                       "2 images but 1 labels");
}

TEST_CASE("load_fashion_mnist reads a directory given or from MOMNET_FASHION_MNIST", "[data][dataset]") {
  TempDir dir;
  // The train split gzipped (and a raw copy with other labels, to see which is
  // read), the test split raw only.
  write_fake_split(dir / "train-images-idx3-ubyte", dir / "train-labels-idx1-ubyte", 6, 4, 5, 3);
  if (have_zlib) write_fake_split(dir / "train-images-idx3-ubyte.gz", dir / "train-labels-idx1-ubyte.gz", 6, 4, 5);
  write_fake_split(dir / "t10k-images-idx3-ubyte", dir / "t10k-labels-idx1-ubyte", 3, 4, 5);

  const auto train = momnet::load_fashion_mnist<float>(dir.str(), momnet::Split::train);
  CHECK(train.size() == 6);
  CHECK(train.image_shape() == Shape{1, 4, 5});
  // .gz preferred when zlib can read it.
  CHECK(train.labels() == (have_zlib ? std::vector<int>{0, 1, 2, 3, 4, 5} : std::vector<int>{3, 4, 5, 6, 7, 8}));
  CHECK(train.images().data()[20 + 3] == 19.0f / 255.0f);  // image 1, pixel 3: 16 + 3
  const auto test = momnet::load_fashion_mnist<double>(dir.str(), momnet::Split::test);
  CHECK(test.size() == 3);
  CHECK(test.labels() == std::vector<int>{0, 1, 2});

  {
    ScopedEnv env("MOMNET_FASHION_MNIST", dir.str().c_str());
    CHECK(momnet::fashion_mnist_directory() == dir.str());
    CHECK(momnet::load_fashion_mnist<float>(momnet::Split::test).size() == 3);
  }
  {
    ScopedEnv env("MOMNET_FASHION_MNIST", nullptr);
    CHECK(momnet::fashion_mnist_directory() == "/usr/share/datasets/fashion-mnist");
  }
  {
    ScopedEnv env("MOMNET_FASHION_MNIST", "");
    CHECK(momnet::fashion_mnist_directory() == "/usr/share/datasets/fashion-mnist");
  }

  const std::vector<std::string> classes = momnet::fashion_mnist_classes();
  REQUIRE(classes.size() == 10);
  CHECK(classes[0] == "T-shirt/top");
  CHECK(classes[9] == "Ankle boot");

  // Labels outside 0..9.
  TempDir bad;
  momnet::write_idx(bad / "t10k-images-idx3-ubyte", momnet::make_idx<std::uint8_t>({1, 1, 1}, {0}));
  momnet::write_idx(bad / "t10k-labels-idx1-ubyte", momnet::make_idx<std::uint8_t>({1}, {10}));
  REQUIRE_THROWS_EXACT(momnet::load_fashion_mnist<float>(bad.str(), momnet::Split::test), std::runtime_error,
                       "momnet::load_fashion_mnist", "t10k-labels-idx1-ubyte'", "label 0 is 10", "0 to 9");
}

TEST_CASE("load_fashion_mnist says which files it looked for and how to install them", "[data][dataset]") {
  TempDir dir;
  const std::string images = dir / "train-images-idx3-ubyte", labels = dir / "train-labels-idx1-ubyte";
  REQUIRE_THROWS_EXACT(momnet::load_fashion_mnist<float>(dir.str(), momnet::Split::train), std::runtime_error,
                       "momnet::load_fashion_mnist", "train split is not in '" + dir.str() + "'",
                       "'" + images + ".gz' or '" + images + "'", "'" + labels + ".gz' or '" + labels + "'",
                       "apt-get install dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist",
                       "MOMNET_FASHION_MNIST");
  // Only the labels missing: only they are listed.
  momnet::write_idx(dir / "t10k-images-idx3-ubyte", momnet::make_idx<std::uint8_t>({1, 1, 1}, {0}));
  try {
    momnet::load_fashion_mnist<float>(dir.str(), momnet::Split::test);
    FAIL("no exception");
  } catch (const std::runtime_error& e) {
    const std::string m = e.what();
    CHECK(m.find("t10k-labels-idx1-ubyte.gz") != std::string::npos);
    CHECK(m.find("t10k-images") == std::string::npos);
  }
  ScopedEnv env("MOMNET_FASHION_MNIST", (dir / "absent").c_str());
  REQUIRE_THROWS_EXACT(momnet::load_fashion_mnist<float>(momnet::Split::test), std::runtime_error,
                       "test split is not in '" + dir / "absent" + "'");
}

TEST_CASE("the real Fashion-MNIST: 60000 and 10000 images of 28 x 28, labels 0..9", "[data][dataset][.real]") {
  const std::string directory = momnet::fashion_mnist_directory();
  if (!fs::exists(directory)) {
    WARN("no Fashion-MNIST in " << directory << ": apt-get install dataset-fashion-mnist");
    return;
  }
  for (const auto split : {momnet::Split::train, momnet::Split::test}) {
    const auto d = momnet::load_fashion_mnist<float>(directory, split);
    const Index n = split == momnet::Split::train ? 60000 : 10000;
    CHECK(d.size() == n);
    CHECK(d.image_shape() == Shape{1, 28, 28});
    std::vector<Index> per_class(10, 0);
    for (int label : d.labels()) ++per_class[static_cast<std::size_t>(label)];  // 0..9: load_fashion_mnist checks
    // Fashion-MNIST is balanced.
    for (Index count : per_class) CHECK(count == n / 10);
    const auto values = d.images().array();
    CHECK(values.minCoeff() == 0.0f);
    CHECK(values.maxCoeff() == 1.0f);
    if (split == momnet::Split::train) {
      // The statistics usually quoted for normalising Fashion-MNIST.
      CHECK(d.channel_mean()[0] == Approx(0.2860).margin(1e-4));
      CHECK(d.channel_std()[0] == Approx(0.3530).margin(1e-4));
    }
  }
}

// ---- the loader ---------------------------------------------------------------

TEMPLATE_TEST_CASE("DataLoader yields every index once per epoch, in reproducible shuffles", "[data][loader]", float,
                   double) {
  using T = TestType;
  const ImageDataset<T> d = counting_dataset<T>(23);
  DataLoaderOptions o;
  o.batch_size = 5;
  o.shuffle = true;
  o.seed = 42;
  DataLoader<T> loader(d, o);
  CHECK(loader.batches_per_epoch() == 5);
  CHECK(loader.samples_per_epoch() == 23);
  std::vector<std::vector<std::int64_t>> orders;
  for (std::uint64_t epoch = 0; epoch < 4; ++epoch) {
    loader.set_epoch(epoch);
    std::vector<std::int64_t> seen;
    Index batches = 0;
    for (const momnet::Batch<T>& batch : loader) {
      ++batches;
      CHECK(batch.size() == (batches < 5 ? 5 : 3));
      CHECK(batch.images.shape() == Shape{batch.size(), 1, 2, 3});
      for (Index k = 0; k < batch.size(); ++k) {
        const std::int64_t index = batch.indices[static_cast<std::size_t>(k)];
        seen.push_back(index);
        CHECK(batch.labels[static_cast<std::size_t>(k)] == d.label(index));
        CHECK(std::equal(batch.images.data() + k * 6, batch.images.data() + (k + 1) * 6, d.image(index)));
      }
    }
    CHECK(batches == 5);
    CHECK(seen == loader.order());
    std::vector<std::int64_t> sorted = seen;
    std::sort(sorted.begin(), sorted.end());
    std::vector<std::int64_t> all(23);
    std::iota(all.begin(), all.end(), std::int64_t{0});
    CHECK(sorted == all);
    CHECK(seen != all);
    orders.push_back(seen);
  }
  for (std::size_t a = 0; a < orders.size(); ++a) {
    for (std::size_t b = a + 1; b < orders.size(); ++b) CHECK(orders[a] != orders[b]);
  }
  // The same (seed, epoch) gives the same order, in any loader, in any sequence.
  DataLoader<T> again(d, o);
  again.set_epoch(2);
  CHECK(again.order() == orders[2]);
  again.set_epoch(0);
  CHECK(again.order() == orders[0]);
  CHECK(again.epoch() == 0);
  // Another seed, another order.
  o.seed = 43;
  DataLoader<T> other(d, o);
  CHECK(other.order() != orders[0]);
  // Without shuffling: the data set's order.
  o.shuffle = false;
  DataLoader<T> plain(d, o);
  plain.set_epoch(7);
  CHECK(plain.order()[0] == 0);
  CHECK(plain.order()[22] == 22);
  CHECK(plain.batch(4).indices == std::vector<std::int64_t>{20, 21, 22});
}

TEST_CASE("DataLoader's drop_last, batch counts and reused storage", "[data][loader]") {
  const ImageDataset<float> ten = counting_dataset<float>(10);
  const ImageDataset<float> eight = counting_dataset<float>(8);
  const auto loader_of = [](const ImageDataset<float>& d, Index batch, bool drop_last) {
    DataLoaderOptions o;
    o.batch_size = batch;
    o.drop_last = drop_last;
    return DataLoader<float>(d, o);
  };
  auto keep = loader_of(ten, 4, false);
  CHECK(keep.batches_per_epoch() == 3);
  CHECK(keep.samples_per_epoch() == 10);
  CHECK(keep.batch(2).size() == 2);
  CHECK(keep.batch(2).indices == std::vector<std::int64_t>{8, 9});
  auto drop = loader_of(ten, 4, true);
  CHECK(drop.batches_per_epoch() == 2);
  CHECK(drop.samples_per_epoch() == 8);
  Index count = 0;
  for (const auto& batch : drop) {
    CHECK(batch.size() == 4);
    ++count;
  }
  CHECK(count == 2);
  REQUIRE_THROWS_EXACT(drop.batch(2), std::out_of_range, "momnet::DataLoader::batch", "batch 2 of an epoch of 2");
  CHECK(loader_of(eight, 4, false).batches_per_epoch() == 2);
  CHECK(loader_of(eight, 4, true).batches_per_epoch() == 2);
  CHECK(loader_of(eight, 20, false).batches_per_epoch() == 1);
  CHECK(loader_of(eight, 20, true).batches_per_epoch() == 0);
  const ImageDataset<float> none = counting_dataset<float>(0);
  auto empty = loader_of(none, 3, false);
  CHECK(empty.batches_per_epoch() == 0);
  CHECK(empty.begin() == empty.end());

  // Full batches reuse one buffer.
  auto reuse = loader_of(ten, 3, false);
  const float* first = reuse.batch(0).images.data();
  CHECK(reuse.batch(1).images.data() == first);
  CHECK(reuse.batch(1).indices == std::vector<std::int64_t>{3, 4, 5});

  DataLoaderOptions o;
  o.batch_size = 0;
  REQUIRE_THROWS_EXACT(DataLoader<float>(ten, o), std::invalid_argument, "momnet::DataLoader",
                       "batch_size must be positive, got 0");
  o.batch_size = 2;
  o.num_replicas = 0;
  REQUIRE_THROWS_EXACT(DataLoader<float>(ten, o), std::invalid_argument, "num_replicas must be positive, got 0");
  o.num_replicas = 3;
  o.rank = 3;
  REQUIRE_THROWS_EXACT(DataLoader<float>(ten, o), std::invalid_argument, "rank 3 is outside [0, num_replicas = 3)");
  o.rank = -1;
  REQUIRE_THROWS_EXACT(DataLoader<float>(ten, o), std::invalid_argument, "rank -1");
  o.rank = 0;
  REQUIRE_THROWS_EXACT(DataLoader<float>(ten, o, Augmentation<float>(RandomCrop(5))), std::invalid_argument,
                       "momnet::RandomCrop", "the crop 5x5 is larger than the padded image 2x3");
}

TEST_CASE("DataLoader's shards are disjoint and cover the data set", "[data][loader]") {
  const ImageDataset<double> d = counting_dataset<double>(11);
  for (const bool shuffle : {false, true}) {
    for (const std::uint64_t epoch : {0u, 5u}) {
      std::vector<std::int64_t> all;
      std::vector<std::size_t> sizes;
      for (Index rank = 0; rank < 3; ++rank) {
        DataLoaderOptions o;
        o.batch_size = 2;
        o.shuffle = shuffle;
        o.seed = 9;
        o.num_replicas = 3;
        o.rank = rank;
        DataLoader<double> loader(d, o);
        loader.set_epoch(epoch);
        sizes.push_back(loader.order().size());
        CHECK(loader.batches_per_epoch() == (rank < 2 ? 2 : 2));
        for (const auto& batch : loader) all.insert(all.end(), batch.indices.begin(), batch.indices.end());
        // Each shard is every third position of the unsharded order.
        const std::vector<std::int64_t> whole = momnet::epoch_order(11, shuffle, 9, epoch);
        for (std::size_t k = 0; k < loader.order().size(); ++k) {
          CHECK(loader.order()[k] == whole[static_cast<std::size_t>(rank) + 3 * k]);
        }
      }
      CHECK(sizes == std::vector<std::size_t>{4, 4, 3});
      std::sort(all.begin(), all.end());
      std::vector<std::int64_t> expected(11);
      std::iota(expected.begin(), expected.end(), std::int64_t{0});
      CHECK(all == expected);  // disjoint (no duplicate) and covering
    }
  }
}

// ---- augmentation -------------------------------------------------------------

TEST_CASE("RandomHorizontalFlip mirrors the columns with probability p", "[data][augment]") {
  // 2 channels of 2 x 3.
  const std::vector<float> image = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  const Shape shape{2, 2, 3};
  std::vector<float> out(12);
  RandomHorizontalFlip always(1.0), never(0.0);
  always(image.data(), shape, out.data(), momnet::CounterRng(1, 2, 3));
  CHECK(out == std::vector<float>{3, 2, 1, 6, 5, 4, 9, 8, 7, 12, 11, 10});
  never(image.data(), shape, out.data(), momnet::CounterRng(1, 2, 3));
  CHECK(out == image);

  // p = 0.5: about half flip, the same ones every time.
  RandomHorizontalFlip half;
  int flips = 0;
  for (std::uint64_t i = 0; i < 1000; ++i) {
    const bool f = half.flips(Augmentation<float>::random(AugmentKey{7, 0, i}, 0));
    CHECK(f == half.flips(Augmentation<float>::random(AugmentKey{7, 0, i}, 0)));
    flips += f;
  }
  CHECK(flips > 430);
  CHECK(flips < 570);

  REQUIRE_THROWS_EXACT(RandomHorizontalFlip(1.5), std::invalid_argument, "momnet::RandomHorizontalFlip",
                       "p must be in [0, 1], got 1.5");
  REQUIRE_THROWS_EXACT(RandomHorizontalFlip(NAN), std::invalid_argument, "p must be in [0, 1]");
  REQUIRE_THROWS_EXACT(half.output_shape(Shape{2, 3}), std::invalid_argument, "must be [C, H, W]", "[2, 3]");
}

TEMPLATE_TEST_CASE("RandomCrop pads with the fill value and crops at a drawn offset", "[data][augment]", float,
                   double) {
  using T = TestType;
  // 1 x 3 x 3:  1 2 3 / 4 5 6 / 7 8 9
  const std::vector<T> image = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  const Shape shape{1, 3, 3};
  const RandomCrop crop(3, 1);
  CHECK(crop.output_shape(shape) == Shape{1, 3, 3});
  // Find keys that draw the corners and the centre of the 3 x 3 offsets.
  std::set<std::pair<Index, Index>> drawn;
  std::vector<T> out(9);
  for (std::uint64_t i = 0; i < 200; ++i) {
    const auto random = Augmentation<T>::random(AugmentKey{1, 0, i}, 0);
    const auto offset = crop.offset(shape, random);
    drawn.insert(offset);
    crop(image.data(), shape, out.data(), random);
    // The reference: the explicitly zero-padded 5 x 5 image, cropped.
    for (Index y = 0; y < 3; ++y) {
      for (Index x = 0; x < 3; ++x) {
        const Index sy = offset.first + y - 1, sx = offset.second + x - 1;
        const T expected = (sy < 0 || sy >= 3 || sx < 0 || sx >= 3) ? T(0) : image[static_cast<std::size_t>(sy * 3 + sx)];
        CHECK(out[static_cast<std::size_t>(y * 3 + x)] == expected);
      }
    }
    if (offset == std::pair<Index, Index>{0, 0}) CHECK(out == std::vector<T>{0, 0, 0, 0, 1, 2, 0, 4, 5});
    if (offset == std::pair<Index, Index>{2, 2}) CHECK(out == std::vector<T>{5, 6, 0, 8, 9, 0, 0, 0, 0});
    if (offset == std::pair<Index, Index>{1, 1}) CHECK(out == image);
    if (offset == std::pair<Index, Index>{0, 2}) CHECK(out == std::vector<T>{0, 0, 0, 2, 3, 0, 5, 6, 0});
  }
  CHECK(drawn.size() == 9);  // every offset in [0, 2] x [0, 2] occurs

  // A smaller rectangle without padding, and a fill value.
  const RandomCrop rect({2, 3}, 0);
  CHECK(rect.output_shape(Shape{2, 4, 3}) == Shape{2, 2, 3});
  std::vector<T> tall(24);
  for (std::size_t i = 0; i < tall.size(); ++i) tall[i] = T(i);
  std::vector<T> piece(12);
  for (std::uint64_t i = 0; i < 20; ++i) {
    const auto random = Augmentation<T>::random(AugmentKey{0, 0, i}, 0);
    const auto [top, left] = rect.offset(Shape{2, 4, 3}, random);
    CHECK(left == 0);
    CHECK(top <= 2);
    rect(tall.data(), Shape{2, 4, 3}, piece.data(), random);
    for (Index c = 0; c < 2; ++c) {
      for (Index k = 0; k < 6; ++k) CHECK(piece[static_cast<std::size_t>(c * 6 + k)] == T(c * 12 + top * 3 + k));
    }
  }
  const RandomCrop filled(2, 2, -0.5);
  std::vector<T> corner(4);
  for (std::uint64_t i = 0;; ++i) {
    const auto random = Augmentation<T>::random(AugmentKey{0, 0, i}, 0);
    if (filled.offset(shape, random) != std::pair<Index, Index>{0, 4}) continue;
    filled(image.data(), shape, corner.data(), random);
    CHECK(corner == std::vector<T>{T(-0.5), T(-0.5), T(-0.5), T(-0.5)});
    break;
  }

  REQUIRE_THROWS_EXACT(RandomCrop(4).output_shape(shape), std::invalid_argument, "momnet::RandomCrop",
                       "the crop 4x4 is larger than the padded image 3x3 (image 3x3, padding 0)");
  REQUIRE_THROWS_EXACT(RandomCrop({2, 6}, 1).output_shape(shape), std::invalid_argument,
                       "the crop 2x6 is larger than the padded image 5x5");
  REQUIRE_THROWS_EXACT(RandomCrop(0), std::invalid_argument, "the crop size must be positive, got 0x0");
  REQUIRE_THROWS_EXACT(RandomCrop(2, -1), std::invalid_argument, "padding must be >= 0, got -1");
  REQUIRE_THROWS_EXACT(RandomCrop(2, 0, NAN), std::invalid_argument, "fill must be finite");
}

TEST_CASE("Augmentation composes transforms with draws keyed by (seed, epoch, index)", "[data][augment]") {
  std::vector<double> image(2 * 4 * 4);
  for (std::size_t i = 0; i < image.size(); ++i) image[i] = static_cast<double>(i) + 1;
  const Shape shape{2, 4, 4};
  const RandomCrop crop(3, 1);
  const RandomHorizontalFlip flip;
  const Augmentation<double> both(crop, flip);
  CHECK(both.size() == 2);
  CHECK(both.output_shape(shape) == Shape{2, 3, 3});
  std::vector<double> out(18), step(18), expected(18);
  std::set<std::vector<double>> distinct;
  for (std::uint64_t i = 0; i < 50; ++i) {
    const AugmentKey key{3, 1, i};
    both.apply(image.data(), shape, out.data(), key);
    // The same as the two transforms by hand, each with its own stream.
    crop(image.data(), shape, step.data(), Augmentation<double>::random(key, 0));
    flip(step.data(), Shape{2, 3, 3}, expected.data(), Augmentation<double>::random(key, 1));
    CHECK(out == expected);
    distinct.insert(out);
    // Deterministic.
    std::vector<double> again(18);
    both.apply(image.data(), shape, again.data(), key);
    CHECK(again == out);
  }
  CHECK(distinct.size() > 10);
  // Another epoch or seed draws differently for some sample.
  bool epoch_differs = false, seed_differs = false;
  for (std::uint64_t i = 0; i < 20; ++i) {
    std::vector<double> a(18), b(18), c(18);
    both.apply(image.data(), shape, a.data(), AugmentKey{3, 1, i});
    both.apply(image.data(), shape, b.data(), AugmentKey{3, 2, i});
    both.apply(image.data(), shape, c.data(), AugmentKey{4, 1, i});
    epoch_differs = epoch_differs || a != b;
    seed_differs = seed_differs || a != c;
  }
  CHECK(epoch_differs);
  CHECK(seed_differs);

  // Empty: a copy.
  const Augmentation<double> none;
  std::vector<double> copy(image.size());
  none.apply(image.data(), shape, copy.data(), AugmentKey{});
  CHECK(copy == image);
  CHECK(none.output_shape(shape) == shape);
  // Three steps (two scratch buffers in turn), a crop that shrinks the image.
  Augmentation<double> three(RandomCrop(3), RandomHorizontalFlip(1.0));
  three.then(RandomHorizontalFlip(1.0));
  const Augmentation<double> crop_only{RandomCrop(3)};
  std::vector<double> x(18), y(18);
  three.apply(image.data(), shape, x.data(), AugmentKey{0, 0, 5});
  crop_only.apply(image.data(), shape, y.data(), AugmentKey{0, 0, 5});
  CHECK(x == y);
  REQUIRE_THROWS_EXACT(Augmentation<double>(RandomCrop(2), RandomCrop(3)).output_shape(shape),
                       std::invalid_argument, "the crop 3x3 is larger than the padded image 2x2");
}

TEST_CASE("DataLoader's augmented images do not depend on the batch order", "[data][loader][augment]") {
  const ImageDataset<float> d = counting_dataset<float>(13, 1, 4, 4);
  const Augmentation<float> augment(RandomCrop(4, 2), RandomHorizontalFlip());
  const auto images_by_index = [&](Index batch_size, bool shuffle, std::uint64_t epoch) {
    DataLoaderOptions o;
    o.batch_size = batch_size;
    o.shuffle = shuffle;
    o.seed = 11;
    DataLoader<float> loader(d, o, augment);
    loader.set_epoch(epoch);
    CHECK(loader.image_shape() == Shape{1, 4, 4});
    std::vector<std::vector<float>> by_index(13);
    for (const auto& batch : loader) {
      for (Index k = 0; k < batch.size(); ++k) {
        const float* p = batch.images.data() + k * 16;
        by_index[static_cast<std::size_t>(batch.indices[static_cast<std::size_t>(k)])] = std::vector<float>(p, p + 16);
      }
    }
    return by_index;
  };
  const auto a = images_by_index(3, true, 4);
  CHECK(a == images_by_index(5, false, 4));
  CHECK(a == images_by_index(13, true, 4));
  CHECK(a != images_by_index(3, true, 5));
  // Each is the augmentation of its image, keyed by (seed, epoch, index).
  std::vector<float> expected(16);
  augment.apply(d.image(6), Shape{1, 4, 4}, expected.data(), AugmentKey{11, 4, 6});
  CHECK(a[6] == expected);
}
