// Data-parallel training over MPI: an MLP Momentum ResNet learns Fashion-MNIST
// on P ranks (processes), each with its share of every batch. The model:
// Linear(784, width) -> `depth` momentum MLP blocks (exact, memory-free
// backward) -> Linear(width, 10), cross-entropy, SGD with momentum.
//
//   mpirun -np 2 build/release/examples/train_distributed --epochs=2
//   mpirun -np 8 --hostfile hosts build/release/examples/train_distributed   # several machines
//
// (as root, Open MPI also wants --allow-run-as-root; on a machine with fewer
// cores than ranks, --oversubscribe). Options: --epochs=2 --batch=128 (the
// global batch; each rank takes batch / P) --width=128 --depth=16
// --gamma=0.9 --lr=0.05 --momentum=0.9 --seed=1 --subset=0 (train images
// used, 0: all) --bucket-mb=25 --data=DIR (IDX files; default Debian's
// dataset-fashion-mnist or $MOMNET_FASHION_MNIST) --smoke (a tiny synthetic
// data set and model, in seconds: ctest runs it on 2 ranks).
//
// How it works (docs/distributed.md): DistributedDataParallel broadcasts rank
// 0's initial parameters, each rank draws its shard of every epoch from a
// DistributedSampler (one shared seed), and after each backward pass the
// gradients are averaged over the ranks, so every rank takes the same SGD
// step and the replicas stay identical (checked at the end). With batch /
// P per rank, P ranks train the same model as one process with the whole
// batch, to rounding.
#include <momnet/distributed/distributed.hpp>
#include <momnet/momnet.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using T = float;
using Net = momnet::Sequential<T>;
namespace md = momnet::distributed;

struct Settings {
  int epochs = 2;
  Eigen::Index batch = 128, width = 128;
  std::size_t depth = 16;
  double gamma = 0.9, lr = 0.05, momentum = 0.9, bucket_mb = 25;
  std::uint64_t seed = 1;
  Eigen::Index subset = 0;
  std::string data;
  bool smoke = false;
};

Settings parse(int argc, char** argv) {
  Settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto eq = arg.find('=');
    const std::string key = arg.substr(0, eq), value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    if (key == "--epochs") s.epochs = std::stoi(value);
    else if (key == "--batch") s.batch = std::stol(value);
    else if (key == "--width") s.width = std::stol(value);
    else if (key == "--depth") s.depth = std::stoul(value);
    else if (key == "--gamma") s.gamma = std::stod(value);
    else if (key == "--lr") s.lr = std::stod(value);
    else if (key == "--momentum") s.momentum = std::stod(value);
    else if (key == "--seed") s.seed = std::stoull(value);
    else if (key == "--subset") s.subset = std::stol(value);
    else if (key == "--bucket-mb") s.bucket_mb = std::stod(value);
    else if (key == "--data") s.data = value;
    else if (key == "--smoke") s.smoke = true;
    else throw std::invalid_argument("train_distributed: unknown option " + arg);
  }
  if (s.smoke) {
    s.epochs = 3;
    s.batch = 16;
    s.width = 16;
    s.depth = 4;
    s.lr = 0.1;
  }
  if (s.epochs < 1 || s.batch < 1 || s.width < 1 || s.depth < 1 || s.bucket_mb <= 0) {
    throw std::invalid_argument("train_distributed: --epochs, --batch, --width, --depth and --bucket-mb must be positive");
  }
  return s;
}

// Tiny stand-in for Fashion-MNIST: 8x8 images of ten classes, each class a
// bright band at its own place, plus noise.
momnet::ImageDataset<T> synthetic(Eigen::Index count, std::uint64_t seed) {
  momnet::Tensor<T> images(momnet::Shape{count, 1, 8, 8});
  std::vector<int> labels(static_cast<std::size_t>(count));
  momnet::Rng rng(seed);
  for (Eigen::Index i = 0; i < count; ++i) {
    const int label = static_cast<int>(i % 10);
    labels[static_cast<std::size_t>(i)] = label;
    for (Eigen::Index k = 0; k < 64; ++k) {
      const bool band = (k / 8 + k % 8) % 10 == label;
      images.data()[i * 64 + k] = static_cast<T>((band ? 1.0 : 0.0) + rng.uniform(-1, 1));
    }
  }
  return momnet::ImageDataset<T>(std::move(images), std::move(labels));
}

Net build_model(const Settings& s, Eigen::Index inputs, std::uint64_t seed) {
  momnet::Rng rng(seed);
  Net net;
  net.add(momnet::Linear<T>(inputs, s.width, rng));
  std::vector<momnet::MLPBlock<T>> blocks;
  for (std::size_t i = 0; i < s.depth; ++i) blocks.emplace_back(s.width, s.width, rng);
  momnet::MomentumOptions options;
  options.gamma = s.gamma;
  options.mode = momnet::BackwardMode::exact;
  net.add(momnet::MomentumResidual<momnet::MLPBlock<T>>(std::move(blocks), options));
  net.add(momnet::Linear<T>(s.width, 10, rng));
  return net;
}

// Images `indices[first, first + count)` as rows of [count, C * H * W], and their labels.
void gather(const momnet::ImageDataset<T>& data, const std::vector<std::int64_t>& indices, std::size_t first,
            std::size_t count, momnet::Tensor<T>& x, std::vector<int>& labels) {
  const Eigen::Index size = data.image_size();
  const momnet::Shape shape{static_cast<Eigen::Index>(count), size};
  if (x.shape() != shape) x = momnet::Tensor<T>(shape);
  labels.resize(count);
  for (std::size_t k = 0; k < count; ++k) {
    const T* image = data.image(indices[first + k]);
    std::copy(image, image + size, x.data() + static_cast<Eigen::Index>(k) * size);
    labels[k] = data.label(indices[first + k]);
  }
}

// Accuracy on the test set, each rank scoring every P-th image.
double test_accuracy(const md::Communicator& comm, Net& net, const momnet::ImageDataset<T>& test) {
  momnet::eval(net);
  std::vector<std::int64_t> mine;
  for (Eigen::Index i = comm.rank(); i < test.size(); i += comm.size()) mine.push_back(i);
  std::int64_t counts[2] = {0, static_cast<std::int64_t>(mine.size())};
  momnet::Tensor<T> x;
  std::vector<int> labels;
  for (std::size_t first = 0; first < mine.size(); first += 500) {
    gather(test, mine, first, std::min<std::size_t>(500, mine.size() - first), x, labels);
    counts[0] += momnet::count_correct(net.infer(x), labels);
  }
  comm.allreduce_sum(counts, 2, "train_distributed");
  momnet::train(net);
  return counts[1] == 0 ? 0.0 : static_cast<double>(counts[0]) / static_cast<double>(counts[1]);
}

int run(md::Communicator& world, const Settings& s) {
  Eigen::setNbThreads(1);  // one thread per rank: the ranks are the parallelism
  const int p = world.size();
  if (s.batch % p != 0) {
    throw std::invalid_argument("train_distributed: --batch=" + std::to_string(s.batch) +
                                " must be divisible by the number of ranks, " + std::to_string(p));
  }
  const auto local_batch = static_cast<std::size_t>(s.batch / p);

  // Every rank reads the whole data set and normalises it alike.
  momnet::ImageDataset<T> train, test;
  if (s.smoke) {
    train = synthetic(320, 1);
    test = synthetic(100, 2);
  } else {
    train = s.data.empty() ? momnet::load_fashion_mnist<T>(momnet::Split::train)
                           : momnet::load_fashion_mnist<T>(s.data, momnet::Split::train);
    test = s.data.empty() ? momnet::load_fashion_mnist<T>(momnet::Split::test)
                          : momnet::load_fashion_mnist<T>(s.data, momnet::Split::test);
  }
  const auto all = train.images().array().template cast<double>();
  const double mean = all.mean(), stddev = std::sqrt((all - mean).square().mean());
  train.normalise(std::vector<double>{mean}, std::vector<double>{stddev});
  test.normalise(std::vector<double>{mean}, std::vector<double>{stddev});
  const Eigen::Index train_size = s.subset > 0 ? std::min(s.subset, train.size()) : train.size();

  // Each rank builds the model from its own seed, as separate machines
  // would: DistributedDataParallel gives them all rank 0's parameters.
  Net net = build_model(s, train.image_size(), s.seed + static_cast<std::uint64_t>(world.rank()));
  md::DataParallelOptions options;
  options.bucket_bytes = static_cast<std::size_t>(s.bucket_mb * (1 << 20));
  md::DistributedDataParallel<Net> ddp(net, world, options);
  momnet::SGD<T> sgd(momnet::parameters_of(net), {s.lr, s.momentum});
  md::DistributedSampler sampler(train_size, p, world.rank(), {true, s.seed, true});
  const auto steps = static_cast<std::size_t>(sampler.num_samples()) / local_batch;
  if (steps == 0) throw std::invalid_argument("train_distributed: fewer training images than one batch");

  if (world.rank() == 0) {
    std::printf("train_distributed: %d rank(s); batch %ld (%zu per rank), %zu steps per epoch; "
                "Linear(%ld, %ld) + %zu momentum MLP blocks (exact, gamma %g) + Linear(%ld, 10): %ld parameters, "
                "%zu gradient bucket(s)\n",
                p, static_cast<long>(s.batch), local_batch, steps, static_cast<long>(train.image_size()),
                static_cast<long>(s.width), s.depth, s.gamma, static_cast<long>(s.width),
                static_cast<long>(momnet::parameter_count(net)), ddp.reducer().bucket_count());
    std::printf("%5s %11s %9s %8s %10s\n", "epoch", "train loss", "test acc", "seconds", "samples/s");
  }
  momnet::Tensor<T> x;
  std::vector<int> labels;
  momnet::Tape<T> tape;
  double first_loss = 0, last_loss = 0, accuracy = 0;
  for (int epoch = 0; epoch < s.epochs; ++epoch) {
    sampler.set_epoch(static_cast<std::uint64_t>(epoch));
    const auto start = std::chrono::steady_clock::now();
    double loss_sum = 0;
    for (std::size_t step = 0; step < steps; ++step) {
      gather(train, sampler.indices(), step * local_batch, local_batch, x, labels);
      sgd.zero_grad();
      loss_sum += ddp.step([&] {
        tape.clear();
        const momnet::Var<T> loss = momnet::cross_entropy(net(tape, tape.constant(x)), labels);
        tape.backward(loss);
        return static_cast<double>(loss.item());
      });
      sgd.step();
    }
    world.allreduce_sum(&loss_sum, 1, "train_distributed");
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double loss = loss_sum / static_cast<double>(steps * static_cast<std::size_t>(p));
    accuracy = test_accuracy(world, net, test);
    if (epoch == 0) first_loss = loss;
    last_loss = loss;
    if (world.rank() == 0) {
      std::printf("%5d %11.4f %8.2f%% %8.1f %10.0f\n", epoch, loss, 100 * accuracy, seconds,
                  static_cast<double>(steps * static_cast<std::size_t>(s.batch)) / seconds);
      std::fflush(stdout);
    }
  }
  md::check_replicas_equal(world, net);  // every rank took the same steps
  if (world.rank() == 0) std::printf("replicas identical on all %d rank(s), bit for bit\n", p);
  if (s.smoke && !(std::isfinite(last_loss) && last_loss < first_loss && accuracy > 0.2)) {
    if (world.rank() == 0) std::fprintf(stderr, "smoke run: the loss did not fall or the accuracy is at chance\n");
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return md::run_job(argc, argv, [&](md::Communicator& world) { return run(world, parse(argc, argv)); });
}
