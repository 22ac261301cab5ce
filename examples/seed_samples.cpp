// The project seed's two code samples, in C++:
//
//   (a) the reference package's
//         resnet = torchvision.models.resnet18(weights=...)
//         mresnet = transform_to_momentumnet(resnet, gamma=0.99)
//       with a torchvision-layout ResNet whose weights come from a
//       safetensors file (torchvision's names), then to_momentum(resnet, 0.99);
//   (b) nn.Transformer(num_encoder_layers=6, num_decoder_layers=6) with its
//       encoder and decoder layers converted: to_momentum(transformer, 0.9).
//
//   seed_samples [--resnet-weights=FILE] [--resnet=18|34|50|101] [--image=64]
//                [--small] [--help]
//
// --resnet-weights: torchvision's weights, written for instance with the
// project's safetensors writer (the safetensors package is not in Debian):
//
//   /usr/bin/python3 -c "import sys, torchvision; sys.path.insert(0, 'scripts'); import torch_reference as t
//   t.write_safetensors('resnet18.safetensors', torchvision.models.resnet18(weights='DEFAULT').state_dict(), {})"
//
// or, where the safetensors package is installed:
//   from safetensors.torch import save_file
//   save_file(torchvision.models.resnet18(weights="DEFAULT").state_dict(), "resnet18.safetensors")
//
// (weights=None for a random network without a download). Without the
// option, the program makes a random ResNet, saves it and loads it into
// another one (the round trip a checkpoint makes). --small shrinks both
// models (ResNet widths 8..64, Transformer d_model 32, feed-forward 64, the
// same names and depths) for a quick run; ctest runs it so. Exits with 1 when
// something does not hold: the round trip changed a value, the momentum
// ResNet at gamma 0 is not the ResNet, a gradient is not finite.
#include <momnet/io/state_dict.hpp>
#include <momnet/models/resnet.hpp>
#include <momnet/models/transformer.hpp>
#include <momnet/momnet.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

using namespace momnet;

namespace {

struct Settings {
  std::string resnet_weights;  // empty: a random ResNet, saved and reloaded
  int resnet_depth = 18;
  Eigen::Index image = 64;
  bool small = false;
};

void usage() {
  std::cout << "usage: seed_samples [--resnet-weights=FILE] [--resnet=18|34|50|101] [--image=64] [--small]\n"
               "  FILE: torchvision's state_dict as safetensors (see the top of examples/seed_samples.cpp)\n";
}

Settings parse(int argc, char** argv) {
  Settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const std::size_t equals = arg.find('=');
    const std::string key = arg.substr(0, equals);
    const std::string value = equals == std::string::npos ? std::string() : arg.substr(equals + 1);
    if (key == "--help" || key == "-h") {
      usage();
      std::exit(0);
    } else if (key == "--resnet-weights") {
      s.resnet_weights = value;
    } else if (key == "--resnet") {
      s.resnet_depth = std::stoi(value);
      if (s.resnet_depth != 18 && s.resnet_depth != 34 && s.resnet_depth != 50 && s.resnet_depth != 101) {
        throw std::invalid_argument("--resnet: 18, 34, 50 or 101, got " + value);
      }
    } else if (key == "--image") {
      s.image = std::stol(value);
      if (s.image < 32) throw std::invalid_argument("--image: at least 32 (five stride-2 steps), got " + value);
    } else if (key == "--small") {
      s.small = true;
    } else {
      usage();
      throw std::invalid_argument("unknown argument " + arg);
    }
  }
  if (s.small && !s.resnet_weights.empty()) {
    throw std::invalid_argument("--small changes the widths: torchvision's weights need the full ones");
  }
  return s;
}

ResNetConfig resnet_config(const Settings& s) {
  ResNetConfig c = s.resnet_depth == 18   ? ResNetConfig::resnet18()
                   : s.resnet_depth == 34 ? ResNetConfig::resnet34()
                   : s.resnet_depth == 50 ? ResNetConfig::resnet50()
                                          : ResNetConfig::resnet101();
  if (s.small) {
    c.widths = {8, 16, 32, 64};
    c.stem_width = 8;
    c.num_classes = 10;
  }
  return c;
}

Tensor<float> random_tensor(const Shape& shape, Rng& rng) {
  Tensor<float> t(shape);
  for (Eigen::Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<float>(rng.normal());
  return t;
}

// max |a - b| / max |a|
double relative_difference(const Tensor<float>& a, const Tensor<float>& b) {
  double difference = 0, scale = 0;
  for (Eigen::Index i = 0; i < a.size(); ++i) {
    difference = std::max(difference, std::abs(static_cast<double>(a.data()[i]) - b.data()[i]));
    scale = std::max(scale, std::abs(static_cast<double>(a.data()[i])));
  }
  return scale > 0 ? difference / scale : difference;
}

Tensor<float> eval_output(Sequential<float>& net, const Tensor<float>& input) {
  set_training(net, false);  // torchvision's model.eval(): batch norms use their running statistics
  Tape<float> tape;
  const Var<float> out = net.forward(tape, tape.constant(input));
  Tensor<float> result(out.shape());
  std::copy(out.data(), out.data() + out.size(), result.data());
  return result;
}

template <class Model>
std::size_t parameter_bytes(Model& model) {
  std::size_t bytes = 0;
  for_each_parameter(model, [&bytes](Parameter<float>& p) { bytes += p.bytes(); });
  return bytes;
}

template <class Model>
std::vector<std::string> state_names(Model& model) {
  std::vector<std::string> names;
  for (const auto& entry : state_of(model)) names.push_back(entry.name);
  return names;
}

// The first and last `shown` parameter names, and how many state_dict entries there are.
template <class Model>
void print_names(Model& model, std::size_t shown) {
  const auto parameters = named_parameters(model);
  std::printf("  %zu state_dict entries, %zu parameters:", state_of(model).size(), parameters.size());
  for (std::size_t i = 0; i < parameters.size(); ++i) {
    if (i < shown || i + shown >= parameters.size()) {
      std::printf(" %s%s", parameters[i].first.c_str(), i + 1 < parameters.size() ? "," : "\n");
    } else if (i == shown) {
      std::printf(" ...,");
    }
  }
}

double mib(std::size_t bytes) { return static_cast<double>(bytes) / 1048576.0; }

// Sample (a). Returns false when a check fails.
bool resnet_sample(const Settings& s) {
  const ResNetConfig config = resnet_config(s);
  std::printf("(a) ResNet-%d in torchvision's layout%s\n", s.resnet_depth, s.small ? " (--small widths)" : "");
  Rng rng(1);
  Sequential<float> resnet = momnet::resnet<float>(config, rng);
  bool ok = true;
  if (!s.resnet_weights.empty()) {
    const LoadReport report = load(resnet, s.resnet_weights);  // strict: every name and shape, or it throws
    std::printf("  loaded %zu tensors from %s\n", report.loaded_keys.size(), s.resnet_weights.c_str());
  } else {
    // A random ResNet (running statistics too, so that they travel) saved
    // and loaded into another one of a different initialisation.
    Sequential<float> original = momnet::resnet<float>(config, rng);
    for (auto& [name, b] : named_buffers(original)) {
      if (b.real == nullptr) continue;
      const bool variance = name.find("running_var") != std::string::npos;
      for (Eigen::Index i = 0; i < b.real->size(); ++i) {
        b.real->data()[i] = static_cast<float>(variance ? rng.uniform(0.5, 1.5) : 0.1 * rng.normal());
      }
    }
    const auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
    const std::filesystem::path path =
        std::filesystem::temp_directory_path() / ("momnet_seed_samples_" + std::to_string(stamp) + ".safetensors");
    save(original, path.string(), {{"model", "resnet" + std::to_string(s.resnet_depth)}});
    const LoadReport report = load(resnet, path.string());
    const auto size = std::filesystem::file_size(path);
    std::filesystem::remove(path);
    bool same = true;
    const auto a = state_of(original), b = state_of(resnet);
    for (std::size_t i = 0; i < a.size(); ++i) {
      const Eigen::Index n = a[i].shape.size();
      same = same && a[i].name == b[i].name &&
             (a[i].real != nullptr ? std::equal(a[i].real, a[i].real + n, b[i].real)
                                   : std::equal(a[i].integer, a[i].integer + n, b[i].integer));
    }
    std::printf("  no --resnet-weights: a random ResNet saved (%.1f MiB of safetensors) and loaded, %zu tensors, %s\n",
                mib(size), report.loaded_keys.size(), same ? "every value identical" : "VALUES DIFFER");
    ok = ok && same;
  }
  // The seed's conversion, and the same at gamma 0 (stored: the exact
  // inverse divides by gamma), where the momentum network is the ResNet.
  Sequential<float> momentum = to_momentum(resnet, 0.99);
  MomentumOptions stored;
  stored.mode = BackwardMode::stored;
  Sequential<float> momentum0 = to_momentum(resnet, 0.0, stored);
  print_names(momentum, 3);
  const bool same_names = state_names(momentum) == state_names(resnet);
  std::printf("  parameters: ResNet %ld, to_momentum(resnet, 0.99) %ld; state_dict names %s\n",
              static_cast<long>(parameter_count(resnet)), static_cast<long>(parameter_count(momentum)),
              same_names ? "the same (torchvision's)" : "DIFFERENT");
  ok = ok && same_names;

  Rng data(2);
  const Tensor<float> input = random_tensor(Shape{2, config.in_channels, s.image, s.image}, data);
  const Tensor<float> out = eval_output(resnet, input);
  const double at0 = relative_difference(out, eval_output(momentum0, input));
  const double at99 = relative_difference(out, eval_output(momentum, input));
  std::printf("  a batch of 2 images %ldx%ld, eval mode, logits max |momentum - resnet| / max |resnet|:\n",
              static_cast<long>(s.image), static_cast<long>(s.image));
  std::printf("    gamma 0:    %.3g (the ResNet itself, up to the fixed-point rounding of the state)\n", at0);
  std::printf("    gamma 0.99: %.3g: the same weights, another function. Each block enters through the\n"
              "      velocity, v = 0.99 v + 0.01 (block(x) - x), so at first a block moves x by a hundredth\n"
              "      of what it does in the ResNet; the converted network is fine-tuned before use.\n",
              at99);
  ok = ok && at0 <= 1e-4 && std::isfinite(at99);
  return ok;
}

// One training step (forward, loss, backward) of a Transformer on random
// embedded sequences with a causal mask and key padding; returns the tape's
// peak bytes, prints whether every gradient is finite.
template <class Model>
std::size_t transformer_step(Model& model, Eigen::Index d_model, bool* finite) {
  Rng data(3);
  const Eigen::Index batch = 2, src_len = 10, tgt_len = 9;
  Tape<float> tape(std::size_t{64} << 10);  // small arena chunks: the peak tracks what is held
  const Var<float> src = tape.variable(random_tensor(Shape{batch, src_len, d_model}, data));
  const Var<float> tgt = tape.variable(random_tensor(Shape{batch, tgt_len, d_model}, data));
  TransformerMasks<float> masks;
  masks.tgt_mask = tape.constant(Model::generate_square_subsequent_mask(tgt_len));
  masks.src_key_padding_mask = tape.constant(key_padding_mask<float>({src_len, 7}, src_len));
  masks.memory_key_padding_mask = masks.src_key_padding_mask;
  masks.tgt_key_padding_mask = tape.constant(key_padding_mask<float>({tgt_len, 6}, tgt_len));
  zero_grad(model);
  train(model);  // dropout 0.1, as nn.Transformer's default
  const Var<float> loss = mean(square(model(tape, src, tgt, masks)));
  tape.backward(loss);
  bool all = std::isfinite(loss.item());
  for (Parameter<float>* p : parameters_of(model)) all = all && p->grad_array().isFinite().all();
  all = all && src.grad().array().isFinite().all() && tgt.grad().array().isFinite().all();
  *finite = all;
  return tape.memory().peak_bytes();
}

// Sample (b). Returns false when a check fails.
bool transformer_sample(const Settings& s) {
  TransformerOptions options;  // nn.Transformer's defaults: d_model 512, 8 heads, 6 + 6 layers, feed-forward 2048
  if (s.small) {
    options.d_model = 32;
    options.nhead = 4;
    options.dim_feedforward = 64;
  }
  std::printf("(b) Transformer(%zu, %zu): d_model %ld, %ld heads, feed-forward %ld, dropout %.1f%s\n",
              options.num_encoder_layers, options.num_decoder_layers, static_cast<long>(options.d_model),
              static_cast<long>(options.nhead), static_cast<long>(options.dim_feedforward), options.dropout,
              s.small ? " (--small)" : "");
  Rng rng(4);
  std::optional<Transformer<float>> transformer(std::in_place, options, rng);
  bool finite_plain = false, finite_momentum = false;
  const std::size_t plain_peak = transformer_step(*transformer, options.d_model, &finite_plain);
  const Eigen::Index plain_count = parameter_count(*transformer);
  const std::size_t plain_bytes = parameter_bytes(*transformer);

  // The seed's transform_to_momentumnet(transformer, ["encoder.layers",
  // "decoder.layers"]): both layer stacks become MomentumResiduals, the
  // final norms stay; the plain model is not needed after it.
  Transformer<float, MomentumResidual> momentum = to_momentum(*transformer, 0.9);
  transformer.reset();
  const std::size_t momentum_peak = transformer_step(momentum, options.d_model, &finite_momentum);
  print_names(momentum, 2);
  std::printf("  parameters: Transformer %ld, Momentum Transformer %ld (%.1f MiB each, values and gradients)\n",
              static_cast<long>(plain_count), static_cast<long>(parameter_count(momentum)), mib(plain_bytes));
  // PyTorch 1.13: sum(p.numel() for p in nn.Transformer().parameters())
  const Eigen::Index torch_count = 44140544;
  if (!s.small) std::printf("  nn.Transformer() has %ld: %s\n", static_cast<long>(torch_count),
                            plain_count == torch_count ? "the same" : "DIFFERENT");
  std::printf("  one training step (batch 2, src 10, tgt 9), the tape's peak memory:\n"
              "    Transformer %.2f MiB, Momentum Transformer (exact backward) %.2f MiB\n",
              mib(plain_peak), mib(momentum_peak));
  std::printf("  gradients finite: %s, %s\n", finite_plain ? "yes" : "NO", finite_momentum ? "yes" : "NO");
  return finite_plain && finite_momentum && plain_count == parameter_count(momentum) &&
         parameter_bytes(momentum) == plain_bytes && (s.small || plain_count == torch_count);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Settings settings = parse(argc, argv);
    const bool resnet_ok = resnet_sample(settings);
    std::printf("\n");
    const bool transformer_ok = transformer_sample(settings);
    return resnet_ok && transformer_ok ? 0 : 1;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "seed_samples: %s\n", error.what());
    return 2;
  }
}
