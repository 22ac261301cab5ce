// Mini-batches of an ImageDataset, as PyTorch's DataLoader(dataset,
// batch_size, shuffle, drop_last) with a DistributedSampler-like shard:
//
//   DataLoaderOptions options;
//   options.batch_size = 128;
//   options.shuffle = true;
//   options.seed = 1;
//   DataLoader<float> loader(train, options, Augmentation<float>(RandomCrop(28, 4), RandomHorizontalFlip()));
//   for (std::uint64_t epoch = 0; epoch < epochs; ++epoch) {
//     loader.set_epoch(epoch);
//     for (const Batch<float>& batch : loader) { ... batch.images, batch.labels ... }
//   }
//
// The order of an epoch is a function of (seed, epoch) alone: a permutation
// drawn with momnet's Rng seeded from a CounterRng key of both, so the same
// epoch repeats exactly and each epoch differs (like DistributedSampler, the
// epoch is set by the caller with set_epoch; nothing advances it behind the
// caller's back). Augmentation draws are keyed by (seed, epoch, dataset
// index), so they do not depend on the order either.
//
// Sharding: with num_replicas = R and rank = r the loader sees positions r,
// r + R, r + 2R, ... of the epoch's order (the same permutation on every
// rank, as DistributedSampler). The R shards are disjoint and cover the data
// set; unlike DistributedSampler nothing is repeated to pad them, so their
// sizes differ by at most one and a distributed trainer that needs equal step
// counts must use drop_last or balance them itself.
//
// The loader keeps a pointer to the data set, which must outlive it (and may
// be changed between epochs, say normalised, but not resized). The batch it
// hands out is its own storage, reused from batch to batch: copy what must
// outlive the next step.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "momnet/data/augment.hpp"
#include "momnet/data/image_dataset.hpp"
#include "momnet/random.hpp"
#include "momnet/shape.hpp"
#include "momnet/tensor.hpp"

namespace momnet {

struct DataLoaderOptions {
  Eigen::Index batch_size = 1;
  bool shuffle = false;
  // Drop the last batch of an epoch when it is smaller than batch_size.
  bool drop_last = false;
  // Keys the shuffling and the augmentation draws.
  std::uint64_t seed = 0;
  // This loader's shard: positions rank, rank + num_replicas, ... of the order.
  Eigen::Index num_replicas = 1;
  Eigen::Index rank = 0;
};

template <class T>
struct Batch {
  Tensor<T> images;                   // [B, C, H, W]
  std::vector<int> labels;            // B labels
  std::vector<std::int64_t> indices;  // the B images' indices in the data set
  Eigen::Index size() const noexcept { return static_cast<Eigen::Index>(labels.size()); }
};

namespace detail {
inline constexpr std::uint64_t shuffle_stream = 0x73687566666C6500ULL;  // "shuffle"

// An integer uniform in [0, n), n >= 1, without modulo bias (rejection).
inline std::uint64_t uniform_below(Rng& rng, std::uint64_t n) noexcept {
  const std::uint64_t threshold = (0 - n) % n;  // 2^64 mod n: the draws below it are the biased ones
  for (;;) {
    const std::uint64_t r = rng.next();
    if (r >= threshold) return r % n;
  }
}
}  // namespace detail

// The order of [0, n) for (seed, epoch): the identity without shuffling, else
// a permutation drawn by Fisher-Yates.
inline std::vector<std::int64_t> epoch_order(std::int64_t n, bool shuffle, std::uint64_t seed, std::uint64_t epoch) {
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), std::int64_t{0});
  if (!shuffle) return order;
  Rng rng(CounterRng(seed, epoch, 0, detail::shuffle_stream).key());
  for (std::size_t i = order.size(); i > 1; --i) {
    std::swap(order[i - 1], order[detail::uniform_below(rng, i)]);
  }
  return order;
}

template <class T>
class DataLoader {
 public:
  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = Batch<T>;
    using difference_type = std::ptrdiff_t;
    using pointer = const Batch<T>*;
    using reference = const Batch<T>&;

    iterator() = default;
    reference operator*() const { return loader_->batch(index_); }
    pointer operator->() const { return &**this; }
    iterator& operator++() {
      ++index_;
      return *this;
    }
    iterator operator++(int) {
      iterator old = *this;
      ++index_;
      return old;
    }
    friend bool operator==(const iterator& a, const iterator& b) noexcept { return a.index_ == b.index_; }
    friend bool operator!=(const iterator& a, const iterator& b) noexcept { return !(a == b); }

   private:
    friend class DataLoader;
    iterator(DataLoader* loader, Eigen::Index index) : loader_(loader), index_(index) {}
    DataLoader* loader_ = nullptr;
    Eigen::Index index_ = 0;
  };

  DataLoader(const ImageDataset<T>& dataset, DataLoaderOptions options = {}, Augmentation<T> augmentation = {})
      : dataset_(&dataset), options_(options), augmentation_(std::move(augmentation)) {
    const char* function = "momnet::DataLoader";
    if (options_.batch_size <= 0) {
      throw std::invalid_argument(std::string(function) + ": batch_size must be positive, got " +
                                  std::to_string(options_.batch_size));
    }
    if (options_.num_replicas <= 0) {
      throw std::invalid_argument(std::string(function) + ": num_replicas must be positive, got " +
                                  std::to_string(options_.num_replicas));
    }
    if (options_.rank < 0 || options_.rank >= options_.num_replicas) {
      throw std::invalid_argument(std::string(function) + ": rank " + std::to_string(options_.rank) +
                                  " is outside [0, num_replicas = " + std::to_string(options_.num_replicas) + ")");
    }
    source_shape_ = dataset.image_shape();
    image_shape_ = augmentation_.output_shape(source_shape_);  // a crop that does not fit throws here
    set_epoch(0);
  }
  // The loader would keep a pointer to a temporary.
  DataLoader(const ImageDataset<T>&&, DataLoaderOptions = {}, Augmentation<T> = {}) = delete;

  // Selects the epoch whose order (and augmentation draws) the next iteration
  // follows; call it before each epoch when shuffling.
  void set_epoch(std::uint64_t epoch) {
    if (dataset_->size() != dataset_size_ && dataset_size_ >= 0) {
      throw std::logic_error("momnet::DataLoader: the data set changed size from " + std::to_string(dataset_size_) +
                             " to " + std::to_string(dataset_->size()) + " images under the loader");
    }
    dataset_size_ = dataset_->size();
    epoch_ = epoch;
    const std::vector<std::int64_t> all = epoch_order(dataset_size_, options_.shuffle, options_.seed, epoch);
    order_.clear();
    for (std::size_t p = static_cast<std::size_t>(options_.rank); p < all.size();
         p += static_cast<std::size_t>(options_.num_replicas)) {
      order_.push_back(all[p]);
    }
    filled_ = -1;
  }
  std::uint64_t epoch() const noexcept { return epoch_; }
  const DataLoaderOptions& options() const noexcept { return options_; }
  const Augmentation<T>& augmentation() const noexcept { return augmentation_; }

  // This shard's indices for the epoch, in order (before drop_last).
  const std::vector<std::int64_t>& order() const noexcept { return order_; }
  // The number of batches in an epoch (len(DataLoader) in PyTorch).
  Eigen::Index batches_per_epoch() const noexcept {
    const auto n = static_cast<Eigen::Index>(order_.size());
    return options_.drop_last ? n / options_.batch_size : (n + options_.batch_size - 1) / options_.batch_size;
  }
  // The images an epoch yields: the shard's, less a dropped last batch.
  Eigen::Index samples_per_epoch() const noexcept {
    return std::min(static_cast<Eigen::Index>(order_.size()), batches_per_epoch() * options_.batch_size);
  }
  // An image's shape in a batch, [C, H, W] (after augmentation).
  const Shape& image_shape() const noexcept { return image_shape_; }

  // Batch b of the current epoch, filled into the loader's batch storage.
  const Batch<T>& batch(Eigen::Index b) {
    if (b < 0 || b >= batches_per_epoch()) {
      throw std::out_of_range("momnet::DataLoader::batch: batch " + std::to_string(b) + " of an epoch of " +
                              std::to_string(batches_per_epoch()));
    }
    if (b == filled_) return batch_;
    const Eigen::Index first = b * options_.batch_size;
    const Eigen::Index count = std::min(options_.batch_size, static_cast<Eigen::Index>(order_.size()) - first);
    const Shape shape{count, image_shape_[0], image_shape_[1], image_shape_[2]};
    if (batch_.images.shape() != shape) batch_.images = Tensor<T>(shape);
    batch_.labels.resize(static_cast<std::size_t>(count));
    batch_.indices.resize(static_cast<std::size_t>(count));
    if (dataset_->image_shape() != source_shape_) {
      throw std::logic_error("momnet::DataLoader: the data set's images changed shape from " +
                             source_shape_.to_string() + " to " + dataset_->image_shape().to_string() +
                             " under the loader");
    }
    const Eigen::Index out_size = image_shape_.size();
    for (Eigen::Index k = 0; k < count; ++k) {
      const std::int64_t index = order_[static_cast<std::size_t>(first + k)];
      const T* source = dataset_->image(index);
      T* target = batch_.images.data() + k * out_size;
      if (augmentation_.empty()) {
        std::copy(source, source + out_size, target);
      } else {
        augmentation_.apply(source, source_shape_, target,
                            AugmentKey{options_.seed, epoch_, static_cast<std::uint64_t>(index)});
      }
      batch_.labels[static_cast<std::size_t>(k)] = dataset_->label(index);
      batch_.indices[static_cast<std::size_t>(k)] = index;
    }
    filled_ = b;
    return batch_;
  }

  iterator begin() { return iterator(this, 0); }
  iterator end() { return iterator(this, batches_per_epoch()); }

 private:
  const ImageDataset<T>* dataset_;
  DataLoaderOptions options_;
  Augmentation<T> augmentation_;
  Shape source_shape_;
  Shape image_shape_;
  Eigen::Index dataset_size_ = -1;
  std::uint64_t epoch_ = 0;
  std::vector<std::int64_t> order_;
  Batch<T> batch_;
  Eigen::Index filled_ = -1;
};

// The iterator over one epoch's batches (DataLoader<T>::iterator).
template <class T>
using BatchIterator = typename DataLoader<T>::iterator;

}  // namespace momnet
