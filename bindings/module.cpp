#include "bindings.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "attnvar's C++ core (LibTorch). Use the `attnvar` package, not this module.";
  attnvar::python::bind_errors(m);
  attnvar::python::bind_model(m);
  attnvar::python::bind_tokenizer(m);
  attnvar::python::bind_formats(m);
  attnvar::python::bind_generate(m);
}
