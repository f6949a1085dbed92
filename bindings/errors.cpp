// C++ exceptions -> Python exceptions (see attnvar/error.h for the mapping).
#include <pybind11/pybind11.h>

#include "attnvar/error.h"
#include "bindings.h"

namespace py = pybind11;

namespace attnvar::python {

void bind_errors(py::module_& m) {
  // The module owns the types; the translator keeps borrowed handles for its lifetime.
  static py::handle base = py::exception<Error>(m, "AttnvarError", PyExc_RuntimeError);
  static py::handle format = py::exception<FormatError>(m, "FormatError", PyExc_ValueError);
  static py::handle config = py::exception<ConfigError>(m, "ConfigError", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const MissingError& e) {
      py::set_error(PyExc_FileNotFoundError, e.what());
    } catch (const FormatError& e) {
      py::set_error(format, e.what());
    } catch (const ConfigError& e) {
      py::set_error(config, e.what());
    } catch (const Error& e) {
      py::set_error(base, e.what());
    }
  });
}

}  // namespace attnvar::python
