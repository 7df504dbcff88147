#include <nanobind/nanobind.h>
#include "mlx/mlx.h"
namespace nb = nanobind;
namespace mx = mlx::core;
NB_MODULE(_native, m) {
  m.def("roundtrip", [](const mx::array& a) { return a; });
}
