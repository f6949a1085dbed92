# attnvar::openmp: compile attnvar's code with OpenMP and link the OpenMP runtime torch
# itself loads, so that at::parallel_for in attnvar's own sources runs on torch's
# intra-op threads.
#
# at::parallel_for is a header template: whether it splits work is decided when *our*
# file is compiled (ATen/ParallelOpenMP.h tests _OPENMP). Compiled without -fopenmp it
# silently runs every range on the calling thread, whatever at::set_num_threads says.
# Linking torch's own libgomp (same soname as the compiler's) keeps one OpenMP runtime,
# one thread pool, in every process.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import torch; print(int('ATen parallel backend: OpenMP' in torch.__config__.parallel_info()))"
  OUTPUT_VARIABLE ATTNVAR_TORCH_OPENMP
  OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE _attnvar_omp_rc)
if(NOT _attnvar_omp_rc EQUAL 0)
  message(FATAL_ERROR "attnvar: could not ask torch for its parallel backend")
endif()

add_library(attnvar_openmp INTERFACE)
add_library(attnvar::openmp ALIAS attnvar_openmp)
if(ATTNVAR_TORCH_OPENMP)
  find_package(OpenMP REQUIRED COMPONENTS CXX)
  separate_arguments(_attnvar_omp_flags NATIVE_COMMAND "${OpenMP_CXX_FLAGS}")
  target_compile_options(attnvar_openmp INTERFACE ${_attnvar_omp_flags})
  # The runtime torch ships (torch/lib/libgomp*.so*) where it ships one, else the
  # compiler's (a torch linked against the system libgomp).
  file(GLOB _attnvar_torch_gomp "${ATTNVAR_TORCH_ROOT}/lib/libgomp*.so*")
  if(_attnvar_torch_gomp)
    list(GET _attnvar_torch_gomp 0 ATTNVAR_OPENMP_RUNTIME)
    target_link_libraries(attnvar_openmp INTERFACE "${ATTNVAR_OPENMP_RUNTIME}")
  else()
    set(ATTNVAR_OPENMP_RUNTIME "${OpenMP_gomp_LIBRARY}")
    target_link_libraries(attnvar_openmp INTERFACE OpenMP::OpenMP_CXX)
  endif()
  message(STATUS "attnvar: OpenMP ${OpenMP_CXX_FLAGS}, runtime ${ATTNVAR_OPENMP_RUNTIME}")
else()
  message(STATUS "attnvar: torch's parallel backend is not OpenMP; no OpenMP flags")
endif()
