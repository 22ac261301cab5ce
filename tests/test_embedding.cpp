// Embedding and the positional encodings: the lookup's values and shapes for
// indices of rank 0 to 3, the scatter-add reverse rule against finite
// differences (repeated indices) and by hand, padding_idx as PyTorch's
// (negative too, no gradient, zero at initialisation), out-of-range indices
// refused before anything is recorded, nn.Embedding's name and N(0, 1)
// initialisation; the sinusoidal table of "Attention is all you need" by hand
// (odd d_model too), the learned table's name and initialisation, gradients of
// x and of the learned table, and errors with their numbers.
#include <catch2/catch.hpp>

#include <momnet/gradient_check.hpp>
#include <momnet/layers/embedding.hpp>
#include <momnet/layers/positional_encoding.hpp>
#include <momnet/module.hpp>
#include <momnet/ops/embedding.hpp>
#include <momnet/ops/reduction.hpp>

#include "support.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

using namespace momnet;
using namespace momnet_test;
using Index = Eigen::Index;
using Vars = std::vector<Var<double>>;

namespace {

Tensor<std::int64_t> indices_of(const Shape& shape, const std::vector<std::int64_t>& values) {
  Tensor<std::int64_t> t(shape);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = values[static_cast<std::size_t>(i)];
  return t;
}

template <class T>
Tensor<T> converted(const Tensor<double>& t) {
  Tensor<T> out(t.shape());
  for (Index i = 0; i < t.size(); ++i) out.data()[i] = static_cast<T>(t.data()[i]);
  return out;
}

// A Tensor<double> holding a parameter's values (check_gradients' inputs are tensors).
template <class T>
std::vector<double> values_of(const Parameter<T>& p) {
  return std::vector<double>(p.value_data(), p.value_data() + p.size());
}

}  // namespace

// ---- embedding -----------------------------------------------------------------------

TEMPLATE_TEST_CASE("embedding: out[i..., :] = weight[indices[i...], :] for indices of rank 0 to 3", "[embedding]",
                   float, double) {
  using T = TestType;
  const Tensor<T> table = converted<T>(uniform(Shape{5, 3}, 1));
  const std::vector<Shape> shapes = {Shape{}, Shape{4}, Shape{2, 3}, Shape{2, 1, 3}};
  for (const Shape& where : shapes) {
    INFO("indices " << where.to_string());
    std::vector<std::int64_t> values;
    for (Index i = 0; i < where.size(); ++i) values.push_back((3 * i + 1) % 5);
    Tape<T> tape;
    const Var<T> y = embedding(indices_of(where, values), tape.constant(table));
    std::vector<Index> dims = where.dims();
    dims.push_back(3);
    REQUIRE(y.shape() == Shape(dims));
    for (Index i = 0; i < where.size(); ++i) {
      for (Index j = 0; j < 3; ++j) CHECK(y.data()[i * 3 + j] == table.data()[values[std::size_t(i)] * 3 + j]);
    }
  }
  // No index at all: an empty output.
  Tape<T> tape;
  CHECK(embedding(Tensor<std::int64_t>(Shape{2, 0}), tape.constant(table)).shape() == Shape{2, 0, 3});
}

TEST_CASE("embedding: the weight's gradient sums the rows of repeated indices (finite differences)",
          "[embedding][grad]") {
  const std::vector<Tensor<std::int64_t>> cases = {
      indices_of(Shape{}, {2}), indices_of(Shape{6}, {1, 3, 1, 0, 1, 3}),
      indices_of(Shape{2, 3}, {4, 4, 0, 2, 4, 1}), indices_of(Shape{2, 2, 2}, {0, 0, 0, 3, 3, 2, 0, 1})};
  for (const Tensor<std::int64_t>& idx : cases) {
    INFO("indices " << idx.shape().to_string());
    const GradientCheckResult result = check_gradients(
        [&](Tape<double>&, const Vars& v) { return embedding(idx, v[0]); }, {uniform(Shape{5, 3}, 2)});
    INFO(result.worst << " (error " << result.max_error << ")");
    CHECK(result.passed);
  }
}

TEST_CASE("embedding: scatter-add by hand; padding_idx, negative too, gets no gradient", "[embedding][grad]") {
  const Tensor<double> table = uniform(Shape{4, 2}, 3);
  const Tensor<std::int64_t> idx = indices_of(Shape{2, 3}, {1, 3, 1, 2, 3, 1});
  // g = 1 everywhere, added to a weight gradient that already holds 10: row 1
  // is read three times, row 3 twice, row 2 once, row 0 never.
  const auto gradient = [&](std::optional<std::int64_t> padding) {
    Parameter<double> weight(Shape{4, 2}, "weight");
    weight.array() = table.array();
    weight.grad_array().setConstant(10.0);
    Tape<double> tape;
    const Var<double> y = embedding(idx, tape.param(weight), padding);
    // The padding row is still read in the forward pass, as PyTorch's.
    CHECK(y.data()[2] == table.data()[6]);
    tape.backward(sum(y));
    return std::vector<double>(weight.grad_data(), weight.grad_data() + 8);
  };
  CHECK(gradient(std::nullopt) == std::vector<double>{10, 10, 13, 13, 11, 11, 12, 12});
  CHECK(gradient(3) == std::vector<double>{10, 10, 13, 13, 11, 11, 10, 10});
  CHECK(gradient(-1) == std::vector<double>{10, 10, 13, 13, 11, 11, 10, 10});  // -1: the last row, 3
  CHECK(gradient(-4) == std::vector<double>{10, 10, 13, 13, 11, 11, 12, 12});  // row 0, never read
  CHECK(gradient(1) == std::vector<double>{10, 10, 10, 10, 11, 11, 12, 12});
}

TEST_CASE("embedding: with padding_idx, the other rows' gradients pass the finite-difference check",
          "[embedding][grad]") {
  // The padding row is read but gets no gradient, so finite differences
  // disagree there by design: compare the other rows only, through a table
  // whose padding row is a constant.
  const Tensor<std::int64_t> idx = indices_of(Shape{2, 4}, {0, 2, 2, 1, 3, 2, 0, 0});
  const Tensor<double> padding_row = uniform(Shape{1, 3}, 4);
  const GradientCheckResult result = check_gradients(
      [&](Tape<double>& tape, const Vars& v) {
        // rows 0, 1 from v[0]; row 2 the constant padding row; row 3 from v[1].
        double* table = tape.allocate(12);
        std::copy(v[0].data(), v[0].data() + 6, table);
        std::copy(padding_row.data(), padding_row.data() + 3, table + 6);
        std::copy(v[1].data(), v[1].data() + 3, table + 9);
        const Var<double> a = v[0], b = v[1];
        const Var<double> w = tape.record_op({a, b}, Shape{4, 3}, table, [](Gradients<double>& g) {
          if (double* ga = g.input(0)) {
            for (int k = 0; k < 6; ++k) ga[k] += g.output(0)[k];
          }
          if (double* gb = g.input(1)) {
            for (int k = 0; k < 3; ++k) gb[k] += g.output(0)[9 + k];
          }
          // The padding row's gradient must be 0: a nonzero one is dropped
          // here but fails the check below.
        });
        return embedding(idx, w, std::optional<std::int64_t>(-2));
      },
      {uniform(Shape{2, 3}, 5), uniform(Shape{1, 3}, 6)});
  INFO(result.worst);
  CHECK(result.passed);
  // And the padding row itself receives exactly nothing.
  Tape<double> tape;
  const Var<double> w = tape.variable(uniform(Shape{4, 3}, 7));
  tape.backward(sum(embedding(idx, w, std::optional<std::int64_t>(2))));
  CHECK(w.grad().row(2).isZero());
  CHECK(w.grad()(0, 0) == 3.0);
}

TEST_CASE("embedding: the reverse rule gives the same bits on every call", "[embedding]") {
  const Tensor<std::int64_t> idx = indices_of(Shape{3, 4}, {0, 1, 0, 0, 2, 0, 1, 0, 0, 2, 2, 0});
  const Tensor<float> table = converted<float>(uniform(Shape{3, 5}, 8));
  const Tensor<float> direction = converted<float>(uniform(Shape{3, 4, 5}, 9));
  std::vector<std::vector<float>> grads;
  for (int run = 0; run < 2; ++run) {
    Tape<float> tape;
    const Var<float> w = tape.variable(table);
    tape.backward(sum(mul(embedding(idx, w), tape.constant(direction))));
    grads.emplace_back(w.grad().data(), w.grad().data() + w.size());
  }
  CHECK(std::memcmp(grads[0].data(), grads[1].data(), sizeof(float) * grads[0].size()) == 0);
}

TEST_CASE("embedding and Embedding refuse bad indices before recording anything", "[embedding][errors]") {
  Tape<double> tape;
  const Var<double> w = tape.variable(uniform(Shape{5, 2}, 10));
  const std::size_t nodes = tape.size();
  REQUIRE_THROWS_EXACT(embedding(indices_of(Shape{2, 3}, {0, 1, 2, 3, 5, 0}), w), std::out_of_range,
                       "momnet::embedding: index 5 at position [1, 1] is out of range for num_embeddings 5 "
                       "(valid: 0 to 4)");
  REQUIRE_THROWS_EXACT(embedding(indices_of(Shape{3}, {0, -1, 9}), w), std::out_of_range,
                       "momnet::embedding: index -1 at position [1] is out of range for num_embeddings 5");
  REQUIRE_THROWS_EXACT(embedding(indices_of(Shape{}, {7}), w), std::out_of_range, "index 7 at position []");
  CHECK(tape.size() == nodes);

  Rng rng(11);
  Embedding<double> layer(5, 2, rng);
  REQUIRE_THROWS_EXACT(layer.forward(tape, indices_of(Shape{1, 2}, {4, -5})), std::out_of_range,
                       "momnet::Embedding: index -5 at position [0, 1] is out of range for num_embeddings 5");
  REQUIRE_THROWS_EXACT(layer.forward(tape, Tensor<std::int64_t>(Shape{1, 1, 1, 1})), std::invalid_argument,
                       "momnet::Embedding: indices of rank 0 to 3 expected (the output adds an axis), got "
                       "[1, 1, 1, 1]");
  CHECK(tape.size() == nodes);  // not even the weight's node
}

TEST_CASE("embedding and Embedding refuse bad arguments with clear errors", "[embedding][errors]") {
  Tape<double> tape;
  const Tensor<std::int64_t> idx = indices_of(Shape{2}, {0, 1});
  REQUIRE_THROWS_EXACT(embedding(idx, tape.constant(Tensor<double>(Shape{6}))), std::invalid_argument,
                       "momnet::embedding: the weight must be [num_embeddings, embedding_dim], got [6]");
  REQUIRE_THROWS_EXACT(embedding(idx, tape.constant(Tensor<double>(Shape{2, 3, 1}))), std::invalid_argument,
                       "got [2, 3, 1]");
  REQUIRE_THROWS_EXACT(embedding(Tensor<std::int64_t>(Shape{1, 1, 1, 1}), tape.constant(Tensor<double>(Shape{2, 3}))),
                       std::invalid_argument,
                       "momnet::embedding: indices of rank 0 to 3 expected (the output adds an axis), got "
                       "[1, 1, 1, 1]");
  const Var<double> w = tape.constant(Tensor<double>(Shape{4, 3}));
  REQUIRE_THROWS_EXACT(embedding(idx, w, std::optional<std::int64_t>(4)), std::invalid_argument,
                       "momnet::embedding: padding_idx 4 must lie in [-4, 4) for num_embeddings 4");
  REQUIRE_THROWS_EXACT(embedding(idx, w, std::optional<std::int64_t>(-5)), std::invalid_argument,
                       "momnet::embedding: padding_idx -5 must lie in [-4, 4)");
  REQUIRE_THROWS_EXACT(embedding(idx, Var<double>()), std::invalid_argument, "momnet::embedding: empty Var");

  Rng rng(12);
  REQUIRE_THROWS_EXACT(Embedding<double>(0, 3, rng), std::invalid_argument,
                       "momnet::Embedding: num_embeddings and embedding_dim must be positive, got 0 and 3");
  REQUIRE_THROWS_EXACT(Embedding<double>(3, -1, rng), std::invalid_argument, "got 3 and -1");
  EmbeddingOptions options;
  options.padding_idx = 3;
  REQUIRE_THROWS_EXACT(Embedding<double>(3, 2, rng, options), std::invalid_argument,
                       "momnet::Embedding: padding_idx 3 must lie in [-3, 3) for num_embeddings 3");
}

TEST_CASE("Embedding: nn.Embedding's name, N(0, 1) initialisation and padding row", "[embedding][layer]") {
  Rng rng(13);
  Embedding<double> layer(200, 10, rng);
  const auto named = named_parameters(layer);
  REQUIRE(named.size() == 1);
  CHECK(named[0].first == "weight");
  CHECK(layer.weight().shape() == Shape{200, 10});
  CHECK(layer.num_embeddings() == 200);
  CHECK(layer.embedding_dim() == 10);
  CHECK_FALSE(layer.padding_idx().has_value());
  // 2000 draws of N(0, 1): the mean within 4 standard errors, the variance near 1.
  const double mean = layer.weight().array().mean();
  const double variance = (layer.weight().array() - mean).square().mean();
  CHECK(std::abs(mean) < 4.0 / std::sqrt(2000.0));
  CHECK(std::abs(variance - 1.0) < 0.15);
  // The draws are the Rng's normals, row by row.
  Rng again(13);
  for (Index i = 0; i < 20; ++i) CHECK(layer.weight().value_data()[i] == again.normal());

  // padding_idx -1 is stored as the last row, zero at initialisation.
  EmbeddingOptions options;
  options.padding_idx = -1;
  Rng rng2(14);
  Embedding<float> padded(6, 4, rng2, options);
  REQUIRE(padded.padding_idx().has_value());
  CHECK(*padded.padding_idx() == 5);
  CHECK(padded.weight().value().row(5).isZero());
  CHECK(!padded.weight().value().row(4).isZero());

  // Through the layer: the padding row gets no gradient, the others do.
  Tape<float> tape;
  const Var<float> y = padded.forward(tape, indices_of(Shape{2, 2}, {5, 0, 5, 5}));
  CHECK(y.shape() == Shape{2, 2, 4});
  tape.backward(sum(y));
  CHECK(padded.weight().grad().row(5).isZero());
  CHECK(padded.weight().grad()(0, 0) == 1.0f);
}

TEST_CASE("Embedding: the layer's weight gradient passes the finite-difference check", "[embedding][grad]") {
  Rng rng(15);
  Embedding<double> layer(4, 3, rng);
  const Tensor<std::int64_t> idx = indices_of(Shape{2, 3}, {3, 0, 3, 3, 1, 0});
  const GradientCheckResult result = check_gradients(
      [&](Tape<double>& tape, const Vars& v) { return mul(layer.forward(tape, idx), v[0]); },
      {uniform(Shape{2, 3, 3}, 16)}, {&layer.weight()});
  INFO(result.worst);
  CHECK(result.passed);
  CHECK(result.checked == 18 + 12);
}

// ---- positional encodings ----------------------------------------------------------------

TEST_CASE("SinusoidalPositionalEncoding: the table of 'Attention is all you need', by hand, odd d too",
          "[positional]") {
  // d = 4: columns sin(pos), cos(pos), sin(pos / 100), cos(pos / 100).
  SinusoidalPositionalEncoding<double> even(6, 4);
  const Tensor<double>& pe = even.table();
  REQUIRE(pe.shape() == Shape{6, 4});
  for (Index pos = 0; pos < 6; ++pos) {
    const double p = static_cast<double>(pos);
    CHECK(pe.data()[pos * 4 + 0] == Approx(std::sin(p)).margin(1e-15));
    CHECK(pe.data()[pos * 4 + 1] == Approx(std::cos(p)).margin(1e-15));
    CHECK(pe.data()[pos * 4 + 2] == Approx(std::sin(p / 100)).margin(1e-15));
    CHECK(pe.data()[pos * 4 + 3] == Approx(std::cos(p / 100)).margin(1e-15));
  }
  // d = 5: 10000^(2i/5) for 2i = 0, 2, 4; the last column is a sine alone.
  SinusoidalPositionalEncoding<float> odd(3, 5);
  const Tensor<float>& q = odd.table();
  const double w2 = std::pow(10000.0, 2.0 / 5.0), w4 = std::pow(10000.0, 4.0 / 5.0);
  const std::vector<double> row2 = {std::sin(2.0), std::cos(2.0), std::sin(2 / w2), std::cos(2 / w2), std::sin(2 / w4)};
  for (Index j = 0; j < 5; ++j) CHECK(q.data()[2 * 5 + j] == static_cast<float>(row2[std::size_t(j)]));
  for (Index j = 0; j < 5; ++j) CHECK(q.data()[j] == (j % 2 == 0 ? 0.0f : 1.0f));  // position 0

  // No state: nothing to save or train.
  CHECK(named_parameters(even).empty());
  CHECK(named_buffers(even).empty());
}

TEMPLATE_TEST_CASE("Positional encodings add the first T rows to every sequence, [B, T, D] and [T, D]",
                   "[positional]", float, double) {
  using T = TestType;
  SinusoidalPositionalEncoding<T> fixed(7, 4);
  Rng rng(20);
  LearnedPositionalEncoding<T> learned(7, 4, rng);
  const Tensor<T> x3 = converted<T>(uniform(Shape{2, 5, 4}, 21));
  const Tensor<T> x2 = converted<T>(uniform(Shape{5, 4}, 22));
  Tape<T> tape;
  const T* tables[2] = {fixed.table().data(), learned.weight().value_data()};
  for (int which = 0; which < 2; ++which) {
    const Var<T> y3 = which == 0 ? fixed.forward(tape, tape.constant(x3)) : learned.forward(tape, tape.constant(x3));
    const Var<T> y2 = which == 0 ? fixed.forward(tape, tape.constant(x2)) : learned.forward(tape, tape.constant(x2));
    REQUIRE(y3.shape() == Shape{2, 5, 4});
    REQUIRE(y2.shape() == Shape{5, 4});
    for (Index b = 0; b < 2; ++b) {
      for (Index k = 0; k < 20; ++k) CHECK(y3.data()[b * 20 + k] == x3.data()[b * 20 + k] + tables[which][k]);
    }
    for (Index k = 0; k < 20; ++k) CHECK(y2.data()[k] == x2.data()[k] + tables[which][k]);
  }
}

TEST_CASE("Positional encodings: gradients of x and of the learned table pass the finite-difference check",
          "[positional][grad]") {
  SinusoidalPositionalEncoding<double> fixed(6, 3);
  Rng rng(30);
  LearnedPositionalEncoding<double> learned(6, 3, rng);
  for (const Shape& shape : {Shape{2, 4, 3}, Shape{4, 3}}) {
    INFO("input " << shape.to_string());
    // Squared, so that the gradients depend on the values.
    const GradientCheckResult a = check_gradients(
        [&](Tape<double>& tape, const Vars& v) { return square(fixed.forward(tape, v[0])); }, {uniform(shape, 31)});
    INFO(a.worst);
    CHECK(a.passed);
    const GradientCheckResult b = check_gradients(
        [&](Tape<double>& tape, const Vars& v) { return square(learned.forward(tape, v[0])); }, {uniform(shape, 32)},
        {&learned.weight()});
    INFO(b.worst);
    CHECK(b.passed);
    CHECK(b.checked == static_cast<std::size_t>(shape.size() + 18));
  }
  // Rows past T receive nothing; the rows used sum the gradient over the batch.
  Tape<double> tape;
  learned.weight().zero_grad();
  tape.backward(sum(learned.forward(tape, tape.variable(uniform(Shape{3, 2, 3}, 33)))));
  CHECK((learned.weight().grad().topRows(2).array() == 3.0).all());
  CHECK(learned.weight().grad().bottomRows(4).isZero());
}

TEST_CASE("LearnedPositionalEncoding: the name `weight`, N(0, 1) as nn.Embedding over the positions",
          "[positional][layer]") {
  Rng a(40), b(40);
  LearnedPositionalEncoding<float> learned(16, 8, a);
  Embedding<float> table(16, 8, b);
  const auto named = named_parameters(learned);
  REQUIRE(named.size() == 1);
  CHECK(named[0].first == "weight");
  CHECK(learned.weight().shape() == Shape{16, 8});
  CHECK(values_of(learned.weight()) == values_of(table.weight()));
  CHECK(learned.max_len() == 16);
  CHECK(learned.d_model() == 8);
}

TEST_CASE("Positional encodings refuse bad shapes with the numbers", "[positional][errors]") {
  SinusoidalPositionalEncoding<double> fixed(4, 6);
  Rng rng(50);
  LearnedPositionalEncoding<double> learned(4, 6, rng);
  Tape<double> tape;
  const std::size_t nodes = tape.size();
  REQUIRE_THROWS_EXACT(fixed.forward(tape, tape.constant(Tensor<double>(Shape{2, 5, 6}))), std::invalid_argument,
                       "momnet::SinusoidalPositionalEncoding: the input has 5 positions, more than max_len 4 "
                       "(input [2, 5, 6])");
  const Var<double> narrow = tape.constant(Tensor<double>(Shape{2, 3, 5}));
  REQUIRE_THROWS_EXACT(learned.forward(tape, narrow), std::invalid_argument,
                       "momnet::LearnedPositionalEncoding: the input's last dimension 5 differs from d_model 6 "
                       "(input [2, 3, 5])");
  REQUIRE_THROWS_EXACT(learned.forward(tape, tape.constant(Tensor<double>(Shape{5, 6}))), std::invalid_argument,
                       "the input has 5 positions, more than max_len 4 (input [5, 6])");
  REQUIRE_THROWS_EXACT(fixed.forward(tape, tape.constant(Tensor<double>(Shape{6}))), std::invalid_argument,
                       "momnet::SinusoidalPositionalEncoding: expected an input [B, T, D] or [T, D], got [6]");
  REQUIRE_THROWS_EXACT(fixed.forward(tape, tape.constant(Tensor<double>(Shape{1, 1, 2, 6}))), std::invalid_argument,
                       "got [1, 1, 2, 6]");
  Tape<double> other;
  REQUIRE_THROWS_EXACT(learned.forward(other, narrow), std::invalid_argument,
                       "momnet::LearnedPositionalEncoding: the input belongs to a different tape");
  CHECK(tape.size() == nodes + 5);  // the five constants; no parameter node from a refused call
  REQUIRE_THROWS_EXACT(SinusoidalPositionalEncoding<double>(0, 4), std::invalid_argument,
                       "momnet::SinusoidalPositionalEncoding: max_len and d_model must be positive, got 0 and 4");
  REQUIRE_THROWS_EXACT(LearnedPositionalEncoding<double>(4, 0, rng), std::invalid_argument,
                       "momnet::LearnedPositionalEncoding: max_len and d_model must be positive, got 4 and 0");
}
