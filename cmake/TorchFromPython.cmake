# Locate LibTorch inside the installed `torch` Python package and record its version.
#
# Sets:
#   Python_EXECUTABLE      the interpreter (scikit-build-core passes it; else found here)
#   ATTNVAR_TORCH_VERSION  torch.__version__ at configure time, e.g. 2.13.0+cpu
#   ATTNVAR_TORCH_ROOT     the torch package directory
#   ATTNVAR_TORCH_CXX11_ABI  0 or 1, torch's _GLIBCXX_USE_CXX11_ABI
# and prepends torch's CMake prefix so find_package(Torch) finds TorchConfig.cmake.
if(ATTNVAR_BUILD_PYTHON)
  find_package(Python 3.9 REQUIRED COMPONENTS Interpreter Development.Module)
else()
  find_package(Python 3.9 REQUIRED COMPONENTS Interpreter)
endif()

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import os, torch, torch.utils; print(torch.__version__); print(os.path.dirname(torch.__file__)); print(torch.utils.cmake_prefix_path); print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"
  OUTPUT_VARIABLE _attnvar_torch_out
  ERROR_VARIABLE _attnvar_torch_err
  RESULT_VARIABLE _attnvar_torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _attnvar_torch_rc EQUAL 0)
  message(FATAL_ERROR
    "attnvar needs the `torch` Python package at build time (${Python_EXECUTABLE}):\n"
    "${_attnvar_torch_err}\n"
    "Install it first: pip install torch==2.13.0, then build with --no-build-isolation.")
endif()
string(REPLACE "\n" ";" _attnvar_torch_out "${_attnvar_torch_out}")
list(GET _attnvar_torch_out 0 ATTNVAR_TORCH_VERSION)
list(GET _attnvar_torch_out 1 ATTNVAR_TORCH_ROOT)
list(GET _attnvar_torch_out 2 _attnvar_torch_prefix)
list(GET _attnvar_torch_out 3 ATTNVAR_TORCH_CXX11_ABI)
list(PREPEND CMAKE_PREFIX_PATH "${_attnvar_torch_prefix}")
message(STATUS "attnvar: torch ${ATTNVAR_TORCH_VERSION} at ${ATTNVAR_TORCH_ROOT} "
               "(_GLIBCXX_USE_CXX11_ABI=${ATTNVAR_TORCH_CXX11_ABI})")
