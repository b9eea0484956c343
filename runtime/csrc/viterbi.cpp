// mner.runtime._viterbi: linear-chain CRF decoding (Viterbi) and forward-backward
// marginals, with the loops in C++ and the GIL released while computing.
//
// Conventions are pytorch-crf's (torchcrf.CRF, batch_first=True): a path's score is
// start[y0] + emissions[0, y0] + sum_t (transitions[y(t-1), y(t)] + emissions[t, y(t)])
// + end[y(len-1)], with transitions[i, j] the score of moving from tag i to tag j.
//
// The Python wrapper (mner/runtime/viterbi.py) validates and converts every input;
// the checks here only keep a direct caller from reading out of bounds.
//
// viterbi_decode must agree bit-for-bit with the numpy fallback, so it performs the
// same float32 operations in the same order: candidate = (score[i] + transitions[i, j])
// + emissions[t, j], maximum over i with ties going to the lowest i (np.argmax's
// rule). Nothing here may be compiled with -ffast-math (it would reassociate).

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace py = pybind11;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using LengthArray = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;
using AllowedArray = py::array_t<bool, py::array::c_style | py::array::forcecast>;

struct Shape {
    py::ssize_t batch_size;
    py::ssize_t seq_length;
    py::ssize_t num_tags;
};

std::string shape_string(const py::array& array) {
    std::string text = "(";
    for (py::ssize_t axis = 0; axis < array.ndim(); ++axis) {
        text += (axis ? ", " : "") + std::to_string(array.shape(axis));
    }
    return text + (array.ndim() == 1 ? ",)" : ")");
}

// Throws std::invalid_argument (ValueError in Python) on any shape or length that
// would make the loops below read or write out of bounds.
Shape check_inputs(const FloatArray& emissions, const LengthArray& lengths, const FloatArray& start,
                   const FloatArray& end, const FloatArray& transitions) {
    if (emissions.ndim() != 3) {
        throw std::invalid_argument("emissions must be 3-D (B, L, T), got shape " + shape_string(emissions));
    }
    const Shape shape{emissions.shape(0), emissions.shape(1), emissions.shape(2)};
    const auto expect = [](const py::array& array, const std::string& name, const std::string& wanted,
                           bool matches) {
        if (!matches) {
            throw std::invalid_argument(name + " must have shape " + wanted + ", got " + shape_string(array));
        }
    };
    const std::string tags = std::to_string(shape.num_tags);
    expect(start, "start", "(" + tags + ",)", start.ndim() == 1 && start.shape(0) == shape.num_tags);
    expect(end, "end", "(" + tags + ",)", end.ndim() == 1 && end.shape(0) == shape.num_tags);
    expect(transitions, "transitions", "(" + tags + ", " + tags + ")",
           transitions.ndim() == 2 && transitions.shape(0) == shape.num_tags &&
               transitions.shape(1) == shape.num_tags);
    expect(lengths, "lengths", "(" + std::to_string(shape.batch_size) + ",)",
           lengths.ndim() == 1 && lengths.shape(0) == shape.batch_size);
    const std::int64_t* length_data = lengths.data();
    for (py::ssize_t b = 0; b < shape.batch_size; ++b) {
        if (length_data[b] < 1 || length_data[b] > shape.seq_length) {
            throw std::invalid_argument("lengths[" + std::to_string(b) + "] must be in [1, " +
                                        std::to_string(shape.seq_length) + "], got " +
                                        std::to_string(length_data[b]));
        }
    }
    if (shape.batch_size > 0 && shape.num_tags < 1) {
        throw std::invalid_argument("emissions must have at least one tag, got T = 0");
    }
    return shape;
}

#if defined(__GNUC__)
#define MNER_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define MNER_ALWAYS_INLINE inline
#endif
// On x86-64 Linux with GCC, decode_batch is also compiled for AVX2 and picked at load
// time; float32 additions round identically in SSE and AVX, so results do not change.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MNER_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MNER_SIMD_CLONES
#endif

// The tag axis padded to a multiple of 8 so that the inner j loop is whole SIMD
// vectors. Padding columns carry zero scores; they are computed and never read.
constexpr py::ssize_t kLanes = 8;

struct DecodeProblem {
    py::ssize_t batch_size, seq_length, num_tags, width;  // width: num_tags rounded up to kLanes
    const float* emissions;                                // (B, L, T)
    const bool* allowed;                                   // (B, L, T) or nullptr
    const std::int64_t* lengths;                           // (B,)
    const float* start;                                    // (W,) padded
    const float* end;                                      // (T,)
    const float* transitions;                              // (T, W) padded rows
    std::int32_t* tags;                                    // (B, L), already -1
    float* scores;                                         // (B,)
};

// Scratch reused across the batch so the hot loop allocates nothing.
struct DecodeScratch {
    float* score;                // (W,) best score of a path ending in each tag
    float* next;                 // (W,)
    float* row;                  // (W,) emissions at t, -inf where disallowed
    std::int32_t* pointer;       // (W,)
    std::int32_t* backpointers;  // (L, W), [t, j] = best previous tag
};

// One Viterbi step over every tag j (width = W, a multiple of kLanes):
//   best[j] = max_i (score[i] + transitions[i, j]) + row[j],  pointer[j] = its argmax.
// i outer, j inner keeps the j loop contiguous and vectorised; strict '>' over
// increasing i keeps the lowest i on ties, as np.argmax does.
template <typename Width>
MNER_ALWAYS_INLINE void relax(const float* __restrict score, const float* __restrict transitions,
                              const float* __restrict row, py::ssize_t T, Width width, float* __restrict best,
                              std::int32_t* __restrict pointer) {
    for (py::ssize_t j = 0; j < width; ++j) {
        best[j] = (score[0] + transitions[j]) + row[j];
        pointer[j] = 0;
    }
    for (py::ssize_t i = 1; i < T; ++i) {
        const float from = score[i];
        const float* __restrict transition_row = transitions + i * width;
        const std::int32_t index = static_cast<std::int32_t>(i);
        for (py::ssize_t j = 0; j < width; ++j) {
            const float candidate = (from + transition_row[j]) + row[j];
            const float kept = best[j];
            const std::int32_t kept_pointer = pointer[j];
            // Written as mask arithmetic and max (same results as an if) so that GCC
            // emits compare/and/max vectors rather than a branch per vector.
            const std::int32_t take = -static_cast<std::int32_t>(candidate > kept);  // 0 or all ones
            pointer[j] = kept_pointer ^ ((kept_pointer ^ index) & take);
            best[j] = std::max(kept, candidate);  // kept < candidate ? candidate : kept
        }
    }
}

// W > 0 fixes the width at compile time (fully unrolled vector code); W == 0 reads
// problem.width at run time for large tag sets.
template <int W>
MNER_ALWAYS_INLINE void decode_sequence(const DecodeProblem& problem, const DecodeScratch& scratch,
                                        py::ssize_t b) {
    const float negative_infinity = -std::numeric_limits<float>::infinity();
    const py::ssize_t T = problem.num_tags;
    const py::ssize_t width = W > 0 ? W : problem.width;
    const std::int64_t length = problem.lengths[b];
    const float* emissions = problem.emissions + b * problem.seq_length * T;
    const bool* allowed = problem.allowed ? problem.allowed + b * problem.seq_length * T : nullptr;
    float* __restrict score = scratch.score;
    float* __restrict next = scratch.next;
    float* __restrict row = scratch.row;

    // A disallowed tag's emission becomes -inf, so every candidate through it is -inf,
    // exactly as np.where(allowed, emissions, -inf) makes it in the numpy fallback.
    const auto load_row = [&](std::int64_t t) {
        const float* source = emissions + t * T;
        if (allowed == nullptr) {
            std::copy(source, source + T, row);
        } else {
            const bool* allowed_row = allowed + t * T;
            for (py::ssize_t j = 0; j < T; ++j) {
                row[j] = allowed_row[j] ? source[j] : negative_infinity;
            }
        }
    };

    load_row(0);
    for (py::ssize_t j = 0; j < width; ++j) {
        score[j] = problem.start[j] + row[j];
    }
    for (std::int64_t t = 1; t < length; ++t) {
        load_row(t);
        if constexpr (W > 0) {
            // Local fixed-size rows stay in vector registers: branch-free blends.
            alignas(32) float best[W];
            alignas(32) std::int32_t pointer[W];
            relax(score, problem.transitions, row, T, std::integral_constant<py::ssize_t, W>{}, best, pointer);
            std::copy(pointer, pointer + W, scratch.backpointers + t * W);
            std::copy(best, best + W, score);
        } else {
            relax(score, problem.transitions, row, T, width, next, scratch.pointer);
            std::copy(scratch.pointer, scratch.pointer + width, scratch.backpointers + t * width);
            std::copy(next, next + width, score);
        }
    }

    std::int32_t last = 0;
    float best = score[0] + problem.end[0];
    for (py::ssize_t j = 1; j < T; ++j) {
        const float candidate = score[j] + problem.end[j];
        if (candidate > best) {
            best = candidate;
            last = static_cast<std::int32_t>(j);
        }
    }
    problem.scores[b] = best;
    std::int32_t* tags = problem.tags + b * problem.seq_length;
    tags[length - 1] = last;
    for (std::int64_t t = length - 1; t > 0; --t) {
        tags[t - 1] = scratch.backpointers[t * width + tags[t]];
    }
}

template <int W>
MNER_ALWAYS_INLINE void decode_all(const DecodeProblem& problem, const DecodeScratch& scratch) {
    for (py::ssize_t b = 0; b < problem.batch_size; ++b) {
        decode_sequence<W>(problem, scratch, b);
    }
}

MNER_SIMD_CLONES void decode_batch(const DecodeProblem& problem, const DecodeScratch& scratch) {
    switch (problem.width) {
        case 8: return decode_all<8>(problem, scratch);
        case 16: return decode_all<16>(problem, scratch);
        case 24: return decode_all<24>(problem, scratch);
        case 32: return decode_all<32>(problem, scratch);
        default: return decode_all<0>(problem, scratch);
    }
}

py::tuple viterbi_decode(const FloatArray& emissions, const LengthArray& lengths, const FloatArray& start,
                         const FloatArray& end, const FloatArray& transitions,
                         const std::optional<AllowedArray>& allowed) {
    const Shape shape = check_inputs(emissions, lengths, start, end, transitions);
    if (allowed && (allowed->ndim() != 3 || allowed->shape(0) != shape.batch_size ||
                    allowed->shape(1) != shape.seq_length || allowed->shape(2) != shape.num_tags)) {
        throw std::invalid_argument("allowed must have the shape of emissions " + shape_string(emissions) +
                                    ", got " + shape_string(*allowed));
    }
    const py::ssize_t B = shape.batch_size, L = shape.seq_length, T = shape.num_tags;
    const py::ssize_t W = (T + kLanes - 1) / kLanes * kLanes;

    py::array_t<std::int32_t> tags({B, L});  // (B, L), -1 after each length
    py::array_t<float> scores(B);            // (B,)
    DecodeProblem problem{B, L, T, W, emissions.data(), allowed ? allowed->data() : nullptr, lengths.data(),
                          nullptr, end.data(), nullptr, tags.mutable_data(), scores.mutable_data()};
    if (B > 0) {
        py::gil_scoped_release release;
        std::fill(problem.tags, problem.tags + B * L, -1);
        std::vector<float> padded_start(static_cast<std::size_t>(W), 0.0f);
        std::vector<float> padded_transitions(static_cast<std::size_t>(T * W), 0.0f);  // (T, W)
        std::copy(start.data(), start.data() + T, padded_start.begin());
        for (py::ssize_t i = 0; i < T; ++i) {
            std::copy(transitions.data() + i * T, transitions.data() + (i + 1) * T, padded_transitions.begin() + i * W);
        }
        problem.start = padded_start.data();
        problem.transitions = padded_transitions.data();
        std::vector<float> rows(static_cast<std::size_t>(3 * W), 0.0f);  // score, next, row
        std::vector<std::int32_t> pointers(static_cast<std::size_t>(W + L * W), 0);
        const DecodeScratch scratch{rows.data(), rows.data() + W, rows.data() + 2 * W, pointers.data(),
                                    pointers.data() + W};
        decode_batch(problem, scratch);
    }
    return py::make_tuple(tags, scores);
}

double log_sum_exp(const double* values, py::ssize_t count) {
    const double maximum = *std::max_element(values, values + count);
    double total = 0.0;
    for (py::ssize_t k = 0; k < count; ++k) {
        total += std::exp(values[k] - maximum);
    }
    return maximum + std::log(total);
}

// Forward-backward in log space (float64) for one sequence; writes float32 posteriors
// into marginals[:length] and leaves the padding rows as they are (zero).
void sequence_marginals(const float* emissions, std::int64_t length, py::ssize_t T, const float* start,
                        const float* end, const float* transitions, double* alpha, double* beta, double* terms,
                        float* marginals) {
    for (py::ssize_t j = 0; j < T; ++j) {
        alpha[j] = static_cast<double>(start[j]) + emissions[j];
    }
    for (std::int64_t t = 1; t < length; ++t) {
        // alpha[t, j] = logsumexp_i(alpha[t-1, i] + transitions[i, j]) + emissions[t, j]
        for (py::ssize_t j = 0; j < T; ++j) {
            for (py::ssize_t i = 0; i < T; ++i) {
                terms[i] = alpha[(t - 1) * T + i] + transitions[i * T + j];
            }
            alpha[t * T + j] = log_sum_exp(terms, T) + emissions[t * T + j];
        }
    }
    for (py::ssize_t j = 0; j < T; ++j) {
        beta[(length - 1) * T + j] = end[j];
    }
    for (std::int64_t t = length - 2; t >= 0; --t) {
        // beta[t, i] = logsumexp_j(transitions[i, j] + emissions[t+1, j] + beta[t+1, j])
        for (py::ssize_t i = 0; i < T; ++i) {
            for (py::ssize_t j = 0; j < T; ++j) {
                terms[j] = static_cast<double>(transitions[i * T + j]) +
                           (emissions[(t + 1) * T + j] + beta[(t + 1) * T + j]);
            }
            beta[t * T + i] = log_sum_exp(terms, T);
        }
    }
    for (py::ssize_t j = 0; j < T; ++j) {
        terms[j] = alpha[(length - 1) * T + j] + end[j];
    }
    const double log_partition = log_sum_exp(terms, T);
    for (std::int64_t t = 0; t < length; ++t) {
        for (py::ssize_t j = 0; j < T; ++j) {
            marginals[t * T + j] = static_cast<float>(std::exp(alpha[t * T + j] + beta[t * T + j] - log_partition));
        }
    }
}

py::array_t<float> crf_marginals(const FloatArray& emissions, const LengthArray& lengths, const FloatArray& start,
                                 const FloatArray& end, const FloatArray& transitions) {
    const Shape shape = check_inputs(emissions, lengths, start, end, transitions);
    const py::ssize_t B = shape.batch_size, L = shape.seq_length, T = shape.num_tags;

    py::array_t<float> marginals({B, L, T});  // (B, L, T), zero at padding positions
    float* marginal_data = marginals.mutable_data();
    const float* emission_data = emissions.data();
    const std::int64_t* length_data = lengths.data();
    {
        py::gil_scoped_release release;
        std::fill(marginal_data, marginal_data + B * L * T, 0.0f);
        std::vector<double> alpha(static_cast<std::size_t>(L * T)), beta(static_cast<std::size_t>(L * T));
        std::vector<double> terms(static_cast<std::size_t>(T));
        for (py::ssize_t b = 0; b < B; ++b) {
            sequence_marginals(emission_data + b * L * T, length_data[b], T, start.data(), end.data(),
                               transitions.data(), alpha.data(), beta.data(), terms.data(),
                               marginal_data + b * L * T);
        }
    }
    return marginals;
}

}  // namespace

PYBIND11_MODULE(_viterbi, m) {
    m.doc() = "Native CRF Viterbi decoding and forward-backward marginals (use mner.runtime.viterbi).";
    m.def("viterbi_decode", &viterbi_decode, py::arg("emissions"), py::arg("lengths"), py::arg("start"),
          py::arg("end"), py::arg("transitions"), py::arg("allowed") = py::none(),
          "Best tag path per sequence: (tags int32 (B, L) padded with -1, scores float32 (B,)).");
    m.def("crf_marginals", &crf_marginals, py::arg("emissions"), py::arg("lengths"), py::arg("start"),
          py::arg("end"), py::arg("transitions"),
          "Posterior tag marginals float32 (B, L, T); zero at padding positions.");
}
