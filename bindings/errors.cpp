// C++ exceptions -> Python exceptions (see attnvar/error.h for the mapping). Messages are
// made valid UTF-8 first: one that quotes ill-formed bytes from a file would otherwise turn
// into a UnicodeDecodeError when Python builds the exception.
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
      py::set_error(PyExc_FileNotFoundError, utf8_message(e.what()).c_str());
    } catch (const FormatError& e) {
      py::set_error(format, utf8_message(e.what()).c_str());
    } catch (const ConfigError& e) {
      py::set_error(config, utf8_message(e.what()).c_str());
    } catch (const Error& e) {
      py::set_error(base, utf8_message(e.what()).c_str());
    }
  });
}

}  // namespace attnvar::python
