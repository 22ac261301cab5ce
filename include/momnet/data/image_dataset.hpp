// A labelled image data set in memory: images [N, C, H, W] and one integer
// label per image (the std::vector<int> that cross_entropy takes), loaded from
// IDX files, and Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017) from Debian's
// dataset-fashion-mnist package.
//
// Pixels stored as ubyte are scaled to [0, 1] as torchvision's ToTensor does
// (x / 255 in the scalar type); normalise(mean, std) then maps x to
// (x - mean[c]) / std[c] per channel, as torchvision's Normalize.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "momnet/data/idx.hpp"
#include "momnet/shape.hpp"
#include "momnet/tensor.hpp"

namespace momnet {

template <class T>
class ImageDataset {
 public:
  using Scalar = T;

  ImageDataset() : images_(Shape{0, 1, 0, 0}) {}
  // `images` [N, C, H, W] and N labels.
  ImageDataset(Tensor<T> images, std::vector<int> labels) : images_(std::move(images)), labels_(std::move(labels)) {
    if (images_.shape().rank() != 4) {
      throw std::invalid_argument("momnet::ImageDataset: images must be [N, C, H, W], got shape " +
                                  images_.shape().to_string());
    }
    if (static_cast<Eigen::Index>(labels_.size()) != images_.shape()[0]) {
      throw std::invalid_argument("momnet::ImageDataset: " + std::to_string(images_.shape()[0]) + " images but " +
                                  std::to_string(labels_.size()) + " labels");
    }
  }

  Eigen::Index size() const noexcept { return static_cast<Eigen::Index>(labels_.size()); }
  bool empty() const noexcept { return labels_.empty(); }
  // [C, H, W]
  Shape image_shape() const { return Shape{images_.shape()[1], images_.shape()[2], images_.shape()[3]}; }
  Eigen::Index image_size() const { return image_shape().size(); }

  const Tensor<T>& images() const noexcept { return images_; }
  const std::vector<int>& labels() const noexcept { return labels_; }
  // Image i's C x H x W values.
  const T* image(Eigen::Index i) const { return images_.data() + check_index(i) * image_size(); }
  int label(Eigen::Index i) const { return labels_[static_cast<std::size_t>(check_index(i))]; }

  // x -> (x - mean[c]) / std[c] in the scalar type, for channel c; a list of
  // one value serves every channel.
  void normalise(const std::vector<double>& mean, const std::vector<double>& stddev) {
    const char* function = "momnet::ImageDataset::normalise";
    const Eigen::Index channels = images_.shape()[1];
    const auto check_count = [&](const std::vector<double>& v, const char* what) {
      if (v.size() != 1 && static_cast<Eigen::Index>(v.size()) != channels) {
        throw std::invalid_argument(std::string(function) + ": " + what + " has " + std::to_string(v.size()) +
                                    " values for " + std::to_string(channels) + " channel(s)");
      }
    };
    check_count(mean, "mean");
    check_count(stddev, "std");
    for (std::size_t c = 0; c < mean.size(); ++c) {
      if (!std::isfinite(mean[c])) {
        throw std::invalid_argument(std::string(function) + ": mean[" + std::to_string(c) + "] = " +
                                    std::to_string(mean[c]) + " is not finite");
      }
    }
    for (std::size_t c = 0; c < stddev.size(); ++c) {
      if (!(stddev[c] > 0.0) || !std::isfinite(stddev[c])) {
        throw std::invalid_argument(std::string(function) + ": std[" + std::to_string(c) + "] = " +
                                    std::to_string(stddev[c]) + " must be positive and finite");
      }
    }
    const Eigen::Index plane = images_.shape()[2] * images_.shape()[3];
    T* x = images_.data();
    for (Eigen::Index n = 0; n < size(); ++n) {
      for (Eigen::Index c = 0; c < channels; ++c) {
        const auto k = static_cast<std::size_t>(mean.size() == 1 ? 0 : c);
        const auto j = static_cast<std::size_t>(stddev.size() == 1 ? 0 : c);
        const T m = static_cast<T>(mean[k]), s = static_cast<T>(stddev[j]);
        for (Eigen::Index i = 0; i < plane; ++i, ++x) *x = (*x - m) / s;
      }
    }
  }
  void normalise(double mean, double stddev) { normalise(std::vector<double>{mean}, std::vector<double>{stddev}); }

  // Per-channel mean and standard deviation over every image and pixel (the
  // population deviation, in double): the values to pass to normalise, taken
  // from the training split.
  std::vector<double> channel_mean() const { return channel_moments().first; }
  std::vector<double> channel_std() const { return channel_moments().second; }

  // Images first, ..., first + count - 1, copied.
  ImageDataset take(Eigen::Index first, Eigen::Index count) const {
    if (first < 0 || count < 0 || first > size() || count > size() - first) {
      throw std::invalid_argument("momnet::ImageDataset::take: images [" + std::to_string(first) + ", " +
                                  std::to_string(first) + " + " + std::to_string(count) +
                                  ") are outside a data set of " + std::to_string(size()));
    }
    const Shape s = images_.shape();
    Tensor<T> images(Shape{count, s[1], s[2], s[3]});
    std::copy(image_data(first), image_data(first) + count * image_size(), images.data());
    return ImageDataset(std::move(images), std::vector<int>(labels_.begin() + first, labels_.begin() + first + count));
  }
  // The first `count` images (all of them when there are fewer).
  ImageDataset subset(Eigen::Index count) const {
    if (count < 0) {
      throw std::invalid_argument("momnet::ImageDataset::subset: count must be >= 0, got " + std::to_string(count));
    }
    return take(0, std::min(count, size()));
  }

 private:
  Eigen::Index check_index(Eigen::Index i) const {
    if (i < 0 || i >= size()) {
      throw std::out_of_range("momnet::ImageDataset: image " + std::to_string(i) + " of a data set of " +
                              std::to_string(size()));
    }
    return i;
  }
  const T* image_data(Eigen::Index i) const { return images_.data() + i * image_size(); }

  std::pair<std::vector<double>, std::vector<double>> channel_moments() const {
    const Eigen::Index channels = images_.shape()[1], plane = images_.shape()[2] * images_.shape()[3];
    std::vector<double> mean(static_cast<std::size_t>(channels), 0.0), var(mean);
    const double count = static_cast<double>(size() * plane);
    if (count == 0) return {mean, var};
    // Two passes: the one-pass formula E[x^2] - E[x]^2 cancels badly.
    for (int pass = 0; pass < 2; ++pass) {
      const T* x = images_.data();
      for (Eigen::Index n = 0; n < size(); ++n) {
        for (Eigen::Index c = 0; c < channels; ++c) {
          const auto k = static_cast<std::size_t>(c);
          double sum = 0.0;
          for (Eigen::Index i = 0; i < plane; ++i, ++x) {
            const double d = static_cast<double>(*x) - (pass == 0 ? 0.0 : mean[k]);
            sum += pass == 0 ? d : d * d;
          }
          (pass == 0 ? mean : var)[k] += sum;
        }
      }
      for (auto& m : pass == 0 ? mean : var) m /= count;
    }
    for (auto& v : var) v = std::sqrt(v);
    return {mean, var};
  }

  Tensor<T> images_;
  std::vector<int> labels_;
};

// The data set in the IDX files `images_path` ([N, H, W] for one channel, or
// [N, C, H, W]) and `labels_path` ([N], integers). ubyte images are scaled to
// [0, 1]; float32 and float64 images are taken as they are. Throws
// std::runtime_error naming the file for any other layout or type, and both
// files and counts when they disagree.
template <class T>
ImageDataset<T> load_idx_dataset(const std::string& images_path, const std::string& labels_path) {
  const char* function = "momnet::load_idx_dataset";
  const auto fail = [&](const std::string& path, const std::string& what) {
    throw std::runtime_error(std::string(function) + ": '" + path + "': " + what);
  };
  IdxArray images = read_idx(images_path);
  if (images.dims.size() != 3 && images.dims.size() != 4) {
    fail(images_path, "images must be [N, H, W] or [N, C, H, W], the file holds " +
                          detail::idx_dims_string(images.dims));
  }
  if (images.type != IdxType::ubyte && images.type != IdxType::float32 && images.type != IdxType::float64) {
    fail(images_path, std::string("images of type ") + to_string(images.type) +
                          ": momnet reads ubyte images (scaled to [0, 1]) and float32 or float64 images");
  }
  const IdxArray labels = read_idx(labels_path);
  if (labels.dims.size() != 1) {
    fail(labels_path, "labels must be [N], the file holds " + detail::idx_dims_string(labels.dims));
  }
  if (labels.type == IdxType::float32 || labels.type == IdxType::float64) {
    fail(labels_path, std::string("labels of type ") + to_string(labels.type) + ": labels must be integers");
  }
  if (images.dims[0] != labels.dims[0]) {
    throw std::runtime_error(std::string(function) + ": '" + images_path + "' holds " +
                             std::to_string(images.dims[0]) + " images but '" + labels_path + "' holds " +
                             std::to_string(labels.dims[0]) + " labels");
  }
  const std::vector<std::int64_t>& d = images.dims;
  const Shape shape = d.size() == 3 ? Shape{d[0], 1, d[1], d[2]} : Shape{d[0], d[1], d[2], d[3]};
  Tensor<T> tensor(shape);
  T* out = tensor.data();
  if (images.type == IdxType::ubyte) {
    // In T, as ToTensor divides in float32: the same values as torchvision.
    for (std::size_t i = 0; i < images.data.size(); ++i) out[i] = static_cast<T>(images.data[i]) / T(255);
  } else {
    const std::vector<T> values = images.values<T>();
    std::copy(values.begin(), values.end(), out);
  }
  images.data = {};  // the bytes are not needed any more: release before the labels grow
  return ImageDataset<T>(std::move(tensor), labels.values<int>());
}

enum class Split { train, test };

inline const char* to_string(Split split) noexcept { return split == Split::train ? "train" : "test"; }

// Debian's dataset-fashion-mnist package installs the four files here.
inline constexpr const char* default_fashion_mnist_directory = "/usr/share/datasets/fashion-mnist";

// The directory load_fashion_mnist reads by default: $MOMNET_FASHION_MNIST
// when set and not empty, else Debian's.
inline std::string fashion_mnist_directory() {
  const char* env = std::getenv("MOMNET_FASHION_MNIST");
  return env != nullptr && *env != '\0' ? std::string(env) : std::string(default_fashion_mnist_directory);
}

// The ten classes, in label order (torchvision's FashionMNIST.classes).
inline std::vector<std::string> fashion_mnist_classes() {
  return {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};
}

namespace detail {
// `directory/name.gz` when it exists and zlib can read it, else `directory/name`
// when that exists, else the .gz (whose reading reports a missing zlib), or
// "" when neither exists.
inline std::string pick_idx_file(const std::string& directory, const std::string& name) {
  namespace fs = std::filesystem;
  std::error_code error;
  const fs::path gz = fs::path(directory) / (name + ".gz");
  const fs::path raw = fs::path(directory) / name;
  const bool have_gz = fs::exists(gz, error), have_raw = fs::exists(raw, error);
#ifdef MOMNET_HAVE_ZLIB
  if (have_gz) return gz.string();
#endif
  if (have_raw) return raw.string();
  if (have_gz) return gz.string();
  return {};
}
}  // namespace detail

// Fashion-MNIST's `split` (60000 train or 10000 test images, 1 x 28 x 28, in
// [0, 1]) from `directory`: train-images-idx3-ubyte and
// train-labels-idx1-ubyte, or t10k-... for the test split, each gzipped (.gz,
// preferred) or not. Labels must lie in 0..9.
template <class T>
ImageDataset<T> load_fashion_mnist(const std::string& directory, Split split) {
  const char* function = "momnet::load_fashion_mnist";
  const std::string prefix = split == Split::train ? "train" : "t10k";
  const std::string images_name = prefix + "-images-idx3-ubyte", labels_name = prefix + "-labels-idx1-ubyte";
  const std::string images_path = detail::pick_idx_file(directory, images_name);
  const std::string labels_path = detail::pick_idx_file(directory, labels_name);
  if (images_path.empty() || labels_path.empty()) {
    std::string missing;
    for (const auto& [name, found] : {std::pair{images_name, images_path}, std::pair{labels_name, labels_path}}) {
      if (!found.empty()) continue;
      const std::string path = (std::filesystem::path(directory) / name).string();
      missing += (missing.empty() ? "'" : " and '") + path + ".gz' or '" + path + "'";
    }
    throw std::runtime_error(std::string(function) + ": the Fashion-MNIST " + to_string(split) +
                             " split is not in '" + directory + "': looked for " + missing +
                             ". Install Debian's package (apt-get install dataset-fashion-mnist, which puts the "
                             "files in " + default_fashion_mnist_directory +
                             "), or point MOMNET_FASHION_MNIST (or the directory argument) at a directory holding "
                             "the four files of https://github.com/zalandoresearch/fashion-mnist");
  }
  ImageDataset<T> data = load_idx_dataset<T>(images_path, labels_path);
  const std::vector<int>& labels = data.labels();
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] > 9) {
      throw std::runtime_error(std::string(function) + ": '" + labels_path + "': label " + std::to_string(i) +
                               " is " + std::to_string(labels[i]) + ", outside Fashion-MNIST's classes 0 to 9");
    }
  }
  return data;
}

// From fashion_mnist_directory(): $MOMNET_FASHION_MNIST or Debian's directory.
template <class T>
ImageDataset<T> load_fashion_mnist(Split split) {
  return load_fashion_mnist<T>(fashion_mnist_directory(), split);
}

}  // namespace momnet
