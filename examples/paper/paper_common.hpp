// What the paper-reproduction programs share: command-line options with
// --help, CSV output (parent directories created), a progress line, a summary
// table, and a failed-claim exit. Nothing here is part of the library.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace paper {

// --name=value, --name value and bare --flag, declared with a default and a
// line of help; parse() prints --help and exits, and refuses unknown options.
class Options {
 public:
  Options(std::string program, std::string summary) : program_(std::move(program)), summary_(std::move(summary)) {}

  void flag(const std::string& name, const std::string& help) { declare(name, "", help, true); }
  void option(const std::string& name, const std::string& fallback, const std::string& help) {
    declare(name, fallback, help, false);
  }

  void parse(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        print_help();
        std::exit(0);
      }
      if (arg.rfind("--", 0) != 0) usage_error("unexpected argument '" + arg + "'");
      arg = arg.substr(2);
      std::string value;
      bool has_value = false;
      const auto eq = arg.find('=');
      if (eq != std::string::npos) {
        value = arg.substr(eq + 1);
        arg = arg.substr(0, eq);
        has_value = true;
      }
      auto it = entries_.find(arg);
      if (it == entries_.end()) usage_error("unknown option --" + arg);
      Entry& entry = it->second;
      if (entry.is_flag) {
        if (has_value) usage_error("--" + arg + " takes no value");
        entry.value = "1";
      } else {
        if (!has_value) {
          if (i + 1 >= argc) usage_error("--" + arg + " needs a value");
          value = argv[++i];
        }
        entry.value = value;
      }
      entry.given = true;
    }
  }

  bool has(const std::string& name) const { return entry(name).value == "1"; }
  bool given(const std::string& name) const { return entry(name).given; }
  std::string str(const std::string& name) const { return entry(name).value; }
  long integer(const std::string& name) const {
    const std::string v = str(name);
    try {
      std::size_t used = 0;
      const long out = std::stol(v, &used);
      if (used == v.size()) return out;
    } catch (const std::exception&) {
    }
    usage_error("--" + name + " expects an integer, got '" + v + "'");
  }
  double real(const std::string& name) const {
    const std::string v = str(name);
    try {
      std::size_t used = 0;
      const double out = std::stod(v, &used);
      if (used == v.size()) return out;
    } catch (const std::exception&) {
    }
    usage_error("--" + name + " expects a number, got '" + v + "'");
  }
  // A comma-separated list of integers.
  std::vector<long> integers(const std::string& name) const {
    std::vector<long> out;
    std::string v = str(name);
    std::size_t start = 0;
    while (start <= v.size()) {
      const std::size_t end = v.find(',', start);
      const std::string part = v.substr(start, end == std::string::npos ? std::string::npos : end - start);
      try {
        std::size_t used = 0;
        out.push_back(std::stol(part, &used));
        if (used != part.size()) throw std::invalid_argument(part);
      } catch (const std::exception&) {
        usage_error("--" + name + " expects comma-separated integers, got '" + v + "'");
      }
      if (end == std::string::npos) break;
      start = end + 1;
    }
    return out;
  }
  std::vector<double> reals(const std::string& name) const {
    std::vector<double> out;
    std::string v = str(name);
    std::size_t start = 0;
    while (start <= v.size()) {
      const std::size_t end = v.find(',', start);
      const std::string part = v.substr(start, end == std::string::npos ? std::string::npos : end - start);
      try {
        std::size_t used = 0;
        out.push_back(std::stod(part, &used));
        if (used != part.size()) throw std::invalid_argument(part);
      } catch (const std::exception&) {
        usage_error("--" + name + " expects comma-separated numbers, got '" + v + "'");
      }
      if (end == std::string::npos) break;
      start = end + 1;
    }
    return out;
  }

  [[noreturn]] void usage_error(const std::string& message) const {
    std::fprintf(stderr, "%s: %s (see --help)\n", program_.c_str(), message.c_str());
    std::exit(2);
  }

 private:
  struct Entry {
    std::string value, help;
    bool is_flag = false, given = false;
  };
  void declare(const std::string& name, const std::string& fallback, const std::string& help, bool is_flag) {
    entries_[name] = Entry{fallback, help, is_flag, false};
    order_.push_back(name);
  }
  const Entry& entry(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) throw std::logic_error("paper::Options: undeclared option " + name);
    return it->second;
  }
  void print_help() const {
    std::printf("usage: %s [options]\n\n%s\n\noptions:\n", program_.c_str(), summary_.c_str());
    for (const std::string& name : order_) {
      const Entry& e = entries_.at(name);
      std::string left = "  --" + name + (e.is_flag ? "" : "=VALUE");
      if (left.size() < 26) left.resize(26, ' ');
      std::printf("%s %s%s\n", left.c_str(), e.help.c_str(),
                  e.is_flag || e.value.empty() ? "" : (" (default " + e.value + ")").c_str());
    }
    std::printf("  --help                   this text\n");
  }

  std::string program_, summary_;
  std::map<std::string, Entry> entries_;
  std::vector<std::string> order_;
};

// Opens `path` for writing, creating its directory; throws naming the path.
inline std::ofstream open_csv(const std::string& path) {
  const std::filesystem::path p(path);
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
  std::ofstream out(path);
  if (!out) throw std::runtime_error("cannot write " + path);
  out.precision(9);
  return out;
}

// The claim the program checks did not hold: say why and exit with 1.
[[noreturn]] inline void claim_failed(const char* program, const std::string& why) {
  std::fprintf(stderr, "%s: CLAIM NOT REPRODUCED: %s\n", program, why.c_str());
  std::exit(1);
}

}  // namespace paper
