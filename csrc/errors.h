// Error messages of the op functions, formatted like talkie_kernels/_checks.py
// ("[op] name must be ..., got (2, 3)."): std::invalid_argument -> ValueError,
// tk::type_error -> TypeError.
#pragma once

#include <charconv>
#include <sstream>
#include <stdexcept>
#include <string>

#include "mlx/utils.h"
#include "ops.h"

namespace tk {

inline std::string fmt(const mx::Shape& shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    os << (i ? ", " : "") << shape[i];
  }
  os << (shape.size() == 1 ? ",)" : ")");
  return os.str();
}

inline std::string fmt(mx::Dtype d) {  // as Python prints it: "mlx.core.float32"
  std::ostringstream os;
  os << "mlx.core." << d;
  return os.str();
}

inline std::string fmt(double v) {  // shortest round trip, like Python's repr(float)
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  std::string s(buf, end);
  if (s.find_first_of(".ena") == std::string::npos) {
    s += ".0";
  }
  return s;
}

[[noreturn]] inline void fail(const char* op, const std::string& msg) {
  throw std::invalid_argument(std::string("[") + op + "] " + msg);
}
[[noreturn]] inline void fail_type(const char* op, const std::string& msg) {
  throw type_error(std::string("[") + op + "] " + msg);
}

} // namespace tk
