// Training checkpoints: one safetensors file holding everything a run needs
// to continue bit for bit as if it had never stopped.
//
//   momnet::TrainingCheckpoint checkpoint(model, optimizer);   // SGD, Adam, AdamW
//   checkpoint.scheduler(scheduler)             // optional: an LRScheduler of that optimiser
//             .rng("data", data_rng)            // optional: any Rng the run draws from
//             .counter("eval_dropout", dropout);  // optional: a step count outside the model
//   checkpoint.save("run.safetensors", step);
//   ...
//   std::int64_t step = checkpoint.load("run.safetensors");   // on freshly built objects
//
// or, for a model and an optimiser (and a scheduler) alone,
// save_checkpoint(path, model, optimizer, [scheduler,] step) and
// load_checkpoint(path, model, optimizer [, scheduler]) -> step.
//
// Names in the file (safetensors tensors; "__metadata__" strings):
//   model.<state_dict name>                 parameters and buffers (state_dict.hpp's names),
//                                           the model's dtype (F32, F64), integer buffers I64
//   optimizer.step                          I64 []: the optimiser's step() count
//   optimizer.state.<param name>.<state>    its per-parameter state, <state> PyTorch's:
//                                           momentum_buffer (SGD with momentum), exp_avg and
//                                           exp_avg_sq (Adam, AdamW); absent before the first
//                                           step, as in PyTorch
//   scheduler.last_step, scheduler.base_lr  I64 [], F64 []: when a scheduler is given
//   counters.<name>                         U64 []: step counts (dropout masks are keyed by
//                                           them): counters.model.<path> for every module in
//                                           the model with step()/set_step() (the model itself
//                                           is counters.model), and those given to counter()
//   rng.<name>                              U64 []: an Rng's state
//   training.step                           I64 []: the caller's training step
//   metadata: momnet.checkpoint (format version), momnet.dtype, momnet.optimizer (SGD, Adam,
//             AdamW), momnet.optimizer_options (JSON in PyTorch's names: lr, momentum,
//             dampening, weight_decay, nesterov; lr, betas, eps, weight_decay), "format": "pt"
//             unless set, and the caller's own keys (any not beginning with "momnet.").
//
// Loading is strict: the optimiser's kind and options (all but the learning
// rate, which a schedule changes and the load restores, as PyTorch's
// load_state_dict does), the dtype, every name, shape and dtype, the
// scheduler's base rate and its rate at the saved step are checked first, and
// every problem is reported at once in a CheckpointError naming the file;
// nothing changes then. A malformed or truncated file throws FormatError.
//
// Not saved: train/eval mode and the schedule itself (only its position:
// build the same one). Every step count inside the model is found by the
// walk over its modules (module.hpp), so a resumed run draws the same
// dropout masks as one never stopped.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "momnet/io/safetensors.hpp"
#include "momnet/io/state_dict.hpp"
#include "momnet/module.hpp"
#include "momnet/optim/adam.hpp"
#include "momnet/optim/lr_scheduler.hpp"
#include "momnet/optim/sgd.hpp"
#include "momnet/random.hpp"

namespace momnet {

// The version of the layout above that save() writes and load() reads.
inline constexpr int checkpoint_format_version = 1;

// A checkpoint that cannot be loaded into the objects given (nothing was changed).
class CheckpointError : public std::runtime_error {
 public:
  CheckpointError(const std::string& path, std::vector<std::string> problems)
      : std::runtime_error(describe(path, problems)), path_(path), problems_(std::move(problems)) {}
  const std::string& path() const noexcept { return path_; }
  const std::vector<std::string>& problems() const noexcept { return problems_; }

 private:
  static std::string describe(const std::string& path, const std::vector<std::string>& problems) {
    std::string text = "momnet::TrainingCheckpoint::load: cannot resume from '" + path + "' (nothing was changed), " +
                       std::to_string(problems.size()) + " problem(s):";
    for (const std::string& p : problems) text += "\n\t" + p;
    return text;
  }

  std::string path_;
  std::vector<std::string> problems_;
};

namespace detail {

// The kind and options of each optimiser, as the metadata holds them.
template <class T>
std::string optimizer_kind(const SGD<T>&) {
  return "SGD";
}
template <class T>
std::string optimizer_kind(const Adam<T>& adam) {
  return adam.options().decoupled_weight_decay ? "AdamW" : "Adam";
}
template <class T>
nlohmann::ordered_json optimizer_options(const SGD<T>& sgd) {
  const SGDOptions& o = sgd.options();
  nlohmann::ordered_json j;
  j["lr"] = o.learning_rate;
  j["momentum"] = o.momentum;
  j["dampening"] = o.dampening;
  j["weight_decay"] = o.weight_decay;
  j["nesterov"] = o.nesterov;
  return j;
}
template <class T>
nlohmann::ordered_json optimizer_options(const Adam<T>& adam) {
  const AdamOptions& o = adam.options();
  nlohmann::ordered_json j;
  j["lr"] = o.learning_rate;
  j["betas"] = {o.beta1, o.beta2};
  j["eps"] = o.epsilon;
  j["weight_decay"] = o.weight_decay;
  return j;
}

inline std::vector<std::int64_t> dims_of(const Shape& shape) {
  const std::vector<Eigen::Index> d = shape.dims();
  return std::vector<std::int64_t>(d.begin(), d.end());
}

inline std::string quoted_list(const std::vector<std::string>& names) {
  std::string s;
  for (const std::string& n : names) s += (s.empty() ? "\"" : ", \"") + n + "\"";
  return s;
}

}  // namespace detail

template <class Model, class Optimizer>
class TrainingCheckpoint {
 public:
  using T = typename Model::Scalar;

  // The model's state and the step count of every module in it that has one
  // (the model itself, its stacks, Sequentials and dropout layers), named by
  // their paths: counters.model, counters.model.encoder.layers, ... A path
  // met twice (a member added to a Sequential under the empty name shares
  // the Sequential's path) gets "#2", "#3", ... in the walk's order.
  TrainingCheckpoint(Model& model, Optimizer& optimizer) : model_(&model), optimizer_(&optimizer) {
    StateVisitor<T> walk(nullptr, nullptr);
    walk.set_counter_function([this](const std::string& path, std::function<std::uint64_t()> get,
                                     std::function<void(std::uint64_t)> set) {
      const std::string base = path.empty() ? std::string("model") : "model." + path;
      std::string name = base;
      for (int repeat = 2; taken(name, counters_); ++repeat) name = base + "#" + std::to_string(repeat);
      counters_.push_back({name, Counter{std::move(get), std::move(set)}});
    });
    walk.enter(model);
  }

  // Also the scheduler's position (it must drive this checkpoint's optimiser).
  TrainingCheckpoint& scheduler(LRScheduler<Optimizer>& scheduler) noexcept {
    scheduler_ = &scheduler;
    return *this;
  }
  // Also `rng`'s state, as rng.<name>.
  TrainingCheckpoint& rng(const std::string& name, Rng& rng) {
    check_name("rng", name, rngs_);
    rngs_.push_back({name, &rng});
    return *this;
  }
  // Also the step count of `module` (anything with step() and set_step(): a
  // stack, a Sequential, a dropout layer) outside the model, as
  // counters.<name>; the model's own are registered already.
  template <class Module>
  TrainingCheckpoint& counter(const std::string& name, Module& module) {
    static_assert(detail::has_step_counter<Module>::value,
                  "momnet::TrainingCheckpoint::counter: the module needs step() and set_step()");
    check_name("counter", name, counters_);
    counters_.push_back({name, Counter{[&module] { return static_cast<std::uint64_t>(module.step()); },
                                       [&module](std::uint64_t step) { module.set_step(step); }}});
    return *this;
  }

  // Writes the checkpoint (atomically: write_safetensors). `step` is the
  // caller's training step, returned by load(); `metadata` keys must not
  // begin with "momnet.".
  void save(const std::string& path, std::int64_t step, std::map<std::string, std::string> metadata = {}) const {
    const std::string who = "momnet::TrainingCheckpoint::save('" + path + "')";
    const std::vector<std::string> names = parameter_names(who);
    if (step < 0) throw std::invalid_argument(who + ": step must be >= 0, got " + std::to_string(step));
    for (const auto& item : metadata) {
      if (item.first.rfind("momnet.", 0) == 0) {
        throw std::invalid_argument(who + ": metadata key '" + item.first +
                                    "' is reserved (keys beginning with \"momnet.\" describe the checkpoint)");
      }
    }
    metadata.emplace("format", "pt");
    metadata["momnet.checkpoint"] = std::to_string(checkpoint_format_version);
    metadata["momnet.dtype"] = dtype_name(dtype_of<T>());
    metadata["momnet.optimizer"] = detail::optimizer_kind(*optimizer_);
    metadata["momnet.optimizer_options"] = detail::optimizer_options(*optimizer_).dump();

    // Scalars live here until the write (NamedTensor refers to its values).
    std::deque<std::int64_t> integers;
    std::deque<double> reals;
    std::deque<std::array<std::uint8_t, 8>> words;
    std::vector<NamedTensor> tensors;
    const auto add_integer = [&](const std::string& name, std::int64_t value) {
      tensors.emplace_back(name, &integers.emplace_back(value), Shape{});
    };
    const auto add_word = [&](const std::string& name, std::uint64_t value) {
      std::array<std::uint8_t, 8>& bytes = words.emplace_back();
      detail::store_le(value, bytes.data());
      tensors.push_back(NamedTensor::raw(name, Dtype::U64, {}, ByteView{bytes.data(), bytes.size()}));
    };

    for (const StateRef<T>& s : state_of(*model_)) {
      if (s.real != nullptr) {
        tensors.emplace_back("model." + s.name, static_cast<const T*>(s.real), s.shape);
      } else {
        tensors.emplace_back("model." + s.name, static_cast<const std::int64_t*>(s.integer), s.shape);
      }
    }
    add_integer("optimizer.step", static_cast<std::int64_t>(optimizer_->steps()));
    if (optimizer_->has_state()) {
      const std::vector<const char*> states = optimizer_->state_names();
      for (std::size_t which = 0; which < states.size(); ++which) {
        for (std::size_t i = 0; i < names.size(); ++i) {
          tensors.emplace_back(state_name(names[i], states[which]), optimizer_->state(which, i),
                               optimizer_->parameters()[i]->shape());
        }
      }
    }
    if (scheduler_ != nullptr) {
      add_integer("scheduler.last_step", static_cast<std::int64_t>(scheduler_->last_step()));
      tensors.emplace_back("scheduler.base_lr", &reals.emplace_back(scheduler_->base_learning_rate()), Shape{});
    }
    for (const auto& [name, c] : counters_) add_word("counters." + name, c.get());
    for (const auto& [name, r] : rngs_) add_word("rng." + name, r->state());
    add_integer("training.step", step);
    write_safetensors(path, tensors, metadata);
  }

  // Restores everything save() wrote into the objects given and returns the
  // training step (see the top of this file for what is checked).
  std::int64_t load(const std::string& path) {
    const std::string who = "momnet::TrainingCheckpoint::load('" + path + "')";
    const std::vector<std::string> names = parameter_names(who);
    const SafetensorsFile file(path);
    Reader read(file);

    // The metadata: what was saved, and from which optimiser.
    const std::map<std::string, std::string>& meta = file.metadata();
    const auto value_of = [&meta](const std::string& key) -> const std::string* {
      const auto it = meta.find(key);
      return it == meta.end() ? nullptr : &it->second;
    };
    if (const std::string* version = value_of("momnet.checkpoint")) {
      if (*version != std::to_string(checkpoint_format_version)) {
        read.problem("the checkpoint has format version " + *version + "; this momnet reads version " +
                     std::to_string(checkpoint_format_version));
      }
    } else {
      read.problem("no \"momnet.checkpoint\" metadata: not a momnet training checkpoint (momnet::load reads a "
                   "model saved by momnet::save)");
    }
    const std::string dtype = dtype_name(dtype_of<T>());
    const std::string* saved_dtype = value_of("momnet.dtype");
    if (saved_dtype != nullptr && *saved_dtype != dtype) {
      read.problem("the checkpoint holds " + *saved_dtype + " values; this model's are " + dtype +
                   " (a run resumes in the type it was saved in)");
      read.skip_real_dtypes = true;  // one message, not one per tensor
    } else if (saved_dtype == nullptr) {
      read.problem("no \"momnet.dtype\" metadata");
    }
    const SavedOptimizer saved = check_optimizer(read, value_of("momnet.optimizer"), value_of("momnet.optimizer_options"));
    const std::optional<double>& saved_lr = saved.learning_rate;

    // The model.
    const std::vector<StateRef<T>> state = state_of(*model_);
    for (const StateRef<T>& s : state) {
      read.expect("model." + s.name, s.real != nullptr ? dtype_of<T>() : Dtype::I64, detail::dims_of(s.shape));
    }

    // The optimiser: its state exists (and is expected) from the first step on.
    const std::optional<std::int64_t> steps = read.integer("optimizer.step");
    if (steps && *steps < 0) read.problem("\"optimizer.step\" is " + std::to_string(*steps) + ", not >= 0");
    const std::vector<const char*> states = optimizer_->state_names();
    const bool has_state = saved.same_kind && steps && *steps > 0 && !states.empty();
    if (!saved.same_kind) {
      // Another optimiser's state: its kind was reported, its names would only add noise.
      for (const TensorEntry& e : file.entries()) {
        if (e.name.rfind("optimizer.state.", 0) == 0) read.tolerate(e.name);
      }
    }
    for (const char* which : states) {
      for (std::size_t i = 0; saved.same_kind && i < names.size(); ++i) {
        const std::string name = state_name(names[i], which);
        if (has_state) {
          read.expect(name, dtype_of<T>(), detail::dims_of(optimizer_->parameters()[i]->shape()));
        } else if (!steps) {
          read.tolerate(name);  // whether it belongs is unknown; the missing step was reported
        }
      }
    }

    // The scheduler: its rate at the saved step must be the one the run had.
    // (Plain values, not optionals: GCC 12 sees an optional's payload as
    // maybe uninitialised here.)
    long last_step = 0;
    if (scheduler_ != nullptr) {
      const std::optional<std::int64_t> saved_step = read.integer("scheduler.last_step");
      const std::optional<double> base = read.real("scheduler.base_lr");
      const bool step_ok = saved_step && *saved_step >= 0;
      if (saved_step && !step_ok) {
        read.problem("\"scheduler.last_step\" is " + std::to_string(*saved_step) + ", not >= 0");
      }
      if (step_ok) last_step = static_cast<long>(*saved_step);
      const bool base_ok = base && *base == scheduler_->base_learning_rate();
      if (base && !base_ok) {
        read.problem("the scheduler's base learning rate is " + number(scheduler_->base_learning_rate()) +
                     ", the checkpoint's " + number(*base) +
                     " (build the scheduler on an optimiser with the run's initial rate, or pass that rate)");
      }
      if (step_ok && base_ok && saved_lr) {
        try {
          const double rate = scheduler_->learning_rate_at(last_step);
          if (rate != *saved_lr) {
            read.problem("the scheduler gives learning rate " + number(rate) + " at step " +
                         std::to_string(last_step) + ", but the checkpoint's optimiser ran at " + number(*saved_lr) +
                         ": is this the schedule the run used?");
          }
        } catch (const std::exception& e) {
          read.problem(std::string("the scheduler cannot move to the saved step: ") + e.what());
        }
      }
    }

    std::vector<std::optional<std::uint64_t>> counts;
    for (const auto& entry : counters_) counts.push_back(read.word("counters." + entry.first));
    std::vector<std::optional<std::uint64_t>> generators;
    for (const auto& entry : rngs_) generators.push_back(read.word("rng." + entry.first));
    const std::optional<std::int64_t> training_step = read.integer("training.step");
    if (training_step && *training_step < 0) {
      read.problem("\"training.step\" is " + std::to_string(*training_step) + ", not >= 0");
    }
    read.finish();
    if (!read.problems.empty()) throw CheckpointError(path, read.problems);

    // Everything is known to fit: the optimiser's state is decoded first (the
    // only step that allocates), then everything is written.
    std::vector<std::vector<std::vector<T>>> decoded(has_state ? states.size() : 0);
    std::vector<std::vector<const T*>> pointers(decoded.size());
    for (std::size_t which = 0; which < decoded.size(); ++which) {
      decoded[which].resize(names.size());
      for (std::size_t i = 0; i < names.size(); ++i) {
        const std::string name = state_name(names[i], states[which]);
        decoded[which][i].resize(file.entry(name).elements());
        file.copy_to(name, decoded[which][i].data(), decoded[which][i].size());
        pointers[which].push_back(decoded[which][i].data());
      }
    }
    for (const StateRef<T>& s : state) {
      const auto count = static_cast<std::size_t>(s.shape.size());
      if (s.real != nullptr) {
        file.copy_to("model." + s.name, s.real, count);
      } else {
        file.copy_to("model." + s.name, s.integer, count);
      }
      if (s.parameter != nullptr) s.parameter->mark_modified();
    }
    // (Every value is known to be there: value_or only quiets the compiler.)
    optimizer_->load_state(static_cast<long>(steps.value_or(0)), pointers);
    optimizer_->set_learning_rate(saved_lr.value_or(0.0));
    if (scheduler_ != nullptr) scheduler_->set_last_step(last_step);
    for (std::size_t i = 0; i < counters_.size(); ++i) counters_[i].second.set(counts[i].value_or(0));
    for (std::size_t i = 0; i < rngs_.size(); ++i) rngs_[i].second->set_state(generators[i].value_or(0));
    return training_step.value_or(0);
  }

 private:
  struct Counter {
    std::function<std::uint64_t()> get;
    std::function<void(std::uint64_t)> set;
  };

  // Checks a checkpoint's entries against what the objects expect, collecting
  // every problem.
  struct Reader {
    explicit Reader(const SafetensorsFile& f) : file(f) {}

    void problem(std::string text) { problems.push_back(std::move(text)); }
    // Records `name` as expected; true when it is there with that dtype and shape.
    bool expect(const std::string& name, Dtype dtype, const std::vector<std::int64_t>& shape) {
      expected.insert(name);
      if (!file.contains(name)) {
        missing.push_back(name);
        return false;
      }
      const TensorEntry& e = file.entry(name);
      bool ok = true;
      if (e.shape != shape) {
        problem("\"" + name + "\" has shape " + detail::shape_string(e.shape) + " in the checkpoint, " +
                detail::shape_string(shape) + " here");
        ok = false;
      }
      if (e.dtype != dtype) {
        if (!(skip_real_dtypes && is_floating(e.dtype) && is_floating(dtype))) {
          problem("\"" + name + "\" is " + dtype_name(e.dtype) + " in the checkpoint; " + dtype_name(dtype) +
                  " expected");
        }
        ok = false;
      }
      return ok;
    }
    void tolerate(const std::string& name) { expected.insert(name); }
    std::optional<std::int64_t> integer(const std::string& name) {
      std::int64_t v = 0;
      if (!expect(name, Dtype::I64, {})) return std::nullopt;
      file.copy_to(name, &v, 1);
      return v;
    }
    std::optional<std::uint64_t> word(const std::string& name) {
      std::uint64_t v = 0;
      if (!expect(name, Dtype::U64, {})) return std::nullopt;
      file.copy_to(name, &v, 1);
      return v;
    }
    std::optional<double> real(const std::string& name) {
      double v = 0;
      if (!expect(name, Dtype::F64, {})) return std::nullopt;
      file.copy_to(name, &v, 1);
      return v;
    }
    // Missing and unexpected names, each as one problem.
    void finish() {
      if (!missing.empty()) problem("missing tensor(s): " + detail::quoted_list(missing));
      std::vector<std::string> unexpected;
      for (const TensorEntry& e : file.entries()) {
        if (expected.count(e.name) == 0) unexpected.push_back(e.name);
      }
      std::sort(unexpected.begin(), unexpected.end());
      if (!unexpected.empty()) {
        problem("unexpected tensor(s): " + detail::quoted_list(unexpected) +
                " (saved with a scheduler, generator or counter not given here, or another model?)");
      }
    }

    const SafetensorsFile& file;
    std::vector<std::string> problems;
    std::vector<std::string> missing;
    std::set<std::string> expected;
    bool skip_real_dtypes = false;
  };

  template <class Entry>
  static bool taken(const std::string& name, const std::vector<std::pair<std::string, Entry>>& list) {
    for (const auto& entry : list) {
      if (entry.first == name) return true;
    }
    return false;
  }
  template <class Entry>
  static void check_name(const char* what, const std::string& name, const std::vector<std::pair<std::string, Entry>>& list) {
    const std::string who = std::string("momnet::TrainingCheckpoint::") + what;
    if (name.empty()) throw std::invalid_argument(who + ": the name must not be empty");
    if (taken(name, list)) {
      throw std::invalid_argument(who + ": the name '" + name + "' is taken already" +
                                  (name.rfind("model", 0) == 0 ? " (the model's step counts are registered by the "
                                                                 "constructor)"
                                                               : ""));
    }
  }

  static std::string state_name(const std::string& parameter, const char* which) {
    return "optimizer.state." + parameter + "." + which;
  }

  static std::string number(double value) { return nlohmann::json(value).dump(); }

  // The model's name of each of the optimiser's parameters.
  std::vector<std::string> parameter_names(const std::string& who) const {
    std::unordered_map<const Parameter<T>*, std::string> by_address;
    for (const auto& [name, p] : named_parameters(*model_)) by_address.emplace(p, name);
    std::vector<std::string> names;
    const auto& parameters = optimizer_->parameters();
    for (std::size_t i = 0; i < parameters.size(); ++i) {
      const auto it = by_address.find(parameters[i]);
      if (it == by_address.end()) {
        throw std::invalid_argument(who + ": the optimizer's parameter " + std::to_string(i) +
                                    (parameters[i]->name().empty() ? "" : " ('" + parameters[i]->name() + "')") +
                                    " is not a parameter of the model; the checkpoint names optimizer state by "
                                    "the model's parameter names");
      }
      names.push_back(it->second);
    }
    return names;
  }

  struct SavedOptimizer {
    bool same_kind = false;
    std::optional<double> learning_rate;  // when usable
  };

  // Compares the saved optimiser's kind and options with this one's.
  SavedOptimizer check_optimizer(Reader& read, const std::string* kind, const std::string* options) const {
    const std::string here = detail::optimizer_kind(*optimizer_);
    SavedOptimizer result;
    if (kind == nullptr) {
      read.problem("no \"momnet.optimizer\" metadata");
      return result;
    }
    if (*kind != here) {
      read.problem("the optimizer is " + *kind + " in the checkpoint, " + here + " here");
      return result;
    }
    result.same_kind = true;
    if (options == nullptr) {
      read.problem("no \"momnet.optimizer_options\" metadata");
      return result;
    }
    nlohmann::ordered_json saved;
    try {
      saved = nlohmann::ordered_json::parse(*options);
    } catch (const nlohmann::json::exception& e) {
      read.problem(std::string("\"momnet.optimizer_options\" is not valid JSON: ") + e.what());
      return result;
    }
    if (!saved.is_object()) {
      read.problem("\"momnet.optimizer_options\" is not a JSON object: " + *options);
      return result;
    }
    const nlohmann::ordered_json current = detail::optimizer_options(*optimizer_);
    for (const auto& item : current.items()) {
      if (item.key() == "lr") continue;
      if (!saved.contains(item.key())) {
        read.problem(here + " option \"" + item.key() + "\" is missing from the checkpoint");
      } else if (saved[item.key()] != item.value()) {
        read.problem(here + " option \"" + item.key() + "\" is " + saved[item.key()].dump() +
                     " in the checkpoint, " + item.value().dump() + " here");
      }
    }
    for (const auto& item : saved.items()) {
      if (!current.contains(item.key())) read.problem(here + " option \"" + item.key() + "\" is unknown here");
    }
    if (!saved.contains("lr") || !saved["lr"].is_number() || !(saved["lr"].get<double>() >= 0.0)) {
      read.problem(here + " option \"lr\" must be a number >= 0 in the checkpoint, got " +
                   (saved.contains("lr") ? saved["lr"].dump() : std::string("nothing")));
      return result;
    }
    result.learning_rate = saved["lr"].get<double>();
    return result;
  }

  Model* model_;
  Optimizer* optimizer_;
  LRScheduler<Optimizer>* scheduler_ = nullptr;
  std::vector<std::pair<std::string, Counter>> counters_;
  std::vector<std::pair<std::string, Rng*>> rngs_;
};

// A checkpoint of `model` and `optimizer` (and `scheduler`): see TrainingCheckpoint.
template <class Model, class Optimizer>
void save_checkpoint(const std::string& path, Model& model, Optimizer& optimizer, std::int64_t step,
                     const std::map<std::string, std::string>& metadata = {}) {
  TrainingCheckpoint<Model, Optimizer>(model, optimizer).save(path, step, metadata);
}
template <class Model, class Optimizer>
void save_checkpoint(const std::string& path, Model& model, Optimizer& optimizer,
                     LRScheduler<Optimizer>& scheduler, std::int64_t step,
                     const std::map<std::string, std::string>& metadata = {}) {
  TrainingCheckpoint<Model, Optimizer>(model, optimizer).scheduler(scheduler).save(path, step, metadata);
}
// Restores what save_checkpoint wrote; returns the training step.
template <class Model, class Optimizer>
std::int64_t load_checkpoint(const std::string& path, Model& model, Optimizer& optimizer) {
  return TrainingCheckpoint<Model, Optimizer>(model, optimizer).load(path);
}
template <class Model, class Optimizer>
std::int64_t load_checkpoint(const std::string& path, Model& model, Optimizer& optimizer,
                             LRScheduler<Optimizer>& scheduler) {
  return TrainingCheckpoint<Model, Optimizer>(model, optimizer).scheduler(scheduler).load(path);
}

}  // namespace momnet
