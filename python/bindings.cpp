// The Python module talkie_kernels._native.
//
// Python-level argument checks live here (is it an mx.array, an int, a real
// number?); array checks (dtype, shape) live in the C++ op functions. Both
// raise ValueError/TypeError with messages "[op_name] ..." matching
// talkie_kernels/_checks.py.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "kernels/kernels.h"
#include "mlx/mlx.h"
#include "ops.h"
#include "cpu/parallel.h"

namespace nb = nanobind;
namespace mx = mlx::core;
using namespace nb::literals;

namespace {

std::string py_type_name(nb::handle h) {
  return nb::cast<std::string>(nb::handle(h.type()).attr("__name__"));
}

[[noreturn]] void type_fail(const char* op, const std::string& msg) {
  throw nb::type_error(("[" + std::string(op) + "] " + msg).c_str());
}

// The mx.array behind h, or null (no implicit conversions: a float is not an array).
mx::array* array_or_null(nb::handle h) {
  return nb::isinstance<mx::array>(h) ? nb::inst_ptr<mx::array>(h) : nullptr;
}

const mx::array& as_array(const char* op, const char* name, nb::handle h) {
  mx::array* a = array_or_null(h);
  if (a == nullptr) {
    type_fail(op, std::string(name) + " must be an mx.array, got " + py_type_name(h) + ".");
  }
  return *a;
}

// numbers.Real without bool: float, int, and numpy-style scalars.
bool is_real(nb::handle h) {
  if (PyBool_Check(h.ptr())) {
    return false;
  }
  if (PyFloat_Check(h.ptr()) || PyLong_Check(h.ptr())) {
    return true;
  }
  static nb::object real = nb::module_::import_("numbers").attr("Real");
  return PyObject_IsInstance(h.ptr(), real.ptr()) == 1;
}

// A positive real number. The op functions check positivity too; checking
// here as well lets the message show the Python value as Python prints it.
double as_positive(const char* op, const char* name, nb::handle v, const char* expected) {
  if (!is_real(v)) {
    type_fail(op, std::string(name) + " must be " + expected + ", got " + py_type_name(v) + ".");
  }
  double d = nb::cast<double>(nb::float_(v));
  if (!(d > 0)) {
    throw std::invalid_argument(
        "[" + std::string(op) + "] " + name + " must be positive, got " + nb::cast<std::string>(nb::str(v)) + ".");
  }
  return d;
}

double as_eps(const char* op, nb::handle eps) {
  return eps.is_none() ? tk::kFp32Eps : as_positive(op, "eps", eps, "a float or None");
}

double as_base(const char* op, nb::handle base) {
  return as_positive(op, "base", base, "a float");
}

// An int becomes an int32 scalar array (an input of the primitive, like an
// array offset); arrays are checked by the op.
mx::array as_offset(const char* op, nb::handle offset) {
  if (PyBool_Check(offset.ptr())) {
    type_fail(op, "offset must be an int or an integer mx.array, got bool.");
  }
  if (PyLong_Check(offset.ptr())) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(offset.ptr(), &overflow);
    if (overflow || v < INT32_MIN || v > INT32_MAX) {
      throw std::invalid_argument("[" + std::string(op) + "] offset must fit in int32, got " +
                                  nb::cast<std::string>(nb::str(offset)) + ".");
    }
    return mx::array(static_cast<int32_t>(v), mx::int32);
  }
  mx::array* a = array_or_null(offset);
  if (a == nullptr) {
    type_fail(op, "offset must be an int or an integer mx.array, got " + py_type_name(offset) + ".");
  }
  return *a;
}

// A scalar gain: a real number becomes an fp32 array of shape (1,).
mx::array as_gain(const char* op, const char* name, nb::handle g) {
  if (is_real(g)) {
    return mx::array({static_cast<float>(nb::cast<double>(nb::float_(g)))}, {1}, mx::float32);
  }
  mx::array* a = array_or_null(g);
  if (a == nullptr) {
    type_fail(op, std::string(name) + " must be a float or an mx.array of shape (1,), got " + py_type_name(g) + ".");
  }
  return *a;
}

// None or a Python int (not bool), range-checked into int.
std::optional<int> as_optional_int(const char* op, const char* name, nb::handle v) {
  if (v.is_none()) {
    return std::nullopt;
  }
  if (PyBool_Check(v.ptr()) || !PyLong_Check(v.ptr())) {
    type_fail(op, std::string(name) + " must be an int or None, got " + py_type_name(v) + ".");
  }
  int overflow = 0;
  long long n = PyLong_AsLongLongAndOverflow(v.ptr(), &overflow);
  if (overflow || n < INT32_MIN || n > INT32_MAX) {
    throw std::invalid_argument("[" + std::string(op) + "] " + name + " is out of range, got " +
                                nb::cast<std::string>(nb::str(v)) + ".");
  }
  return int(n);
}

} // namespace

NB_MODULE(_native, m) {
  m.doc() = "Native CPU kernels for Talkie's fused ops, as MLX Primitives (csrc/).";

  // tk::type_error derives from std::invalid_argument (-> ValueError), so it
  // needs its own translator to surface as TypeError.
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const tk::type_error& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });

  m.def(
      "roundtrip",
      [](const mx::array& a) { return a; },
      "a"_a,
      "Returns its argument: a smoke test that mx.array crosses into the extension.");

  m.def(
      "rms_norm",
      [](nb::handle x, nb::handle eps) {
        constexpr const char* op = "rms_norm";
        return tk::rms_norm(as_array(op, "x", x), as_eps(op, eps));
      },
      "x"_a.none(),
      "eps"_a.none() = nb::none(),
      "Weightless RMSNorm over the last axis, fp32 reduction, one rounding.");

  m.def(
      "rope",
      [](nb::handle x, nb::handle offset, nb::handle base) {
        constexpr const char* op = "rope";
        const auto& xa = as_array(op, "x", x);
        return tk::rope(xa, as_offset(op, offset), as_base(op, base));
      },
      "x"_a.none(),
      "offset"_a.none() = 0,
      nb::kw_only(),
      "base"_a.none() = 1e6,
      "Talkie's inverse-rotation RoPE (rotate-half) on x (B, H, L, D).");

  m.def(
      "rope_qk_norm",
      [](nb::handle q, nb::handle k, nb::handle head_gain, nb::handle offset, nb::handle base, nb::handle eps) {
        constexpr const char* op = "rope_qk_norm";
        const auto& qa = as_array(op, "q", q);
        const auto& ka = as_array(op, "k", k);
        mx::array* g = array_or_null(head_gain);
        if (g == nullptr) {
          type_fail(op, "head_gain must be an mx.array of shape (H,), got " + py_type_name(head_gain) + ".");
        }
        return tk::rope_qk_norm(qa, ka, *g, as_offset(op, offset), as_base(op, base), as_eps(op, eps));
      },
      "q"_a.none(),
      "k"_a.none(),
      "head_gain"_a.none(),
      "offset"_a.none() = 0,
      nb::kw_only(),
      "base"_a.none() = 1e6,
      "eps"_a.none() = nb::none(),
      "Fused RoPE -> RMSNorm -> head gain (q only) on q, k (B, H, L, D) -> (q, k).");

  m.def(
      "residual_norm",
      [](nb::handle x, nb::handle y, nb::handle gain, nb::handle skip, nb::handle skip_gain, nb::handle eps) {
        constexpr const char* op = "residual_norm";
        const auto& xa = as_array(op, "x", x);
        const auto& ya = as_array(op, "y", y);
        auto g = as_gain(op, "gain", gain);
        std::optional<mx::array> s, sg;
        if (!skip.is_none()) {
          s = as_array(op, "skip", skip);
        }
        if (!skip_gain.is_none()) {
          sg = as_gain(op, "skip_gain", skip_gain);
        }
        return tk::residual_norm(xa, ya, g, s, sg, as_eps(op, eps));
      },
      "x"_a.none(),
      "y"_a.none(),
      "gain"_a.none(),
      "skip"_a.none() = nb::none(),
      "skip_gain"_a.none() = nb::none(),
      nb::kw_only(),
      "eps"_a.none() = nb::none(),
      "Fused x_new = x + gain*y [+ skip_gain*skip] (rounded once), normed = rms_norm(x_new).");

  m.def(
      "linear",
      [](nb::handle x, nb::handle weight, nb::handle scales, nb::handle biases, nb::handle group_size,
         nb::handle bits, nb::handle mode) {
        constexpr const char* op = "linear";
        const auto& xa = as_array(op, "x", x);
        const auto& wa = as_array(op, "weight", weight);
        std::optional<mx::array> s, b;
        if (!scales.is_none()) {
          s = as_array(op, "scales", scales);
        }
        if (!biases.is_none()) {
          b = as_array(op, "biases", biases);
        }
        if (!nb::isinstance<nb::str>(mode)) {
          type_fail(op, "mode must be a string, got " + py_type_name(mode) + ".");
        }
        return tk::linear(
            xa, wa, s, b, as_optional_int(op, "group_size", group_size), as_optional_int(op, "bits", bits),
            nb::cast<std::string>(mode));
      },
      "x"_a.none(),
      "weight"_a.none(),
      "scales"_a.none() = nb::none(),
      "biases"_a.none() = nb::none(),
      nb::kw_only(),
      "group_size"_a.none() = nb::none(),
      "bits"_a.none() = nb::none(),
      "mode"_a.none() = "affine",
      "x @ weight.T, dense or MLX-quantized (mx.quantized_matmul's semantics, transpose=True).");

  m.def(
      "memory_read_gbps",
      &tk::memory_read_gbps,
      "nbytes"_a = int64_t(1) << 29,
      "repeats"_a = 5,
      "GB/s of a streaming read of an nbytes buffer with the kernels' threads (median of repeats).");

  m.def("num_threads", &tk::num_threads, "Threads the kernels use for large inputs.");
  m.def(
      "set_num_threads",
      &tk::set_num_threads,
      "n"_a,
      "Caps the kernels' threads (1 = single-threaded); clamped to the CPU's cores.");
  m.def(
      "isa",
      [] { return std::string(tk::kern::select().isa); },
      "The instruction set of the kernels in use ('base', 'v3' or 'v4').");
  m.def(
      "contiguous_copies",
      &tk::contiguous_copies,
      "How many inputs were copied because their last axis was strided (others are read in place).");
  m.def("available_isas", &tk::available_isas, "Instruction sets this CPU can run the kernels with.");
  m.def("use_isa", &tk::use_isa, "name"_a, "Switches the kernels to another instruction set (for tests).");
}
