// Training checkpoints: a run stopped at step k, saved, and resumed from the
// file on freshly built (differently initialised) objects ends bit for bit
// where a run that never stopped ends, for SGD (momentum, Nesterov, weight
// decay), Adam and AdamW, in the exact and stored backward modes, with and
// without a learning-rate schedule, and with dropout inside the stack's blocks
// (whose masks depend on the restored step counts). Also the names in the
// file, and every way a load can fail: each reported at once, naming the
// file, with nothing changed.
#include <catch2/catch.hpp>

#include <momnet/io/checkpoint.hpp>
#include <momnet/layers/activation.hpp>
#include <momnet/layers/dropout.hpp>
#include <momnet/layers/linear.hpp>
#include <momnet/layers/mlp_block.hpp>
#include <momnet/momentum_residual.hpp>
#include <momnet/ops/loss.hpp>
#include <momnet/ops/reduction.hpp>
#include <momnet/sequential.hpp>

#include "support.hpp"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

using momnet::BackwardMode;
using momnet::CheckpointError;
using momnet::LRScheduler;
using momnet::Rng;
using momnet::Sequential;
using momnet::Shape;
using momnet::Tensor;
using momnet::TrainingCheckpoint;
using Bytes = std::vector<std::uint8_t>;
namespace fs = std::filesystem;

// A unique file under the temporary directory, removed at the end of the test.
class TempPath {
 public:
  TempPath() {
    static std::atomic<int> counter{0};
    std::random_device device;
    path_ = (fs::temp_directory_path() /
             ("momnet-checkpoint-" + std::to_string(device()) + "-" + std::to_string(counter++) + ".safetensors"))
                .string();
  }
  ~TempPath() {
    std::error_code ignored;
    fs::remove(path_, ignored);
  }
  TempPath(const TempPath&) = delete;
  TempPath& operator=(const TempPath&) = delete;
  const std::string& str() const { return path_; }

 private:
  std::string path_;
};

Bytes read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}
void write_bytes(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}
template <class V>
void append(Bytes& out, const V* values, std::size_t count) {
  const auto* p = reinterpret_cast<const std::uint8_t*>(values);
  out.insert(out.end(), p, p + count * sizeof(V));
}

// The block with dropout: Linear -> tanh -> Dropout, as a Sequential, whose
// mask is keyed by the stack's step.
template <class T>
Sequential<T> dropout_block(Rng& rng) {
  Sequential<T> block;
  block.add(momnet::Linear<T>(6, 6, rng));
  block.add(momnet::Activation<T>(momnet::ActivationKind::tanh));
  block.add(momnet::Dropout<T>(0.25));
  return block;
}

// Linear(4, 6) -> a MomentumResidual of `depth` blocks -> [Dropout ->] Linear(6, 3).
// Block is MLPBlock<T> (no randomness) or Sequential<T> (dropout_block: the
// stack's step count matters, and so does the outer Sequential's, which keys
// the outer dropout's mask).
template <class T, class Block>
Sequential<T> make_model(std::uint64_t seed, BackwardMode mode, std::size_t depth = 3, Eigen::Index hidden = 5) {
  Rng rng(seed);
  Sequential<T> model;
  model.add(momnet::Linear<T>(4, 6, rng));
  std::vector<Block> blocks;
  for (std::size_t i = 0; i < depth; ++i) {
    if constexpr (std::is_same_v<Block, Sequential<T>>) {
      blocks.push_back(dropout_block<T>(rng));
    } else {
      blocks.emplace_back(6, hidden, rng);
    }
  }
  momnet::MomentumOptions options;
  options.gamma = 0.9;
  options.mode = mode;
  options.seed = 5;
  model.add(momnet::MomentumResidual<Block>(std::move(blocks), options));
  if constexpr (std::is_same_v<Block, Sequential<T>>) model.add(momnet::Dropout<T>(0.25));
  model.add(momnet::Linear<T>(6, 3, rng));
  return model;
}

template <class T, class Block>
momnet::MomentumResidual<Block>& stack_of(Sequential<T>& model) {
  return model.template get<momnet::MomentumResidual<Block>>(1);
}

// `steps` training steps on batches drawn from `data`.
template <class T, class Optimizer>
void train(Sequential<T>& model, Optimizer& optimizer, LRScheduler<Optimizer>* scheduler, Rng& data, int steps) {
  for (int s = 0; s < steps; ++s) {
    Tensor<T> x(Shape{5, 4});
    Tensor<T> y(Shape{5, 3});
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<T>(data.uniform(-1.0, 1.0));
    for (Eigen::Index i = 0; i < y.size(); ++i) y.data()[i] = static_cast<T>(data.uniform(-1.0, 1.0));
    momnet::Tape<T> tape;
    optimizer.zero_grad();
    const momnet::Var<T> out = model.forward(tape, tape.constant(x));
    tape.backward(momnet::mse(out, tape.constant(y)));
    optimizer.step();
    if (scheduler != nullptr) scheduler->step();
  }
}

// Every bit of the run's state: parameters, buffers, the optimiser's state,
// step count and rate, the step counts and the data generator.
template <class T, class Block, class Optimizer>
Bytes snapshot(Sequential<T>& model, Optimizer& optimizer, const Rng& data) {
  Bytes out;
  for (const auto& s : momnet::state_of(model)) {
    if (s.real != nullptr) append(out, s.real, static_cast<std::size_t>(s.shape.size()));
    else append(out, s.integer, static_cast<std::size_t>(s.shape.size()));
  }
  const long steps = optimizer.steps();
  const double rate = optimizer.learning_rate();
  append(out, &steps, 1);
  append(out, &rate, 1);
  for (std::size_t which = 0; which < optimizer.state_names().size(); ++which) {
    for (std::size_t i = 0; i < optimizer.parameters().size(); ++i) {
      if (const T* values = optimizer.state(which, i)) {
        append(out, values, static_cast<std::size_t>(optimizer.parameters()[i]->size()));
      }
    }
  }
  const std::uint64_t counts[3] = {model.step(), stack_of<T, Block>(model).step(), data.state()};
  append(out, counts, 3);
  return out;
}

enum class Schedule { none, step, cosine };

template <class Optimizer>
std::unique_ptr<LRScheduler<Optimizer>> scheduler_for(Optimizer& optimizer, Schedule schedule) {
  switch (schedule) {
    case Schedule::none: return nullptr;
    case Schedule::step: return std::make_unique<LRScheduler<Optimizer>>(optimizer, momnet::StepLR(2, 0.5));
    case Schedule::cosine:
      return std::make_unique<LRScheduler<Optimizer>>(optimizer, momnet::CosineAnnealingLR(5, 1e-4));
  }
  return nullptr;
}

momnet::SGDOptions sgd_options() {
  momnet::SGDOptions o;
  o.learning_rate = 0.05;
  o.momentum = 0.9;
  o.nesterov = true;
  o.weight_decay = 1e-3;
  return o;
}
momnet::AdamOptions adam_options() {
  momnet::AdamOptions o;
  o.learning_rate = 0.01;
  o.weight_decay = 1e-3;
  return o;
}

template <class Optimizer, class T>
Optimizer make_optimizer(Sequential<T>& model) {
  if constexpr (std::is_same_v<Optimizer, momnet::SGD<T>>) {
    return Optimizer(momnet::parameters_of(model), sgd_options());
  } else {
    return Optimizer(momnet::parameters_of(model), adam_options());
  }
}

// What a resumed run can get wrong on purpose, to show the comparison notices.
enum class Sabotage { none, forget_stack_counter, wrong_optimizer_step };

// Trains k steps, saves, trains m more ("never stopped"); builds everything
// afresh from other seeds, loads and trains m steps; returns whether the two
// runs end bit for bit equal: their parameters, and everything (and checks
// the state right after the load).
struct Outcome {
  bool parameters = false;
  bool everything = false;
};

template <class T>
Bytes parameter_bytes(Sequential<T>& model) {
  Bytes out;
  for (auto* p : momnet::parameters_of(model)) append(out, p->value_data(), static_cast<std::size_t>(p->size()));
  return out;
}

template <class T, class Block, class Optimizer>
Outcome resumes_bitwise(BackwardMode mode, Schedule schedule, int k, int m, Sabotage sabotage = Sabotage::none) {
  TempPath path;
  auto model = make_model<T, Block>(1, mode);
  Optimizer optimizer = make_optimizer<Optimizer>(model);
  auto scheduler = scheduler_for(optimizer, schedule);
  Rng data(100);
  train(model, optimizer, scheduler.get(), data, k);
  {
    TrainingCheckpoint checkpoint(model, optimizer);
    checkpoint.rng("data", data);  // the stack's step count is found by the constructor
    if (scheduler) checkpoint.scheduler(*scheduler);
    checkpoint.save(path.str(), k, {{"run", "test"}});
  }
  const Bytes at_save = snapshot<T, Block>(model, optimizer, data);
  train(model, optimizer, scheduler.get(), data, m);
  const Bytes never_stopped = snapshot<T, Block>(model, optimizer, data);
  const Bytes never_stopped_parameters = parameter_bytes(model);

  auto resumed = make_model<T, Block>(2, mode);
  Optimizer resumed_optimizer = make_optimizer<Optimizer>(resumed);
  auto resumed_scheduler = scheduler_for(resumed_optimizer, schedule);
  Rng resumed_data(200);
  REQUIRE(snapshot<T, Block>(resumed, resumed_optimizer, resumed_data) != at_save);
  TrainingCheckpoint checkpoint(resumed, resumed_optimizer);
  checkpoint.rng("data", resumed_data);
  if (resumed_scheduler) checkpoint.scheduler(*resumed_scheduler);
  CHECK(checkpoint.load(path.str()) == k);
  if (sabotage == Sabotage::none) CHECK(snapshot<T, Block>(resumed, resumed_optimizer, resumed_data) == at_save);
  if (resumed_scheduler) CHECK(resumed_scheduler->last_step() == scheduler->last_step() - m);
  if (sabotage == Sabotage::forget_stack_counter) stack_of<T, Block>(resumed).set_step(0);  // as built
  if (sabotage == Sabotage::wrong_optimizer_step) {
    std::vector<std::vector<const T*>> state(resumed_optimizer.state_names().size());
    for (std::size_t which = 0; which < state.size(); ++which) {
      for (std::size_t i = 0; i < resumed_optimizer.parameters().size(); ++i) {
        state[which].push_back(resumed_optimizer.state(which, i));
      }
    }
    std::vector<std::vector<std::vector<T>>> copies(state.size());
    for (std::size_t which = 0; which < state.size(); ++which) {
      for (std::size_t i = 0; i < state[which].size(); ++i) {
        copies[which].emplace_back(state[which][i], state[which][i] + resumed_optimizer.parameters()[i]->size());
        state[which][i] = copies[which].back().data();
      }
    }
    resumed_optimizer.load_state(resumed_optimizer.steps() + 1, state);
  }
  train(resumed, resumed_optimizer, resumed_scheduler.get(), resumed_data, m);
  return Outcome{parameter_bytes(resumed) == never_stopped_parameters,
                 snapshot<T, Block>(resumed, resumed_optimizer, resumed_data) == never_stopped};
}

}  // namespace

namespace {
// The resumed run's parameters, and then everything, equal the never-stopped run's.
template <class T, class Block, class Optimizer>
void check_resumes(const char* label, BackwardMode mode, Schedule schedule, int k, int m) {
  INFO(label << ", mode " << momnet::to_string(mode) << ", schedule " << static_cast<int>(schedule) << ", k " << k);
  const Outcome outcome = resumes_bitwise<T, Block, Optimizer>(mode, schedule, k, m);
  CHECK(outcome.parameters);
  CHECK(outcome.everything);
}
}  // namespace

TEST_CASE("A run resumed from a checkpoint ends bit for bit where the run that never stopped ends",
          "[io][checkpoint]") {
  using T = float;
  const BackwardMode mode = GENERATE(BackwardMode::exact, BackwardMode::stored);
  const Schedule schedule = GENERATE(Schedule::none, Schedule::step, Schedule::cosine);
  SECTION("SGD with Nesterov momentum and weight decay") {
    check_resumes<T, momnet::MLPBlock<T>, momnet::SGD<T>>("SGD, MLPBlock", mode, schedule, 3, 3);
    check_resumes<T, Sequential<T>, momnet::SGD<T>>("SGD, dropout blocks", mode, schedule, 3, 3);
  }
  SECTION("Adam") {
    check_resumes<T, momnet::MLPBlock<T>, momnet::Adam<T>>("Adam, MLPBlock", mode, schedule, 3, 3);
    check_resumes<T, Sequential<T>, momnet::Adam<T>>("Adam, dropout blocks", mode, schedule, 3, 3);
  }
  SECTION("AdamW") {
    check_resumes<T, Sequential<T>, momnet::AdamW<T>>("AdamW, dropout blocks", mode, schedule, 3, 3);
  }
}

TEST_CASE("A checkpoint saved before the first step has no optimiser state and resumes bitwise; double too",
          "[io][checkpoint]") {
  check_resumes<float, Sequential<float>, momnet::SGD<float>>("SGD", BackwardMode::exact, Schedule::step, 0, 3);
  check_resumes<float, Sequential<float>, momnet::Adam<float>>("Adam", BackwardMode::exact, Schedule::none, 0, 3);
  check_resumes<double, Sequential<double>, momnet::SGD<double>>("SGD", BackwardMode::exact, Schedule::cosine, 2, 3);
  check_resumes<double, Sequential<double>, momnet::Adam<double>>("Adam", BackwardMode::stored, Schedule::step, 2, 3);

  TempPath path;
  auto model = make_model<float, momnet::MLPBlock<float>>(1, BackwardMode::exact);
  momnet::SGD<float> sgd(momnet::parameters_of(model), sgd_options());
  momnet::save_checkpoint(path.str(), model, sgd, 0);
  const momnet::SafetensorsFile file(path.str());
  for (const auto& e : file.entries()) CHECK(e.name.rfind("optimizer.state.", 0) == std::string::npos);
  CHECK(file.contains("optimizer.step"));
}

TEST_CASE("The comparison notices a step count or an optimiser step that is not restored", "[io][checkpoint]") {
  using T = float;
  // The stack's count keys the dropout masks of its blocks: without it the
  // parameters differ.
  CHECK_FALSE(resumes_bitwise<T, Sequential<T>, momnet::SGD<T>>(BackwardMode::exact, Schedule::none, 3, 2,
                                                                Sabotage::forget_stack_counter)
                  .parameters);
  // Adam's bias correction depends on its step count.
  CHECK_FALSE(resumes_bitwise<T, momnet::MLPBlock<T>, momnet::Adam<T>>(BackwardMode::stored, Schedule::none, 3, 2,
                                                                       Sabotage::wrong_optimizer_step)
                  .parameters);
  // A model without randomness trains the same without the count (which
  // then is all that differs).
  const Outcome without = resumes_bitwise<T, momnet::MLPBlock<T>, momnet::SGD<T>>(
      BackwardMode::exact, Schedule::none, 3, 2, Sabotage::forget_stack_counter);
  CHECK(without.parameters);
  CHECK_FALSE(without.everything);
}

TEST_CASE("The file holds the model under model., the optimiser, scheduler, counters, generators and metadata",
          "[io][checkpoint]") {
  TempPath path;
  Rng rng(1);
  Sequential<double> model;
  model.add(momnet::Linear<double>(2, 3, rng));
  model.add(momnet::Linear<double>(3, 1, rng, false));
  momnet::SGD<double> sgd(momnet::parameters_of(model), sgd_options());
  LRScheduler<momnet::SGD<double>> scheduler(sgd, momnet::StepLR(1, 0.5));
  Rng data(9);
  data.next();
  Tensor<double> x(Shape{4, 2});
  x.array() = 0.5;
  momnet::Tape<double> tape;
  tape.backward(momnet::sum(model.forward(tape, tape.constant(x))));
  sgd.step();
  scheduler.step();

  TrainingCheckpoint checkpoint(model, sgd);
  checkpoint.scheduler(scheduler).rng("data", data);
  checkpoint.save(path.str(), 17, {{"note", "hello"}});
  const momnet::SafetensorsFile file(path.str());
  std::vector<std::string> names;
  for (const auto& e : file.entries()) names.push_back(e.name);
  std::sort(names.begin(), names.end());
  CHECK(names == std::vector<std::string>{"counters.model", "model.0.bias", "model.0.weight", "model.1.weight",
                                          "optimizer.state.0.bias.momentum_buffer",
                                          "optimizer.state.0.weight.momentum_buffer",
                                          "optimizer.state.1.weight.momentum_buffer", "optimizer.step", "rng.data",
                                          "scheduler.base_lr", "scheduler.last_step", "training.step"});
  CHECK(file.entry("model.0.weight").dtype == momnet::Dtype::F64);
  CHECK(file.entry("model.0.weight").shape == std::vector<std::int64_t>{3, 2});
  CHECK(file.entry("optimizer.state.0.weight.momentum_buffer").shape == std::vector<std::int64_t>{3, 2});
  CHECK(file.entry("counters.model").dtype == momnet::Dtype::U64);
  CHECK(file.entry("rng.data").dtype == momnet::Dtype::U64);
  CHECK(file.entry("training.step").dtype == momnet::Dtype::I64);
  CHECK(file.entry("scheduler.base_lr").dtype == momnet::Dtype::F64);
  CHECK(file.int64s("training.step") == std::vector<std::int64_t>{17});
  CHECK(file.int64s("optimizer.step") == std::vector<std::int64_t>{1});
  CHECK(file.int64s("scheduler.last_step") == std::vector<std::int64_t>{1});
  std::uint64_t state = 0;
  file.copy_to("rng.data", &state, 1);
  CHECK(state == data.state());
  CHECK(file.metadata() == std::map<std::string, std::string>{
                               {"format", "pt"},
                               {"momnet.checkpoint", "1"},
                               {"momnet.dtype", "F64"},
                               {"momnet.optimizer", "SGD"},
                               {"momnet.optimizer_options",
                                R"({"lr":0.025,"momentum":0.9,"dampening":0.0,"weight_decay":0.001,"nesterov":true})"},
                               {"note", "hello"}});

  momnet::AdamW<double> adamw(momnet::parameters_of(model));
  momnet::save_checkpoint(path.str(), model, adamw, 0);
  const momnet::SafetensorsFile adam_file(path.str());
  CHECK(adam_file.metadata().at("momnet.optimizer") == "AdamW");
  CHECK(adam_file.metadata().at("momnet.optimizer_options") ==
        R"({"lr":0.001,"betas":[0.9,0.999],"eps":1e-08,"weight_decay":0.01})");
}

namespace {

// Everything a failed load must leave alone.
struct Run {
  Sequential<float> model;
  momnet::Adam<float> adam;
  LRScheduler<momnet::Adam<float>> scheduler;
  Rng data{3};

  explicit Run(std::uint64_t seed, std::size_t depth = 3, Eigen::Index hidden = 5)
      : model(make_model<float, momnet::MLPBlock<float>>(seed, BackwardMode::exact, depth, hidden)),
        adam(momnet::parameters_of(model), adam_options()),
        scheduler(adam, momnet::StepLR(2, 0.5)) {}

  TrainingCheckpoint<Sequential<float>, momnet::Adam<float>> checkpoint() {
    TrainingCheckpoint<Sequential<float>, momnet::Adam<float>> c(model, adam);
    c.scheduler(scheduler).rng("data", data);
    return c;
  }
  Bytes state() {
    Bytes out = snapshot<float, momnet::MLPBlock<float>>(model, adam, data);
    const long last = scheduler.last_step();
    append(out, &last, 1);
    for (auto* p : momnet::parameters_of(model)) {
      const std::uint64_t version = p->version();
      append(out, &version, 1);
    }
    return out;
  }
};

// Loads `path` into `run`, expecting a CheckpointError whose message holds
// every part, and nothing changed.
void check_refused(Run& run, const std::string& path, const std::vector<std::string>& parts) {
  const Bytes before = run.state();
  std::vector<std::string> all{"momnet::TrainingCheckpoint::load: cannot resume from '" + path +
                               "' (nothing was changed)"};
  all.insert(all.end(), parts.begin(), parts.end());
  REQUIRE_THROWS_MATCHES(run.checkpoint().load(path), CheckpointError, momnet_test::ExceptionIs<CheckpointError>(all));
  CHECK(run.state() == before);
}

// A trained run's checkpoint at `path`.
void save_trained(const std::string& path) {
  Run run(1);
  train(run.model, run.adam, &run.scheduler, run.data, 3);
  run.checkpoint().save(path, 3);
}

// The checkpoint at `path` rewritten without the tensors `drop` and with `metadata` changes.
void rewrite(const std::string& path, const std::vector<std::string>& drop,
             const std::map<std::string, std::string>& metadata = {}) {
  const momnet::SafetensorsFile file(path);
  std::vector<momnet::NamedTensor> tensors;
  for (const auto& e : file.entries()) {
    if (std::find(drop.begin(), drop.end(), e.name) == drop.end()) {
      tensors.push_back(momnet::NamedTensor::raw(e.name, e.dtype, e.shape, file.bytes(e.name)));
    }
  }
  std::map<std::string, std::string> meta = file.metadata();
  for (const auto& [key, value] : metadata) {
    if (value.empty()) meta.erase(key);
    else meta[key] = value;
  }
  const Bytes bytes = momnet::serialize_safetensors(tensors, meta);  // the file's bytes die with `file`
  write_bytes(path, bytes);
}

}  // namespace

TEST_CASE("Every step count in the model is saved under its path and restored, whatever the nesting",
          "[io][checkpoint]") {
  TempPath path;
  Rng rng(4);
  // A stage as the ResNet builder makes it: a Sequential whose stack is added
  // under the empty name (sharing the Sequential's path), a dropout layer,
  // and a nested Sequential.
  Sequential<float> stage;
  stage.add("0", momnet::Linear<float>(3, 3, rng));
  stage.add("", momnet::Residual<momnet::MLPBlock<float>>(momnet::MLPBlock<float>(3, 4, rng), 2,
                                                           momnet::ResidualOptions{true, 0, 1}));
  Sequential<float> model;
  model.add("stage", stage);
  model.add("drop", momnet::Dropout<float>(0.5, 7));
  Sequential<float> head;
  head.add(momnet::Linear<float>(3, 2, rng));
  model.add("head", head);
  momnet::SGD<float> sgd(momnet::parameters_of(model), sgd_options());

  TrainingCheckpoint checkpoint(model, sgd);
  checkpoint.save(path.str(), 0);
  const momnet::SafetensorsFile file(path.str());
  std::vector<std::string> counters;
  for (const auto& e : file.entries()) {
    if (e.name.rfind("counters.", 0) == 0) counters.push_back(e.name);
  }
  std::sort(counters.begin(), counters.end());
  CHECK(counters == std::vector<std::string>{"counters.model", "counters.model.drop", "counters.model.head",
                                             "counters.model.stage", "counters.model.stage#2"});

  // Counts moved by training come back on a fresh model.
  model.set_step(5);
  model.get<Sequential<float>>(0).set_step(6);
  model.get<Sequential<float>>(0).get<momnet::Residual<momnet::MLPBlock<float>>>(1).set_step(7);
  model.get<momnet::Dropout<float>>(1).set_step(8);
  model.get<Sequential<float>>(2).set_step(9);
  TrainingCheckpoint(model, sgd).save(path.str(), 3);
  Sequential<float> fresh = model;
  fresh.set_step(0);
  fresh.get<Sequential<float>>(0).set_step(0);
  fresh.get<Sequential<float>>(0).get<momnet::Residual<momnet::MLPBlock<float>>>(1).set_step(0);
  fresh.get<momnet::Dropout<float>>(1).set_step(0);
  fresh.get<Sequential<float>>(2).set_step(0);
  momnet::SGD<float> fresh_sgd(momnet::parameters_of(fresh), sgd_options());
  CHECK(TrainingCheckpoint(fresh, fresh_sgd).load(path.str()) == 3);
  CHECK(fresh.step() == 5);
  CHECK(fresh.get<Sequential<float>>(0).step() == 6);
  CHECK(fresh.get<Sequential<float>>(0).get<momnet::Residual<momnet::MLPBlock<float>>>(1).step() == 7);
  CHECK(fresh.get<momnet::Dropout<float>>(1).step() == 8);
  CHECK(fresh.get<Sequential<float>>(2).step() == 9);
}

TEST_CASE("Loading refuses another optimiser, other options and another schedule, changing nothing",
          "[io][checkpoint][errors]") {
  TempPath path;
  save_trained(path.str());
  Run run(2);
  const Bytes before = run.state();

  SECTION("SGD or AdamW instead of Adam") {
    momnet::SGD<float> sgd(momnet::parameters_of(run.model), sgd_options());
    REQUIRE_THROWS_EXACT(TrainingCheckpoint(run.model, sgd).load(path.str()),
                         CheckpointError, "'" + path.str() + "'",
                         "the optimizer is Adam in the checkpoint, SGD here",
                         "unexpected tensor(s): \"rng.data\", \"scheduler.base_lr\", \"scheduler.last_step\"");
    CHECK(sgd.steps() == 0);
    CHECK(sgd.learning_rate() == 0.05);
    momnet::AdamW<float> adamw(momnet::parameters_of(run.model), adam_options());
    REQUIRE_THROWS_EXACT(momnet::load_checkpoint(path.str(), run.model, adamw), CheckpointError,
                         "the optimizer is Adam in the checkpoint, AdamW here");
    CHECK(run.state() == before);
  }
  SECTION("other betas and epsilon") {
    momnet::AdamOptions options = adam_options();
    options.beta2 = 0.99;
    options.epsilon = 1e-6;
    run.adam = momnet::Adam<float>(momnet::parameters_of(run.model), options);
    check_refused(run, path.str(),
                  {"\n\tAdam option \"betas\" is [0.9,0.999] in the checkpoint, [0.9,0.99] here",
                   "\n\tAdam option \"eps\" is 1e-08 in the checkpoint, 1e-06 here"});
  }
  SECTION("another learning rate: the checkpoint's wins, but the scheduler's base rate must match") {
    momnet::AdamOptions options = adam_options();
    options.learning_rate = 0.5;
    run.adam = momnet::Adam<float>(momnet::parameters_of(run.model), options);
    run.scheduler = LRScheduler<momnet::Adam<float>>(run.adam, momnet::StepLR(2, 0.5));
    check_refused(run, path.str(), {"the scheduler's base learning rate is 0.5, the checkpoint's 0.01 (build the "
                                    "scheduler on an optimiser with the run's initial rate, or pass that rate)"});
    run.scheduler = LRScheduler<momnet::Adam<float>>(run.adam, momnet::StepLR(2, 0.5), 0.01);
    CHECK(run.checkpoint().load(path.str()) == 3);
    CHECK(run.adam.learning_rate() == 0.005);  // StepLR at step 3
  }
  SECTION("another schedule") {
    run.scheduler = LRScheduler<momnet::Adam<float>>(run.adam, momnet::StepLR(1, 0.5));
    check_refused(run, path.str(), {"the scheduler gives learning rate 0.00125 at step 3, but the checkpoint's "
                                    "optimiser ran at 0.005: is this the schedule the run used?"});
  }
  SECTION("no scheduler, generator or counter given, or one more") {
    REQUIRE_THROWS_EXACT(momnet::load_checkpoint(path.str(), run.model, run.adam), CheckpointError,
                         "unexpected tensor(s): \"rng.data\", \"scheduler.base_lr\", "
                         "\"scheduler.last_step\" (saved with a scheduler, generator or counter not given here, "
                         "or another model?)");
    Rng other(4);
    auto checkpoint = run.checkpoint();
    checkpoint.rng("other", other);
    REQUIRE_THROWS_EXACT(checkpoint.load(path.str()), CheckpointError, "missing tensor(s): \"rng.other\"");
    CHECK(run.state() == before);
    CHECK(other.state() == 4);
  }
}

TEST_CASE("Loading refuses another model: every missing, unexpected and mismatched tensor at once",
          "[io][checkpoint][errors]") {
  TempPath path;
  save_trained(path.str());
  Run run(2, 2, 7);  // two blocks of hidden size 7, not three of 5
  check_refused(run, path.str(),
                {"\n\t\"model.1.0.fc1.weight\" has shape [5, 6] in the checkpoint, [7, 6] here",
                 "\n\t\"model.1.1.fc2.weight\" has shape [6, 5] in the checkpoint, [6, 7] here",
                 "\n\t\"optimizer.state.1.0.fc1.bias.exp_avg\" has shape [5] in the checkpoint, [7] here",
                 "\n\tunexpected tensor(s): \"model.1.2.fc1.bias\"", "\"optimizer.state.1.2.fc2.weight.exp_avg_sq\""});

  // A double model from a float checkpoint: one message for the dtype.
  Sequential<double> wide = make_model<double, momnet::MLPBlock<double>>(1, BackwardMode::exact);
  momnet::Adam<double> adam(momnet::parameters_of(wide), adam_options());
  try {
    momnet::load_checkpoint(path.str(), wide, adam);
    FAIL("no CheckpointError");
  } catch (const CheckpointError& e) {
    CHECK(e.path() == path.str());
    CHECK(e.problems().front() == "the checkpoint holds F32 values; this model's are F64 (a run resumes in the "
                                  "type it was saved in)");
    for (const std::string& p : e.problems()) CHECK(p.find("is F32 in the checkpoint") == std::string::npos);
  }
}

TEST_CASE("Loading refuses a checkpoint with missing entries or metadata, and a truncated file",
          "[io][checkpoint][errors]") {
  TempPath path;
  Run run(2);
  SECTION("missing tensors, each named") {
    save_trained(path.str());
    rewrite(path.str(), {"training.step", "model.0.bias", "optimizer.state.2.weight.exp_avg_sq", "counters.model"});
    check_refused(run, path.str(),
                  {"missing tensor(s): \"model.0.bias\", \"optimizer.state.2.weight.exp_avg_sq\", \"counters.model\", "
                   "\"training.step\""});
  }
  SECTION("a missing optimiser step: its state is neither expected nor unexpected") {
    save_trained(path.str());
    rewrite(path.str(), {"optimizer.step"});
    try {
      run.checkpoint().load(path.str());
      FAIL("no CheckpointError");
    } catch (const CheckpointError& e) {
      CHECK(e.problems() == std::vector<std::string>{"missing tensor(s): \"optimizer.step\""});
    }
  }
  SECTION("missing or wrong metadata") {
    save_trained(path.str());
    rewrite(path.str(), {}, {{"momnet.checkpoint", "2"}, {"momnet.optimizer_options", ""}, {"momnet.dtype", ""}});
    check_refused(run, path.str(),
                  {"the checkpoint has format version 2; this momnet reads version 1", "no \"momnet.dtype\" metadata",
                   "no \"momnet.optimizer_options\" metadata"});
    rewrite(path.str(), {}, {{"momnet.checkpoint", "1"}, {"momnet.dtype", "F32"},
                             {"momnet.optimizer_options", R"({"lr":-1,"betas":[0.9,0.999],"eps":1e-08})"}});
    check_refused(run, path.str(), {"Adam option \"weight_decay\" is missing from the checkpoint",
                                    "Adam option \"lr\" must be a number >= 0 in the checkpoint, got -1"});
  }
  SECTION("a model file from momnet::save is not a training checkpoint") {
    momnet::save(run.model, path.str());
    check_refused(run, path.str(), {"no \"momnet.checkpoint\" metadata: not a momnet training checkpoint"});
  }
  SECTION("a truncated file throws FormatError naming it") {
    save_trained(path.str());
    const Bytes bytes = read_bytes(path.str());
    for (const std::size_t keep : {bytes.size() - 4, std::size_t{100}, std::size_t{5}}) {
      write_bytes(path.str(), Bytes(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(keep)));
      const Bytes before = run.state();
      REQUIRE_THROWS_MATCHES(run.checkpoint().load(path.str()), momnet::FormatError,
                             momnet_test::ExceptionIs<momnet::FormatError>({"safetensors file '" + path.str() + "'"}));
      CHECK(run.state() == before);
    }
  }
  SECTION("a file that does not exist") {
    REQUIRE_THROWS_EXACT(run.checkpoint().load(path.str()), std::runtime_error, "cannot read '" + path.str() + "'");
  }
}

TEST_CASE("Saving checks its arguments", "[io][checkpoint][errors]") {
  TempPath path;
  Run run(1);
  REQUIRE_THROWS_EXACT(run.checkpoint().save(path.str(), -1), std::invalid_argument,
                       "momnet::TrainingCheckpoint::save('" + path.str() + "'): step must be >= 0, got -1");
  REQUIRE_THROWS_EXACT(run.checkpoint().save(path.str(), 0, {{"momnet.mine", "x"}}), std::invalid_argument,
                       "metadata key 'momnet.mine' is reserved");
  Rng other(1);
  REQUIRE_THROWS_EXACT(run.checkpoint().rng("data", other), std::invalid_argument,
                       "momnet::TrainingCheckpoint::rng: the name 'data' is taken already");
  REQUIRE_THROWS_EXACT(run.checkpoint().counter("model", run.model), std::invalid_argument,
                       "momnet::TrainingCheckpoint::counter: the name 'model' is taken already",
                       "registered by the constructor");
  REQUIRE_THROWS_EXACT(run.checkpoint().counter("model.1", stack_of<float, momnet::MLPBlock<float>>(run.model)),
                       std::invalid_argument, "the name 'model.1' is taken already");
  REQUIRE_THROWS_EXACT(run.checkpoint().rng("", other), std::invalid_argument, "the name must not be empty");
  momnet::Parameter<float> stray(Shape{2}, "stray");
  momnet::SGD<float> sgd({&stray}, momnet::SGDOptions{});
  sgd.step();
  REQUIRE_THROWS_EXACT(momnet::save_checkpoint(path.str(), run.model, sgd, 1), std::invalid_argument,
                       "the optimizer's parameter 0 ('stray') is not a parameter of the model");
  CHECK_FALSE(fs::exists(path.str()));
}

TEST_CASE("Optimisers expose and restore their state, refusing inconsistent lists", "[optim][checkpoint]") {
  momnet::Parameter<double> p(Shape{2}, "p");
  p.array() << 1.0, 3.0;
  p.grad_array() << 1.0, -2.0;
  momnet::SGD<double> sgd({&p}, sgd_options());
  REQUIRE(sgd.state_names().size() == 1);
  CHECK(std::string(sgd.state_names()[0]) == "momentum_buffer");
  CHECK(sgd.state(0, 0) == nullptr);  // PyTorch creates the buffer at the first step
  sgd.step();
  REQUIRE(sgd.state(0, 0) != nullptr);
  CHECK(sgd.state(0, 0)[1] == -2.0 + 1e-3 * 3.0);  // the first step copies g = grad + weight_decay p
  REQUIRE_THROWS_EXACT(sgd.state(1, 0), std::out_of_range, "momnet::SGD::state: state 1 of parameter 0 requested");
  REQUIRE_THROWS_EXACT(sgd.load_state(-1, {}), std::invalid_argument, "momnet::SGD::load_state: steps must be >= 0, got -1");
  REQUIRE_THROWS_EXACT(sgd.load_state(2, {}), std::invalid_argument,
                       "momnet::SGD::load_state: expected 1 state tensor list(s) at step 2, got 0");
  REQUIRE_THROWS_EXACT(sgd.load_state(2, {{nullptr}}), std::invalid_argument,
                       "momnet::SGD::load_state: state list 0 has a null tensor for parameter 0");
  CHECK(sgd.steps() == 1);
  sgd.load_state(0, {});
  CHECK(sgd.state(0, 0) == nullptr);

  momnet::SGD<double> plain({&p}, momnet::SGDOptions{});
  plain.step();
  CHECK(plain.state_names().empty());
  plain.load_state(5, {});
  CHECK(plain.steps() == 5);

  momnet::Adam<double> adam({&p}, adam_options());
  CHECK(adam.state(1, 0) == nullptr);
  adam.step();
  const double m[2] = {0.5, 0.25};
  const double v[2] = {4.0, 1.0};
  adam.load_state(7, {{m}, {v}});
  CHECK(adam.steps() == 7);
  CHECK(adam.state(0, 0)[1] == 0.25);
  CHECK(adam.state(1, 0)[0] == 4.0);
  REQUIRE_THROWS_EXACT(adam.load_state(3, {{m}}), std::invalid_argument,
                       "momnet::Adam::load_state: expected 2 state tensor list(s) at step 3, got 1");
  REQUIRE_THROWS_EXACT(adam.load_state(3, {{m}, {}}), std::invalid_argument,
                       "momnet::Adam::load_state: state list 1 has 0 tensors for 1 parameters");
  CHECK(adam.steps() == 7);
  adam.load_state(0, {});
  CHECK(adam.state(0, 0) == nullptr);
  adam.load_state(1, {{m}, {v}});
  adam.load_state(0, {});
  adam.load_state(1, {{m}, {v}});
  CHECK(adam.state(0, 0)[0] == 0.5);

  Rng rng(11);
  rng.next();
  Rng copy(0);
  copy.set_state(rng.state());
  CHECK(copy.next() == rng.next());
}
