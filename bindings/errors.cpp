// C++ exceptions -> Python exceptions (see attnvar/error.h for the mapping). Messages are
// made valid UTF-8 first: one that quotes ill-formed bytes from a file would otherwise turn
// into a UnicodeDecodeError when Python builds the exception.
#include <pybind11/pybind11.h>

#include "attnvar/error.h"
#include "bindings.h"

namespace py = pybind11;

namespace attnvar::python {

namespace {

// A new exception type attnvar._core.<name> with the given bases (PyErr_NewException takes a
// tuple, which pybind11's py::exception does not), added to the module, which owns it.
py::handle new_exception(py::module_& m, const char* name, const char* doc, py::tuple bases) {
  const std::string qualified = std::string("attnvar._core.") + name;
  PyObject* type = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, bases.ptr(), nullptr);
  if (type == nullptr) throw py::error_already_set();
  m.add_object(name, py::reinterpret_steal<py::object>(type));
  return type;
}

}  // namespace

void bind_errors(py::module_& m) {
  // AttnvarError is the base of every attnvar error; each specific type also derives from
  // the builtin a caller would catch without knowing attnvar, so existing except clauses
  // keep working. The module owns the types; the translator keeps borrowed handles.
  static py::handle base = new_exception(
      m, "AttnvarError", "Base of every error attnvar raises.",
      py::make_tuple(py::handle(PyExc_RuntimeError)));
  static py::handle format = new_exception(
      m, "FormatError",
      "A malformed model, tokenizer, run or study file (names the file and field).",
      py::make_tuple(base, py::handle(PyExc_ValueError)));
  static py::handle config = new_exception(
      m, "ConfigError", "An unsupported or inconsistent configuration or option.",
      py::make_tuple(base, py::handle(PyExc_ValueError)));
  static py::handle missing = new_exception(
      m, "MissingError", "A file or directory attnvar needs does not exist (names it).",
      py::make_tuple(base, py::handle(PyExc_FileNotFoundError)));
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const MissingError& e) {
      py::set_error(missing, utf8_message(e.what()).c_str());
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
