// Learning-rate schedules with the semantics of torch.optim.lr_scheduler, in
// closed form: the rate at step t depends only on the base rate and t, never
// on the rate at t - 1, so a run resumed at step t (set_last_step) continues
// with exactly the rates of the run that was interrupted. PyTorch's step()
// updates most rates recursively (lr *= gamma); its closed forms (the
// `_get_closed_form_lr` of each scheduler) agree with it to rounding.
//
// A schedule is a value with
//     double learning_rate(double base_lr, long step) const
// for step = 0, 1, 2, ... (PyTorch's last_epoch after the scheduler's
// construction, then after each scheduler.step()). The base rate is not part
// of the schedule, as in PyTorch where it is the optimiser's initial lr, so
// one schedule serves every optimiser. A "step" is whatever the caller counts:
// epochs or iterations.
//
//   StepLR(step_size, gamma = 0.1)          base * gamma^floor(t / step_size)
//   MultiStepLR(milestones, gamma = 0.1)    base * gamma^(milestones <= t)
//   ExponentialLR(gamma)                    base * gamma^t
//   CosineAnnealingLR(T_max, eta_min = 0)   eta_min + (base - eta_min)(1 + cos(pi t / T_max)) / 2
//   LinearLR(start = 1/3, end = 1, total = 5)  base * (start + (end - start) min(t, total) / total)
//   ConstantLR(factor = 1/3, total = 5)     base * (t < total ? factor : 1)
//   SequentialLR(schedules, milestones)     schedule i for milestones[i-1] <= t < milestones[i],
//                                           restarted at its own step 0 at its milestone
//
// Past T_max the cosine rises again (the closed form is periodic), as
// PyTorch's CosineAnnealingLR does; SGDR's restarts are not implemented.
//
// LRScheduler<Optimizer> drives an optimiser (SGD, Adam, AdamW, or any class
// with set_learning_rate(double)): its constructor sets the rate of step 0,
// step() advances by one, and last_step()/set_last_step() save and restore
// its position with a checkpoint. Call it as PyTorch does:
//     for epoch: { for batch: { ...; optimizer.step(); }  scheduler.step(); }
//
// Departures from PyTorch, all errors where PyTorch accepts a meaningless
// value: MultiStepLR needs strictly increasing milestones (PyTorch sorts
// them and applies gamma twice for a repeated one), gamma must be positive
// and finite, and step_size, T_max and total_iters must be at least 1.
#pragma once

#include <cmath>
#include <cstddef>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace momnet {
namespace detail {

inline std::string schedule_number(double value) {
  std::ostringstream text;
  text << value;
  return text.str();
}

[[noreturn]] inline void throw_schedule(const char* name, const std::string& why) {
  throw std::invalid_argument(std::string(name) + ": " + why);
}

inline void check_schedule_step(const char* name, long step) {
  if (step < 0) throw_schedule(name, "step must be >= 0, got " + std::to_string(step));
}

inline void check_at_least_one(const char* name, const char* what, long value) {
  if (value < 1) throw_schedule(name, std::string(what) + " must be >= 1, got " + std::to_string(value));
}

inline void check_gamma(const char* name, double gamma) {
  if (!(gamma > 0.0 && std::isfinite(gamma))) {
    throw_schedule(name, "gamma must be positive and finite, got " + schedule_number(gamma));
  }
}

// A factor in [low, high], or (low, high] when `open_low`.
inline void check_factor(const char* name, const char* what, double value, double low, double high,
                         bool open_low) {
  const bool above = open_low ? value > low : value >= low;
  if (!(above && value <= high)) {
    throw_schedule(name, std::string(what) + " must lie in " + (open_low ? "(" : "[") + schedule_number(low) + ", " +
                             schedule_number(high) + "], got " + schedule_number(value));
  }
}

}  // namespace detail

// Decays the rate by gamma every step_size steps.
class StepLR {
 public:
  explicit StepLR(long step_size, double gamma = 0.1) : step_size_(step_size), gamma_(gamma) {
    detail::check_at_least_one("momnet::StepLR", "step_size", step_size);
    detail::check_gamma("momnet::StepLR", gamma);
  }
  double learning_rate(double base_lr, long step) const {
    detail::check_schedule_step("momnet::StepLR", step);
    return base_lr * std::pow(gamma_, static_cast<double>(step / step_size_));
  }
  long step_size() const noexcept { return step_size_; }
  double gamma() const noexcept { return gamma_; }

 private:
  long step_size_;
  double gamma_;
};

// Decays the rate by gamma at each milestone (the rate of step m already
// includes the decay of milestone m).
class MultiStepLR {
 public:
  explicit MultiStepLR(std::vector<long> milestones, double gamma = 0.1)
      : milestones_(std::move(milestones)), gamma_(gamma) {
    const char* name = "momnet::MultiStepLR";
    detail::check_gamma(name, gamma);
    for (std::size_t i = 0; i < milestones_.size(); ++i) {
      if (milestones_[i] < 0) {
        detail::throw_schedule(name, "milestones must be >= 0, got " + std::to_string(milestones_[i]) +
                                         " at index " + std::to_string(i));
      }
      if (i > 0 && milestones_[i] <= milestones_[i - 1]) {
        detail::throw_schedule(name, "milestones must be strictly increasing, got " +
                                         std::to_string(milestones_[i - 1]) + " then " +
                                         std::to_string(milestones_[i]) + " at index " + std::to_string(i));
      }
    }
  }
  double learning_rate(double base_lr, long step) const {
    detail::check_schedule_step("momnet::MultiStepLR", step);
    long passed = 0;
    while (static_cast<std::size_t>(passed) < milestones_.size() &&
           milestones_[static_cast<std::size_t>(passed)] <= step) {
      ++passed;
    }
    return base_lr * std::pow(gamma_, static_cast<double>(passed));
  }
  const std::vector<long>& milestones() const noexcept { return milestones_; }
  double gamma() const noexcept { return gamma_; }

 private:
  std::vector<long> milestones_;
  double gamma_;
};

// Decays the rate by gamma every step.
class ExponentialLR {
 public:
  explicit ExponentialLR(double gamma) : gamma_(gamma) { detail::check_gamma("momnet::ExponentialLR", gamma); }
  double learning_rate(double base_lr, long step) const {
    detail::check_schedule_step("momnet::ExponentialLR", step);
    return base_lr * std::pow(gamma_, static_cast<double>(step));
  }
  double gamma() const noexcept { return gamma_; }

 private:
  double gamma_;
};

// Half a cosine from the base rate (step 0) down to eta_min (step T_max).
class CosineAnnealingLR {
 public:
  explicit CosineAnnealingLR(long T_max, double eta_min = 0.0) : T_max_(T_max), eta_min_(eta_min) {
    const char* name = "momnet::CosineAnnealingLR";
    detail::check_at_least_one(name, "T_max", T_max);
    if (!(eta_min >= 0.0 && std::isfinite(eta_min))) {
      detail::throw_schedule(name, "eta_min must be >= 0 and finite, got " + detail::schedule_number(eta_min));
    }
  }
  double learning_rate(double base_lr, long step) const {
    detail::check_schedule_step("momnet::CosineAnnealingLR", step);
    const double pi = 3.14159265358979323846;
    const double phase = pi * static_cast<double>(step) / static_cast<double>(T_max_);
    return eta_min_ + (base_lr - eta_min_) * (1.0 + std::cos(phase)) / 2.0;
  }
  long T_max() const noexcept { return T_max_; }
  double eta_min() const noexcept { return eta_min_; }

 private:
  long T_max_;
  double eta_min_;
};

// Moves the factor on the base rate linearly from start_factor (step 0) to
// end_factor (step total_iters and after): a linear warm-up when start < end.
class LinearLR {
 public:
  explicit LinearLR(double start_factor = 1.0 / 3.0, double end_factor = 1.0, long total_iters = 5)
      : start_(start_factor), end_(end_factor), total_(total_iters) {
    const char* name = "momnet::LinearLR";
    detail::check_factor(name, "start_factor", start_factor, 0.0, 1.0, true);
    detail::check_factor(name, "end_factor", end_factor, 0.0, 1.0, false);
    detail::check_at_least_one(name, "total_iters", total_iters);
  }
  double learning_rate(double base_lr, long step) const {
    detail::check_schedule_step("momnet::LinearLR", step);
    const long t = step < total_ ? step : total_;
    return base_lr * (start_ + (end_ - start_) * static_cast<double>(t) / static_cast<double>(total_));
  }
  double start_factor() const noexcept { return start_; }
  double end_factor() const noexcept { return end_; }
  long total_iters() const noexcept { return total_; }

 private:
  double start_;
  double end_;
  long total_;
};

// The base rate times `factor` for the first total_iters steps, then the base rate.
class ConstantLR {
 public:
  explicit ConstantLR(double factor = 1.0 / 3.0, long total_iters = 5) : factor_(factor), total_(total_iters) {
    const char* name = "momnet::ConstantLR";
    detail::check_factor(name, "factor", factor, 0.0, 1.0, false);
    detail::check_at_least_one(name, "total_iters", total_iters);
  }
  double learning_rate(double base_lr, long step) const {
    detail::check_schedule_step("momnet::ConstantLR", step);
    return step < total_ ? base_lr * factor_ : base_lr;
  }
  double factor() const noexcept { return factor_; }
  long total_iters() const noexcept { return total_; }

 private:
  double factor_;
  long total_;
};

namespace detail {
template <class S, class = void>
struct is_schedule : std::false_type {};
template <class S>
struct is_schedule<S, std::void_t<decltype(std::declval<const S&>().learning_rate(0.0, 0L))>> : std::true_type {};
}  // namespace detail

// Any schedule, held by value: what SequentialLR and LRScheduler store, so
// that their types do not depend on the schedules they hold.
class Schedule {
 public:
  template <class S, class = std::enable_if_t<!std::is_same_v<std::decay_t<S>, Schedule> &&
                                              detail::is_schedule<std::decay_t<S>>::value>>
  Schedule(S schedule)  // NOLINT(google-explicit-constructor): any schedule is a Schedule
      : rate_([s = std::move(schedule)](double base_lr, long step) { return s.learning_rate(base_lr, step); }) {}

  double learning_rate(double base_lr, long step) const { return rate_(base_lr, step); }

 private:
  std::function<double(double, long)> rate_;
};

// Schedule i from milestones[i - 1] (0 for the first) until milestones[i],
// each restarted at its own step 0 at its milestone: LinearLR warm-up for 5
// steps, then cosine annealing over 95,
//     SequentialLR({LinearLR(0.1, 1.0, 5), CosineAnnealingLR(95)}, {5})
// gives base * 0.1 at step 0, base at step 5, and eta_min at step 100.
class SequentialLR {
 public:
  SequentialLR(std::vector<Schedule> schedules, std::vector<long> milestones)
      : schedules_(std::move(schedules)), milestones_(std::move(milestones)) {
    const char* name = "momnet::SequentialLR";
    if (schedules_.empty()) detail::throw_schedule(name, "needs at least one schedule");
    if (milestones_.size() + 1 != schedules_.size()) {
      detail::throw_schedule(name, "needs one milestone fewer than schedules, got " +
                                       std::to_string(schedules_.size()) + " schedules and " +
                                       std::to_string(milestones_.size()) + " milestones");
    }
    for (std::size_t i = 0; i < milestones_.size(); ++i) {
      const long previous = i == 0 ? 0 : milestones_[i - 1];
      if (milestones_[i] < 0 || (i > 0 && milestones_[i] <= previous)) {
        detail::throw_schedule(name, "milestones must be >= 0 and strictly increasing, got " +
                                         std::to_string(milestones_[i]) + " at index " + std::to_string(i) +
                                         (i > 0 ? " after " + std::to_string(previous) : std::string()));
      }
    }
  }
  double learning_rate(double base_lr, long step) const {
    detail::check_schedule_step("momnet::SequentialLR", step);
    std::size_t i = 0;
    while (i < milestones_.size() && milestones_[i] <= step) ++i;
    const long start = i == 0 ? 0 : milestones_[i - 1];
    return schedules_[i].learning_rate(base_lr, step - start);
  }
  const std::vector<long>& milestones() const noexcept { return milestones_; }

 private:
  std::vector<Schedule> schedules_;
  std::vector<long> milestones_;
};

// Sets an optimiser's learning rate from a schedule. The base rate is the
// optimiser's rate when the scheduler is made (PyTorch's initial_lr), unless
// given: pass it when the optimiser's rate was already scheduled (an
// optimiser restored from a checkpoint), then set_last_step(saved step).
template <class Optimizer>
class LRScheduler {
 public:
  LRScheduler(Optimizer& optimizer, Schedule schedule)
      : LRScheduler(optimizer, std::move(schedule), optimizer.learning_rate()) {}
  LRScheduler(Optimizer& optimizer, Schedule schedule, double base_lr)
      : optimizer_(&optimizer), schedule_(std::move(schedule)), base_lr_(base_lr) {
    if (!(base_lr >= 0.0 && std::isfinite(base_lr))) {
      detail::throw_schedule("momnet::LRScheduler", "base learning rate must be >= 0 and finite, got " +
                                                        detail::schedule_number(base_lr));
    }
    set_last_step(0);
  }

  // Advances one step (one epoch or one iteration, as the schedule counts).
  void step() { set_last_step(last_step_ + 1); }

  long last_step() const noexcept { return last_step_; }
  // Moves to `step` and sets the optimiser's rate for it (resuming from a checkpoint).
  void set_last_step(long step) {
    detail::check_schedule_step("momnet::LRScheduler::set_last_step", step);
    const double rate = schedule_.learning_rate(base_lr_, step);
    optimizer_->set_learning_rate(rate);
    last_step_ = step;
    last_rate_ = rate;
  }

  // The rate set for last_step() (PyTorch's get_last_lr()).
  double learning_rate() const noexcept { return last_rate_; }
  double base_learning_rate() const noexcept { return base_lr_; }
  // The rate the schedule gives at any step, without moving.
  double learning_rate_at(long step) const { return schedule_.learning_rate(base_lr_, step); }

 private:
  Optimizer* optimizer_;
  Schedule schedule_;
  double base_lr_;
  long last_step_ = 0;
  double last_rate_ = 0.0;
};

}  // namespace momnet
