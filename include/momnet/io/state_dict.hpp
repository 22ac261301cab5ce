// Model checkpoints in safetensors, keyed by PyTorch's state_dict names, so
// weights move between momnet and PyTorch both ways:
//
//   momnet::save(model, "model.safetensors");
//   momnet::LoadReport report = momnet::load(model, "model.safetensors");
//
// save() writes every parameter and buffer under its name from visit_state
// (`0.weight`, `1.blocks.3.fc1.bias`): parameters and real buffers as the
// model's dtype (F32 for float, F64 for double), integer buffers such as
// BatchNorm's num_batches_tracked as I64, as torch.save(model.state_dict())
// stores them; the metadata gets "format": "pt" unless you set it, as
// Hugging Face's loaders expect.
//
// load() is PyTorch's load_state_dict: it checks every name and shape first
// and reports every missing key, unexpected key and mismatch at once. With
// strict (the default) any of them throws StateDictError before anything
// changes; otherwise the matching entries load and the report lists the
// rest. Values convert from any float dtype of the file (F64 or F16 into a
// float model, say); integer buffers take integer dtypes only. A loaded
// parameter is marked modified, so a tape recorded before the load refuses
// its backward pass.
//
// save_state() and load_state() do the same over an explicit list of named
// values (optimiser moments, counters), for checkpoints of more than a model.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "momnet/io/safetensors.hpp"
#include "momnet/module.hpp"
#include "momnet/parameter.hpp"
#include "momnet/shape.hpp"
#include "momnet/tensor.hpp"

namespace momnet {

// One named value of saved state: real (`real`) or integer (`integer`)
// values of `shape`; `parameter` is set when they belong to a parameter.
template <class T>
struct StateRef {
  static_assert(std::is_floating_point_v<T>, "momnet::StateRef: T is a model's real type");
  std::string name;
  Shape shape;
  T* real = nullptr;
  std::int64_t* integer = nullptr;
  Parameter<T>* parameter = nullptr;

  static StateRef of(std::string name, Parameter<T>& p) {
    return StateRef{std::move(name), p.shape(), p.value_data(), nullptr, &p};
  }
  static StateRef of(std::string name, Tensor<T>& t) { return StateRef{std::move(name), t.shape(), t.data(), nullptr, nullptr}; }
  static StateRef of(std::string name, Tensor<std::int64_t>& t) {
    return StateRef{std::move(name), t.shape(), nullptr, t.data(), nullptr};
  }
  static StateRef of(std::string name, T* values, const Shape& shape) {
    return StateRef{std::move(name), shape, values, nullptr, nullptr};
  }
};

// The parameters, then the buffers, of `model`, named as its state_dict.
template <class Model>
std::vector<StateRef<typename Model::Scalar>> state_of(Model& model) {
  using T = typename Model::Scalar;
  std::vector<StateRef<T>> state;
  for (auto& [name, p] : named_parameters(model)) state.push_back(StateRef<T>::of(name, *p));
  for (auto& [name, b] : named_buffers(model)) {
    state.push_back(b.real != nullptr ? StateRef<T>::of(name, *b.real) : StateRef<T>::of(name, *b.integer));
  }
  return state;
}

struct LoadOptions {
  bool strict = true;
};

// What a load found besides the entries it loaded.
struct LoadReport {
  struct Mismatch {
    std::string key;
    std::string message;  // "size mismatch for 0.weight: copying a param with shape [3, 4] ..."
  };
  std::vector<std::string> missing_keys;     // in the model, not in the file
  std::vector<std::string> unexpected_keys;  // in the file, not in the model
  std::vector<Mismatch> mismatches;          // in both, but of another shape or an unusable dtype
  std::vector<std::string> loaded_keys;
  std::map<std::string, std::string> metadata;  // the file's

  bool ok() const noexcept { return missing_keys.empty() && unexpected_keys.empty() && mismatches.empty(); }

  // The problems in PyTorch's words, for `path`.
  std::string message(const std::string& path) const {
    std::string text = "Error(s) in loading state_dict from '" + path + "':";
    const auto quoted = [](const std::vector<std::string>& keys) {
      std::string s;
      for (const std::string& k : keys) s += (s.empty() ? "\"" : ", \"") + k + "\"";
      return s;
    };
    if (!missing_keys.empty()) text += "\n\tMissing key(s) in state_dict: " + quoted(missing_keys) + ".";
    if (!unexpected_keys.empty()) text += "\n\tUnexpected key(s) in state_dict: " + quoted(unexpected_keys) + ".";
    for (const Mismatch& m : mismatches) text += "\n\t" + m.message;
    return text;
  }
};

// A strict load that found problems; nothing was changed.
class StateDictError : public std::runtime_error {
 public:
  StateDictError(const std::string& what, LoadReport report)
      : std::runtime_error(what), report_(std::move(report)) {}
  const LoadReport& report() const noexcept { return report_; }

 private:
  LoadReport report_;
};

// Writes `state` to `path` (write_safetensors: atomically, by a rename).
template <class T>
void save_state(const std::vector<StateRef<T>>& state, const std::string& path,
                const std::map<std::string, std::string>& metadata = {}) {
  std::vector<NamedTensor> tensors;
  tensors.reserve(state.size());
  for (const StateRef<T>& s : state) {
    if (s.real != nullptr) {
      tensors.emplace_back(s.name, static_cast<const T*>(s.real), s.shape);
    } else {
      tensors.emplace_back(s.name, static_cast<const std::int64_t*>(s.integer), s.shape);
    }
  }
  write_safetensors(path, tensors, metadata);
}

// Loads `path` into `state` (see the top of this file). Throws FormatError for
// a malformed file and, when strict, StateDictError listing every problem.
template <class T>
LoadReport load_state(const std::vector<StateRef<T>>& state, const std::string& path, LoadOptions options = {}) {
  const SafetensorsFile file(path);
  LoadReport report;
  report.metadata = file.metadata();

  // Everything that can fail is checked (and integer values converted) before
  // anything is written.
  std::vector<const StateRef<T>*> to_load;
  std::vector<std::vector<std::int64_t>> integers;  // converted integer values, in to_load's order
  std::set<std::string> known;
  for (const StateRef<T>& s : state) {
    known.insert(s.name);
    if (!file.contains(s.name)) {
      report.missing_keys.push_back(s.name);
      continue;
    }
    const TensorEntry& e = file.entry(s.name);
    const std::vector<Eigen::Index> dims = s.shape.dims();
    if (std::vector<std::int64_t>(dims.begin(), dims.end()) != e.shape) {
      report.mismatches.push_back({s.name, "size mismatch for " + s.name + ": copying a param with shape " +
                                               detail::shape_string(e.shape) +
                                               " from checkpoint, the shape in current model is " +
                                               s.shape.to_string() + "."});
      continue;
    }
    if (s.integer != nullptr) {
      try {
        integers.push_back(file.int64s(s.name));
      } catch (const std::exception& error) {  // a float dtype, or a value beyond int64
        report.mismatches.push_back({s.name, "dtype mismatch for " + s.name + ": cannot copy " +
                                                 dtype_name(e.dtype) + " from checkpoint into an int64 buffer (" +
                                                 error.what() + ")."});
        continue;
      }
    }
    to_load.push_back(&s);
  }
  for (const TensorEntry& e : file.entries()) {
    if (known.count(e.name) == 0) report.unexpected_keys.push_back(e.name);
  }
  if (options.strict && !report.ok()) {
    const std::string message = report.message(path);  // before the report moves into the exception
    throw StateDictError(message, std::move(report));
  }

  std::size_t next_integer = 0;
  for (const StateRef<T>* s : to_load) {
    if (s->integer != nullptr) {
      const std::vector<std::int64_t>& values = integers[next_integer++];
      std::copy(values.begin(), values.end(), s->integer);
    } else {
      file.copy_to(s->name, s->real, static_cast<std::size_t>(s->shape.size()));
    }
    if (s->parameter != nullptr) s->parameter->mark_modified();
    report.loaded_keys.push_back(s->name);
  }
  return report;
}

// Writes `model`'s parameters and buffers to `path` under their state_dict names.
template <class Model>
void save(Model& model, const std::string& path, std::map<std::string, std::string> metadata = {}) {
  metadata.emplace("format", "pt");  // kept if the caller set one
  save_state(state_of(model), path, metadata);
}

// Loads `path` into `model`'s parameters and buffers (see the top of this file).
template <class Model>
LoadReport load(Model& model, const std::string& path, LoadOptions options = {}) {
  return load_state(state_of(model), path, options);
}

}  // namespace momnet
