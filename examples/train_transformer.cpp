// Trains a Transformer and its Momentum counterpart (the same initial
// parameters, converted with to_momentum) to reverse sequences of random
// tokens, and reports held-out token accuracy (teacher-forced) during
// training, greedy-decoded whole-sequence accuracy at the end, time and the
// tape's peak memory. Writes a CSV (and, with --plot, docs/transformer.png
// through scripts/plot_transformer.py) and a summary table.
//
//   train_transformer [--mode=both|plain|momentum] [--gamma=0.9]
//       [--backward=exact|stored] [--steps=1000] [--batch=64] [--lr=1e-3]
//       [--warmup=100] [--d-model=64] [--heads=4] [--layers=2] [--ff=128]
//       [--dropout=0] [--symbols=16] [--min-len=16] [--max-len=32]
//       [--seq-len=N] [--heldout=512] [--eval-every=50] [--target=0.99]
//       [--seed=1] [--threads=1] [--csv=out/transformer.csv] [--plot]
//       [--smoke]
//
// The task: a sequence x_1..x_L of L tokens drawn uniformly from `symbols`
// symbols (L uniform in [min-len, max-len]) maps to x_L..x_1. Token ids: PAD
// 0, BOS 1, EOS 2, then the symbols. Source: x_1..x_L EOS; decoder input:
// BOS x_L..x_1; labels: x_L..x_1 EOS (teacher forcing), each padded to the
// batch's longest with PAD, which the key-padding masks hide from attention
// and the loss ignores. The model: a token embedding shared by source and
// target, scaled by sqrt(d_model), plus sinusoidal positions; an
// nn.Transformer (post-norm, ReLU); a linear head to the vocabulary.
//
// Both models see the same batches in the same order (the data stream has
// its own seed) and are trained with Adam, a linear warm-up, then cosine
// decay to 0. Every --eval-every steps: the held-out set's loss and token
// accuracy, teacher-forced. At the end: greedy decoding of the held-out set
// (BOS, then the argmax fed back, max-len + 1 tokens), a sequence counting as
// right when all its tokens and its EOS are. --smoke runs a tiny
// configuration through every path in seconds (ctest runs it).
#include <momnet/momnet.hpp>
#include <momnet/layers/attention_mask.hpp>
#include <momnet/layers/embedding.hpp>
#include <momnet/layers/positional_encoding.hpp>
#include <momnet/models/transformer.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>  // getpid: a private file for --smoke's CSV

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace {

using T = float;
using momnet::Tape;
using momnet::Tensor;
using momnet::Var;
using Tokens = Tensor<std::int64_t>;

constexpr std::int64_t pad_id = 0, bos_id = 1, eos_id = 2, first_symbol = 3;
constexpr int ignored = -100;  // cross_entropy's default ignore_index

struct Settings {
  std::string mode = "both";
  double gamma = 0.9;
  momnet::BackwardMode backward = momnet::BackwardMode::exact;
  long steps = 1000;
  Eigen::Index batch = 64;
  double lr = 1e-3;
  long warmup = 100;
  Eigen::Index d_model = 64, heads = 4, ff = 128;
  std::size_t layers = 2;
  double dropout = 0.0;
  Eigen::Index symbols = 16, min_len = 16, max_len = 32;
  Eigen::Index heldout = 512;
  long eval_every = 50;
  double target = 0.99;
  std::uint64_t seed = 1;
  int threads = 1;
  std::string csv = "out/transformer.csv";
  bool plot = false;
  bool smoke = false;
};

void usage() {
  std::cout << "usage: train_transformer [--mode=both|plain|momentum] [--gamma=0.9] [--backward=exact|stored]\n"
               "  [--steps=1000] [--batch=64] [--lr=1e-3] [--warmup=100] [--d-model=64] [--heads=4] [--layers=2]\n"
               "  [--ff=128] [--dropout=0] [--symbols=16] [--min-len=16] [--max-len=32] [--seq-len=N (fixed)]\n"
               "  [--heldout=512] [--eval-every=50] [--target=0.99] [--seed=1] [--threads=1]\n"
               "  [--csv=out/transformer.csv] [--plot] [--smoke]\n";
}

Settings parse(int argc, char** argv) {
  Settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto eq = arg.find('=');
    const std::string key = arg.substr(0, eq), value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    if (key == "--help" || key == "-h") {
      usage();
      std::exit(0);
    } else if (key == "--mode") {
      if (value != "both" && value != "plain" && value != "momentum") {
        throw std::invalid_argument("--mode: both, plain or momentum, got '" + value + "'");
      }
      s.mode = value;
    } else if (key == "--gamma") {
      s.gamma = std::stod(value);
    } else if (key == "--backward") {
      if (value == "exact") s.backward = momnet::BackwardMode::exact;
      else if (value == "stored") s.backward = momnet::BackwardMode::stored;
      else throw std::invalid_argument("--backward: exact or stored, got '" + value + "'");
    } else if (key == "--steps") {
      s.steps = std::stol(value);
    } else if (key == "--batch") {
      s.batch = std::stol(value);
    } else if (key == "--lr") {
      s.lr = std::stod(value);
    } else if (key == "--warmup") {
      s.warmup = std::stol(value);
    } else if (key == "--d-model") {
      s.d_model = std::stol(value);
    } else if (key == "--heads") {
      s.heads = std::stol(value);
    } else if (key == "--layers") {
      s.layers = std::stoul(value);
    } else if (key == "--ff") {
      s.ff = std::stol(value);
    } else if (key == "--dropout") {
      s.dropout = std::stod(value);
    } else if (key == "--symbols") {
      s.symbols = std::stol(value);
    } else if (key == "--min-len") {
      s.min_len = std::stol(value);
    } else if (key == "--max-len") {
      s.max_len = std::stol(value);
    } else if (key == "--seq-len") {
      s.min_len = s.max_len = std::stol(value);
    } else if (key == "--heldout") {
      s.heldout = std::stol(value);
    } else if (key == "--eval-every") {
      s.eval_every = std::stol(value);
    } else if (key == "--target") {
      s.target = std::stod(value);
    } else if (key == "--seed") {
      s.seed = std::stoull(value);
    } else if (key == "--threads") {
      s.threads = std::stoi(value);
    } else if (key == "--csv") {
      s.csv = value;
    } else if (key == "--plot") {
      s.plot = true;
    } else if (key == "--smoke") {
      s.smoke = true;
    } else {
      usage();
      throw std::invalid_argument("unknown option " + arg);
    }
  }
  if (s.steps < 0 || s.batch <= 0 || s.warmup < 0 || s.d_model <= 0 || s.heads <= 0 || s.ff <= 0 ||
      s.layers == 0 || s.symbols < 2 || s.min_len < 1 || s.max_len < s.min_len || s.heldout <= 0 ||
      s.eval_every <= 0 || s.threads <= 0) {
    throw std::invalid_argument(
        "--steps and --warmup must be >= 0; --batch, --d-model, --heads, --ff, --layers, --heldout, --eval-every, "
        "--threads positive; --symbols >= 2; 1 <= --min-len <= --max-len");
  }
  if (s.d_model % s.heads != 0) {
    throw std::invalid_argument("--d-model (" + std::to_string(s.d_model) + ") must be a multiple of --heads (" +
                                std::to_string(s.heads) + ")");
  }
  return s;
}

// A batch of the reversal task; every row is padded to `width` = the
// longest L + 1 in the batch.
struct Batch {
  Eigen::Index size = 0, width = 0;
  Tokens source;                       // [size, width]: x_1..x_L EOS PAD...
  Tokens decoder_input;                // [size, width]: BOS x_L..x_1 PAD...
  std::vector<int> labels;             // size * width: x_L..x_1 EOS, then `ignored`
  std::vector<Eigen::Index> lengths;   // L + 1 per row: the positions that are not padding
  bool padded = false;                 // some row is shorter than `width`
};

Batch make_batch(momnet::Rng& rng, Eigen::Index size, const Settings& s) {
  std::vector<std::vector<std::int64_t>> sequences(static_cast<std::size_t>(size));
  Eigen::Index width = 0;
  for (auto& sequence : sequences) {
    const auto span = static_cast<std::uint64_t>(s.max_len - s.min_len + 1);
    const Eigen::Index length = s.min_len + static_cast<Eigen::Index>(rng.next() % span);
    for (Eigen::Index i = 0; i < length; ++i) {
      sequence.push_back(first_symbol + static_cast<std::int64_t>(rng.next() % static_cast<std::uint64_t>(s.symbols)));
    }
    width = std::max(width, length + 1);
  }
  Batch b;
  b.size = size;
  b.width = width;
  b.source = Tokens(momnet::Shape{size, width});
  b.decoder_input = Tokens(momnet::Shape{size, width});
  b.labels.assign(static_cast<std::size_t>(size * width), ignored);
  for (Eigen::Index r = 0; r < size; ++r) {
    const auto& x = sequences[static_cast<std::size_t>(r)];
    const auto length = static_cast<Eigen::Index>(x.size());
    std::int64_t* source = b.source.data() + r * width;
    std::int64_t* input = b.decoder_input.data() + r * width;
    int* label = b.labels.data() + r * width;
    std::fill(source, source + width, pad_id);
    std::fill(input, input + width, pad_id);
    input[0] = bos_id;
    for (Eigen::Index i = 0; i < length; ++i) {
      source[i] = x[static_cast<std::size_t>(i)];
      const std::int64_t reversed = x[static_cast<std::size_t>(length - 1 - i)];
      label[i] = static_cast<int>(reversed);
      input[i + 1] = reversed;  // i + 1 <= length < width
    }
    source[length] = eos_id;
    label[length] = static_cast<int>(eos_id);
    b.lengths.push_back(length + 1);
    b.padded = b.padded || length + 1 < width;
  }
  return b;
}

// The model: shared token embedding (scaled by sqrt(d_model)) plus
// sinusoidal positions, an nn.Transformer with a Residual or a
// MomentumResidual for its layer stacks, a linear head to the vocabulary.
// Names as a PyTorch module with members embedding, transformer, generator.
template <template <class> class Stack>
struct Seq2Seq {
  using Scalar = T;
  momnet::Embedding<T> embedding;
  momnet::SinusoidalPositionalEncoding<T> positions;
  momnet::Transformer<T, Stack> transformer;
  momnet::Linear<T> generator;
  T scale;

  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.child("embedding", embedding);
    visit.child("transformer", transformer);
    visit.child("generator", generator);
  }

  Var<T> embed(Tape<T>& tape, const Tokens& tokens) {
    return positions.forward(tape, momnet::mul(embedding.forward(tape, tokens), scale));
  }

  // Logits [size, width, vocabulary] under teacher forcing.
  Var<T> forward(Tape<T>& tape, const Batch& b) {
    momnet::TransformerMasks<T> masks;
    masks.tgt_mask = tape.constant(momnet::causal_mask<T>(b.width));
    if (b.padded) {
      const Var<T> padding = tape.constant(momnet::key_padding_mask<T>(b.lengths, b.width));
      masks.src_key_padding_mask = padding;
      masks.tgt_key_padding_mask = padding;
      masks.memory_key_padding_mask = padding;
    }
    const Var<T> out = transformer.forward(tape, embed(tape, b.source), embed(tape, b.decoder_input), masks);
    return generator.forward(tape, out);
  }
};

using PlainModel = Seq2Seq<momnet::Residual>;
using MomentumModel = Seq2Seq<momnet::MomentumResidual>;

PlainModel make_plain(const Settings& s, momnet::Rng& rng) {
  momnet::TransformerOptions options;
  options.d_model = s.d_model;
  options.nhead = s.heads;
  options.num_encoder_layers = s.layers;
  options.num_decoder_layers = s.layers;
  options.dim_feedforward = s.ff;
  options.dropout = s.dropout;
  const Eigen::Index vocabulary = s.symbols + first_symbol;
  momnet::EmbeddingOptions embedding_options;
  embedding_options.padding_idx = pad_id;
  momnet::Embedding<T> embedding(vocabulary, s.d_model, rng, embedding_options);
  // N(0, 1 / d_model), as "Attention is all you need" and fairseq: times
  // sqrt(d_model) the tokens come out at the positions' scale. nn.Embedding's
  // N(0, 1) would make them sqrt(d_model) times larger and drown the
  // positions, on which reversal depends entirely.
  momnet::init::normal(embedding.weight(), 0.0, 1.0 / std::sqrt(static_cast<double>(s.d_model)), rng);
  embedding.weight().value().row(pad_id).setZero();  // padding_idx stays a zero row
  momnet::Transformer<T> transformer(options, rng);
  momnet::Linear<T> generator(s.d_model, vocabulary, rng);
  return PlainModel{std::move(embedding), momnet::SinusoidalPositionalEncoding<T>(s.max_len + 1, s.d_model),
                    std::move(transformer), std::move(generator),
                    static_cast<T>(std::sqrt(static_cast<double>(s.d_model)))};
}

MomentumModel make_momentum(const PlainModel& plain, const Settings& s) {
  momnet::MomentumOptions options;
  options.mode = s.backward;
  return MomentumModel{plain.embedding, plain.positions, momnet::to_momentum(plain.transformer, s.gamma, options),
                       plain.generator, plain.scale};
}

Var<T> loss_of(const Var<T>& logits, const Batch& b) {
  const momnet::Shape shape = logits.shape();
  return momnet::cross_entropy(momnet::reshape(logits, momnet::Shape{shape[0] * shape[1], shape[2]}), b.labels);
}

// The first maximum of each row of `rows` x `classes` values (torch.argmax).
std::vector<int> argmax_rows(const T* data, Eigen::Index rows, Eigen::Index classes) {
  std::vector<int> out(static_cast<std::size_t>(rows));
  for (Eigen::Index r = 0; r < rows; ++r) {
    const T* row = data + r * classes;
    out[static_cast<std::size_t>(r)] = static_cast<int>(std::max_element(row, row + classes) - row);
  }
  return out;
}

struct Evaluation {
  double loss = 0, token_accuracy = 0, sequence_accuracy = 0;  // teacher-forced
};

double mib(std::size_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

template <class Model>
Evaluation evaluate(Model& model, const std::vector<Batch>& heldout, momnet::ChunkCache& cache) {
  momnet::eval(model);
  double loss = 0;
  long tokens = 0, right_tokens = 0, sequences = 0, right_sequences = 0;
  for (const Batch& b : heldout) {
    Tape<T> tape(cache);
    typename Tape<T>::NoGradScope no_grad(tape);
    const Var<T> logits = model.forward(tape, b);
    const Eigen::Index vocabulary = logits.shape()[2];
    const std::vector<int> predicted = argmax_rows(logits.data(), b.size * b.width, vocabulary);
    long counted = 0;
    for (Eigen::Index r = 0; r < b.size; ++r) {
      bool all = true;
      for (Eigen::Index t = 0; t < b.lengths[static_cast<std::size_t>(r)]; ++t) {
        const auto i = static_cast<std::size_t>(r * b.width + t);
        const bool right = predicted[i] == b.labels[i];
        right_tokens += right;
        all = all && right;
        ++counted;
      }
      right_sequences += all;
      ++sequences;
    }
    tokens += counted;
    loss += static_cast<double>(loss_of(logits, b).item()) * static_cast<double>(counted);
  }
  momnet::train(model);
  return {loss / static_cast<double>(tokens), static_cast<double>(right_tokens) / static_cast<double>(tokens),
          static_cast<double>(right_sequences) / static_cast<double>(sequences)};
}

// Greedy decoding: the encoder runs once, then the decoder on BOS and the
// tokens chosen so far, `width` times; only the last position's logits are
// read. A row is right when its L tokens and its EOS are.
template <class Model>
double greedy_accuracy(Model& model, const std::vector<Batch>& heldout, momnet::ChunkCache& cache) {
  momnet::eval(model);
  long right = 0, total = 0;
  for (const Batch& b : heldout) {
    Tape<T> tape(cache);
    typename Tape<T>::NoGradScope no_grad(tape);
    const Var<T> padding =
        b.padded ? tape.constant(momnet::key_padding_mask<T>(b.lengths, b.width)) : Var<T>();
    const Var<T> memory = model.transformer.encoder().forward(tape, model.embed(tape, b.source), Var<T>(), padding);
    Tokens prefix(momnet::Shape{b.size, b.width});
    for (Eigen::Index r = 0; r < b.size; ++r) prefix.data()[r * b.width] = bos_id;
    std::vector<int> decoded(static_cast<std::size_t>(b.size * b.width));
    for (Eigen::Index t = 1; t <= b.width; ++t) {
      momnet::TapeScope<T> scope(tape);
      Tokens input(momnet::Shape{b.size, t});
      for (Eigen::Index r = 0; r < b.size; ++r) {
        std::copy(prefix.data() + r * b.width, prefix.data() + r * b.width + t, input.data() + r * t);
      }
      const Var<T> out = model.transformer.decoder().forward(tape, model.embed(tape, input), memory,
                                                             tape.constant(momnet::causal_mask<T>(t)), Var<T>(),
                                                             Var<T>(), padding);
      const Var<T> logits = model.generator.forward(tape, momnet::slice(out, t - 1, 1, 1));
      const std::vector<int> next = argmax_rows(logits.data(), b.size, logits.shape()[2]);
      for (Eigen::Index r = 0; r < b.size; ++r) {
        decoded[static_cast<std::size_t>(r * b.width + t - 1)] = next[static_cast<std::size_t>(r)];
        if (t < b.width) prefix.data()[r * b.width + t] = next[static_cast<std::size_t>(r)];
      }
    }
    for (Eigen::Index r = 0; r < b.size; ++r) {
      bool all = true;
      for (Eigen::Index t = 0; t < b.lengths[static_cast<std::size_t>(r)]; ++t) {
        const auto i = static_cast<std::size_t>(r * b.width + t);
        all = all && decoded[i] == b.labels[i];
      }
      right += all;
      ++total;
    }
  }
  momnet::train(model);
  return static_cast<double>(right) / static_cast<double>(total);
}

struct Summary {
  std::string model;
  long steps_to_target = -1;  // the first evaluation at or above --target; -1: never
  Evaluation last;
  double greedy = 0, train_seconds = 0, total_seconds = 0, peak_mib = 0;
};

momnet::Schedule schedule(const Settings& s) {
  const long cosine = std::max(1L, s.steps - s.warmup);
  if (s.warmup == 0) return momnet::CosineAnnealingLR(cosine);
  return momnet::SequentialLR({momnet::LinearLR(1.0 / static_cast<double>(s.warmup), 1.0, s.warmup),
                               momnet::CosineAnnealingLR(cosine)},
                              {s.warmup});
}

template <class Model>
Summary run(Model& model, const std::string& name, const Settings& s, const std::vector<Batch>& heldout,
            momnet::CsvLog& log) {
  momnet::AdamOptions adam_options;
  adam_options.learning_rate = s.lr;
  momnet::Adam<T> adam(momnet::parameters_of(model), adam_options);
  momnet::LRScheduler<momnet::Adam<T>> scheduler(adam, schedule(s));
  momnet::Rng data(s.seed * 0x9E3779B97F4A7C15ULL + 1);  // the same batches for every model
  momnet::MemoryCounter counter;                           // the training steps' tapes
  momnet::ChunkCache cache, eval_cache;
  momnet::train(model);

  Summary summary;
  summary.model = name;
  momnet::RunningMean interval_loss;
  double train_seconds = 0;
  const auto start = std::chrono::steady_clock::now();
  auto record = [&](long step) {
    const Evaluation e = evaluate(model, heldout, eval_cache);
    const double train_loss = interval_loss.count() > 0 ? interval_loss.mean() : std::nan("");
    interval_loss.reset();
    const bool last = step == s.steps;
    double greedy = std::nan("");
    if (last) greedy = summary.greedy = greedy_accuracy(model, heldout, eval_cache);
    if (summary.steps_to_target < 0 && e.token_accuracy >= s.target) summary.steps_to_target = step;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    log.row(name, step, train_loss, e.loss, e.token_accuracy, e.sequence_accuracy, greedy, scheduler.learning_rate(),
            train_seconds, seconds, mib(counter.peak_bytes()), s.gamma, momnet::to_string(s.backward));
    summary.last = e;
    return e;
  };

  record(0);
  Evaluation latest = summary.last;
  momnet::ProgressBar bar(s.steps, name);
  for (long step = 1; step <= s.steps; ++step) {
    const Batch b = make_batch(data, s.batch, s);
    const auto step_start = std::chrono::steady_clock::now();
    Tape<T> tape(counter, cache);
    const Var<T> loss = loss_of(model.forward(tape, b), b);
    const double value = static_cast<double>(loss.item());
    if (!std::isfinite(value)) {
      throw std::runtime_error(name + ": the loss is " + std::to_string(value) + " at step " + std::to_string(step));
    }
    tape.backward(loss);
    adam.step();
    adam.zero_grad();
    scheduler.step();
    train_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
    interval_loss.add(value);
    if (step % s.eval_every == 0 || step == s.steps) latest = record(step);
    std::ostringstream suffix;
    suffix << "loss " << std::fixed << std::setprecision(4) << value << " held-out acc " << std::setprecision(2)
           << 100 * latest.token_accuracy << "%";
    bar.update(1, suffix.str());
  }
  bar.finish();
  if (s.steps == 0) summary.greedy = greedy_accuracy(model, heldout, eval_cache);
  summary.train_seconds = train_seconds;
  summary.total_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  summary.peak_mib = mib(counter.peak_bytes());
  std::cout << name << ": held-out token accuracy " << std::fixed << std::setprecision(2)
            << 100 * summary.last.token_accuracy << "% (teacher-forced), greedy whole-sequence accuracy "
            << 100 * summary.greedy << "%, " << std::setprecision(1) << summary.train_seconds << " s of training"
            << std::endl;
  return summary;
}

void print_summary(const std::vector<Summary>& rows, const Settings& s) {
  std::cout << "\n| model | steps to " << 100 * s.target
            << "% token acc | final token acc | final sequence acc (teacher-forced) | greedy sequence acc | "
               "train time (s) | total time (s) | peak tape MiB |\n"
               "|---|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const Summary& r : rows) {
    std::cout << "| " << r.model << " | " << (r.steps_to_target < 0 ? std::string("not reached")
                                                                    : std::to_string(r.steps_to_target))
              << " | " << std::fixed << std::setprecision(2) << 100 * r.last.token_accuracy << "% | "
              << 100 * r.last.sequence_accuracy << "% | " << 100 * r.greedy << "% | " << std::setprecision(1)
              << r.train_seconds << " | " << r.total_seconds << " | " << r.peak_mib << " |\n";
  }
}

}  // namespace

int main(int argc, char** argv) try {
#if defined(__GLIBC__)
  // Eigen's GEMM packing buffers would otherwise be mmap'ed and faulted in
  // again in every product (see the README's performance notes).
  mallopt(M_MMAP_THRESHOLD, 256 * 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 512 * 1024 * 1024);
#endif
  Settings s = parse(argc, argv);
  if (s.smoke) {
    s.d_model = 16;
    s.heads = 2;
    s.layers = 1;
    s.ff = 32;
    s.symbols = 5;
    s.min_len = 3;
    s.max_len = 6;
    s.steps = std::min(s.steps, 6L);
    s.batch = 4;
    s.warmup = 2;
    s.heldout = 6;
    s.eval_every = 3;
    if (s.csv == "out/transformer.csv") {
      s.csv = (std::filesystem::temp_directory_path() /
               ("momnet_transformer_smoke_" + std::to_string(::getpid()) + ".csv")).string();
    }
  }
  Eigen::setNbThreads(s.threads);

  // Held-out sequences from their own stream, in evaluation batches of up to 256.
  momnet::Rng heldout_rng(s.seed * 0xD1B54A32D192ED03ULL + 2);
  std::vector<Batch> heldout;
  for (Eigen::Index done = 0; done < s.heldout;) {
    const Eigen::Index size = std::min<Eigen::Index>(256, s.heldout - done);
    heldout.push_back(make_batch(heldout_rng, size, s));
    done += size;
  }

  momnet::Rng rng(s.seed);
  PlainModel plain = make_plain(s, rng);
  MomentumModel momentum = make_momentum(plain, s);  // before any training: the same initial parameters
  std::cout << "Reversal of " << s.min_len << " to " << s.max_len << " tokens over " << s.symbols
            << " symbols; Transformer d_model " << s.d_model << ", " << s.heads << " heads, " << s.layers << "+"
            << s.layers << " layers, feed-forward " << s.ff << ", dropout " << s.dropout << ", "
            << momnet::parameter_count(plain) << " parameters; Momentum Transformer gamma " << s.gamma << " ("
            << momnet::to_string(s.backward) << " backward); Adam lr " << s.lr << ", warm-up " << s.warmup
            << ", batch " << s.batch << ", " << s.steps << " steps; " << s.threads << " thread(s)\n";

  if (!std::filesystem::path(s.csv).parent_path().empty()) {
    std::filesystem::create_directories(std::filesystem::path(s.csv).parent_path());
  }
  momnet::CsvLog log(s.csv, {"model", "step", "train_loss", "heldout_loss", "token_accuracy", "sequence_accuracy",
                             "greedy_accuracy", "learning_rate", "train_seconds", "seconds", "peak_tape_mib",
                             "gamma", "backward"});
  std::vector<Summary> summaries;
  if (s.mode != "momentum") summaries.push_back(run(plain, "transformer", s, heldout, log));
  if (s.mode != "plain") summaries.push_back(run(momentum, "momentum", s, heldout, log));
  print_summary(summaries, s);
  std::cout << "CSV: " << s.csv << "\n";
  if (s.plot) {
    const std::string command = "/usr/bin/python3 scripts/plot_transformer.py " + s.csv + " docs/transformer.png";
    if (std::system(command.c_str()) != 0) std::cerr << "plotting failed: " << command << "\n";
  }
  if (s.smoke) {
    for (const Summary& r : summaries) {
      const auto in_unit = [](double x) { return x >= 0 && x <= 1; };
      if (!std::isfinite(r.last.loss) || !in_unit(r.last.token_accuracy) || !in_unit(r.greedy)) {
        std::cerr << "smoke run: " << r.model << " gave a non-finite loss or an impossible accuracy\n";
        return 1;
      }
    }
    std::filesystem::remove(s.csv);
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "train_transformer: " << e.what() << "\n";
  return 1;
}
