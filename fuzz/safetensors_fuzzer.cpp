// libFuzzer target for momnet's safetensors reader (include/momnet/io/safetensors.hpp).
//
// Any input must either throw momnet::FormatError or give a file whose every
// tensor can be read; anything else (another exception, a crash, a read out
// of bounds, undefined behaviour) is a bug. An accepted file must also survive
// a round trip through the writer unchanged: the same names, dtypes, shapes,
// bytes and metadata.
//
// Build and run: see fuzz/README.md. Built with -DMOMNET_FUZZ_MAIN (and
// without -fsanitize=fuzzer) it is a plain program that runs the files named
// on its command line, to replay the corpus with any compiler.
#include <momnet/io/safetensors.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

[[noreturn]] void bug(const std::string& what) {
  std::fprintf(stderr, "safetensors_fuzzer: %s\n", what.c_str());
  std::abort();
}

// Reads every byte of every tensor and converts it as a loader would.
void read_everything(const momnet::SafetensorsFile& file) {
  volatile std::uint8_t sink = 0;
  for (const momnet::TensorEntry& e : file.entries()) {
    const momnet::ByteView bytes = file.bytes(e.name);
    if (bytes.size != e.bytes()) bug("bytes() size differs from the entry's for '" + e.name + "'");
    for (std::size_t i = 0; i < bytes.size; ++i) sink = static_cast<std::uint8_t>(sink ^ bytes.data[i]);
    try {
      const momnet::Tensor<double> t = file.tensor<double>(e.name);
      if (static_cast<std::size_t>(t.size()) != e.elements()) bug("tensor() size differs for '" + e.name + "'");
      (void)file.tensor<float>(e.name);
    } catch (const std::invalid_argument&) {
      if (e.shape.size() <= 4) bug("tensor() refused '" + e.name + "' of rank <= 4");
    }
    if (!momnet::is_floating(e.dtype)) {
      try {
        (void)file.int64s(e.name);
      } catch (const std::range_error&) {
        if (e.dtype != momnet::Dtype::U64) bug("int64s() out of range for '" + e.name + "' of a narrow dtype");
      }
    }
  }
}

void round_trip(const momnet::SafetensorsFile& file) {
  std::vector<momnet::NamedTensor> tensors;
  for (const momnet::TensorEntry& e : file.entries()) {
    tensors.push_back(momnet::NamedTensor::raw(e.name, e.dtype, e.shape, file.bytes(e.name)));
  }
  const std::vector<std::uint8_t> bytes = momnet::serialize_safetensors(tensors, file.metadata());
  std::optional<momnet::SafetensorsFile> again;
  try {
    again.emplace(momnet::SafetensorsFile::parse(bytes.data(), bytes.size(), "round trip"));
  } catch (const momnet::FormatError& e) {
    bug(std::string("the writer's file does not read back: ") + e.what());
  }
  if (again->metadata() != file.metadata()) bug("metadata changed in a round trip");
  if (again->entries().size() != file.entries().size()) bug("tensor count changed in a round trip");
  for (const momnet::TensorEntry& e : file.entries()) {
    if (!again->contains(e.name)) bug("tensor '" + e.name + "' lost in a round trip");
    const momnet::TensorEntry& f = again->entry(e.name);
    const momnet::ByteView a = file.bytes(e.name), b = again->bytes(e.name);
    if (f.dtype != e.dtype || f.shape != e.shape || a.size != b.size ||
        (a.size != 0 && std::memcmp(a.data, b.data, a.size) != 0)) {
      bug("tensor '" + e.name + "' changed in a round trip");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::optional<momnet::SafetensorsFile> file;
  try {
    file.emplace(momnet::SafetensorsFile::parse(data, size, "fuzz input"));
  } catch (const momnet::FormatError& e) {
    if (std::strstr(e.what(), "'fuzz input'") == nullptr) bug(std::string("an error not naming the file: ") + e.what());
    return 0;
  }
  read_everything(*file);
  round_trip(*file);
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
