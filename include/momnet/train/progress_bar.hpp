// A progress bar for training loops:
//
//   epoch 3/10 [=====>    ] 412/938  44% 123.4 it/s ETA 0:04 loss 0.412
//
// On a terminal it redraws one line in place ('\r'), at most every
// `redraw_interval` seconds (0.1 by default) and always on reaching the total.
// Anywhere else (a log file, a pipe, a CI console) '\r' would pile up, so it
// prints plain lines, without the bar: one each time progress crosses another
// `plain_fraction` of the total (10% by default) or `plain_interval` seconds
// (30 by default) have passed since the last line, before the total is
// reached. finish() (or the destructor) ends with a final line giving the
// elapsed time instead of the ETA, in both modes, e.g.
// `epoch 3/10 938/938 100% 123.4 it/s took 0:07 loss 0.398`.
//
// The rate is the average since construction (done / elapsed), so the ETA is
// (total - done) / rate; both read `options.clock`, a function returning
// seconds (a steady clock by default), which tests replace by a fake one.
// A total of 0 means unknown: no bar, percentage or ETA.
//
// Terminal or not: `options.mode`, or, when automatic, whether the stream is
// std::cout or std::cerr/std::clog and that file descriptor is a terminal.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <ostream>
#include <stdexcept>
#include <string>

#if defined(_WIN32)
#include <io.h>
#else
#include <unistd.h>
#endif

namespace momnet {

struct ProgressBarOptions {
  enum class Mode { automatic, terminal, plain };
  Mode mode = Mode::automatic;
  int width = 30;                // characters inside the brackets
  double redraw_interval = 0.1;  // seconds between terminal redraws
  double plain_interval = 30.0;  // seconds after which a plain line is due anyway
  double plain_fraction = 0.1;   // a plain line each time progress crosses a multiple of this
  std::function<double()> clock;  // seconds; empty: std::chrono::steady_clock
};

class ProgressBar {
 public:
  using Options = ProgressBarOptions;

  ProgressBar(long total, std::string label, std::ostream& out = std::cerr, Options options = Options())
      : total_(total), label_(std::move(label)), out_(out), options_(std::move(options)) {
    const char* name = "momnet::ProgressBar";
    if (total < 0) throw std::invalid_argument(std::string(name) + ": total must be >= 0, got " + std::to_string(total));
    if (options_.width < 1) {
      throw std::invalid_argument(std::string(name) + ": width must be >= 1, got " + std::to_string(options_.width));
    }
    if (!(options_.redraw_interval >= 0.0) || !(options_.plain_interval >= 0.0)) {
      throw std::invalid_argument(std::string(name) + ": intervals must be >= 0 seconds");
    }
    if (!(options_.plain_fraction > 0.0 && options_.plain_fraction <= 1.0)) {
      throw std::invalid_argument(std::string(name) + ": plain_fraction must lie in (0, 1], got " +
                                  std::to_string(options_.plain_fraction));
    }
    if (!options_.clock) {
      options_.clock = [] {
        return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
      };
    }
    terminal_ = options_.mode == Options::Mode::automatic ? is_terminal(out_)
                                                          : options_.mode == Options::Mode::terminal;
    start_ = last_output_ = options_.clock();
  }

  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // Ends the line if finish() was not called (an exception left the loop).
  ~ProgressBar() {
    try {
      finish();
    } catch (...) {  // a destructor must not throw; the output is best effort
    }
  }

  // Records `increment` more items done; a non-empty `suffix` (the loss, say)
  // replaces the one shown (set_suffix("") clears it). Draws when due.
  void update(long increment = 1, const std::string& suffix = "") {
    if (increment < 0) {
      throw std::invalid_argument("momnet::ProgressBar::update: increment must be >= 0, got " +
                                  std::to_string(increment));
    }
    if (finished_) throw std::logic_error("momnet::ProgressBar::update: the bar is finished");
    done_ += increment;
    if (!suffix.empty()) suffix_ = suffix;
    const double now = options_.clock();
    if (terminal_) {
      if (now - last_output_ >= options_.redraw_interval || reached_total() || !drawn_) draw(now);
    } else {
      // The line at the total is finish()'s, which gives the elapsed time.
      const long section = plain_section();
      if (!reached_total() && (section > last_section_ || now - last_output_ >= options_.plain_interval)) {
        last_section_ = section;
        out_ << line(now, false) << '\n' << std::flush;
        last_output_ = now;
        drawn_ = true;
      }
    }
  }

  void set_suffix(std::string suffix) { suffix_ = std::move(suffix); }

  // Writes the final line (once; later calls do nothing).
  void finish(const std::string& suffix = "") {
    if (finished_) return;
    finished_ = true;
    if (!suffix.empty()) suffix_ = suffix;
    const std::string text = line(options_.clock(), true);
    if (terminal_) {
      out_ << '\r' << text << padding(text) << '\n' << std::flush;
    } else {
      out_ << text << '\n' << std::flush;
    }
  }

  long done() const noexcept { return done_; }
  long total() const noexcept { return total_; }
  bool terminal() const noexcept { return terminal_; }
  // Items per second since construction (0 before any time has passed).
  double rate() const { return rate_at(options_.clock()); }

  // The text of the line at time `now` (seconds on options.clock), without
  // '\r' or '\n'; `final` gives the elapsed time in place of the ETA.
  std::string line(double now, bool final) const {
    std::string text = label_;
    auto append = [&](const std::string& part) {
      if (!text.empty() && !part.empty()) text += ' ';
      text += part;
    };
    const double rate = rate_at(now);
    if (total_ > 0) {
      if (terminal_) append(bar());
      char numbers[96];
      const double percent = std::floor(100.0 * static_cast<double>(done_) / static_cast<double>(total_));
      std::snprintf(numbers, sizeof numbers, "%ld/%ld %3.0f%%", done_, total_, percent);
      append(numbers);
    } else {
      append(std::to_string(done_));
    }
    append(rate_text(rate));
    if (final) {
      append("took " + clock_text(now - start_));
    } else if (total_ > 0) {
      const long left = total_ > done_ ? total_ - done_ : 0;
      append("ETA " + (rate > 0.0 ? clock_text(static_cast<double>(left) / rate) : std::string("?")));
    }
    append(suffix_);
    return text;
  }

 private:
  static bool is_terminal(const std::ostream& out) {
    int fd = -1;
    if (&out == &std::cout) fd = 1;
    if (&out == &std::cerr || &out == &std::clog) fd = 2;
    if (fd < 0) return false;
#if defined(_WIN32)
    return _isatty(fd) != 0;
#else
    return isatty(fd) != 0;
#endif
  }

  bool reached_total() const noexcept { return total_ > 0 && done_ >= total_; }

  // How many multiples of plain_fraction of the total are done.
  long plain_section() const {
    if (total_ == 0) return 0;
    const double fraction = static_cast<double>(done_) / static_cast<double>(total_);
    // The small slack keeps 3/10 in section 3 although 0.3 / 0.1 < 3 in binary.
    return static_cast<long>(std::floor(fraction / options_.plain_fraction + 1e-9));
  }

  double rate_at(double now) const {
    const double elapsed = now - start_;
    return elapsed > 0.0 ? static_cast<double>(done_) / elapsed : 0.0;
  }

  std::string bar() const {
    const long width = options_.width;
    const long filled = done_ >= total_ ? width : done_ * width / total_;
    std::string text = "[" + std::string(static_cast<std::size_t>(filled), '=');
    if (filled < width) text += '>' + std::string(static_cast<std::size_t>(width - filled - 1), ' ');
    return text + "]";
  }

  // "123.4 it/s", or "12.5 s/it" below one item every ten seconds, or "? it/s"
  // before any item.
  static std::string rate_text(double rate) {
    char text[64];
    if (rate <= 0.0) return "? it/s";
    if (rate < 0.1) {
      std::snprintf(text, sizeof text, "%.1f s/it", 1.0 / rate);
    } else {
      std::snprintf(text, sizeof text, "%.1f it/s", rate);
    }
    return text;
  }

  // m:ss, or h:mm:ss from an hour; rounded to the nearest second.
  static std::string clock_text(double seconds) {
    if (!(seconds < 1e9)) return "?";
    const long s = std::lround(seconds < 0.0 ? 0.0 : seconds);
    char text[48];
    if (s >= 3600) {
      std::snprintf(text, sizeof text, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    } else {
      std::snprintf(text, sizeof text, "%ld:%02ld", s / 60, s % 60);
    }
    return text;
  }

  // Spaces over whatever a longer previous line left on the terminal.
  std::string padding(const std::string& text) {
    const std::size_t previous = drawn_length_;
    drawn_length_ = text.size();
    return std::string(previous > text.size() ? previous - text.size() : 0, ' ');
  }

  void draw(double now) {
    const std::string text = line(now, false);
    out_ << '\r' << text << padding(text) << std::flush;
    last_output_ = now;
    drawn_ = true;
  }

  long total_;
  std::string label_;
  std::ostream& out_;
  Options options_;
  bool terminal_ = false;
  double start_ = 0.0;
  double last_output_ = 0.0;
  long done_ = 0;
  long last_section_ = 0;
  std::string suffix_;
  bool drawn_ = false;
  bool finished_ = false;
  std::size_t drawn_length_ = 0;
};

}  // namespace momnet
