// One registration function per area; module.cpp calls them in order.
#pragma once

#include <pybind11/pybind11.h>

namespace attnvar::python {

void bind_errors(pybind11::module_& m);
void bind_model(pybind11::module_& m);
void bind_tokenizer(pybind11::module_& m);
void bind_formats(pybind11::module_& m);

}  // namespace attnvar::python
