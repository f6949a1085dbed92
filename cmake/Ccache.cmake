# Use ccache when present. Its cache lives in the user's home (outside the clone),
# so fresh clones and CI reuse it. The sloppiness settings let it cache TUs that use
# precompiled headers; BASEDIR and NOHASHDIR let a fresh clone elsewhere (CI) hit the
# cache filled by another checkout.
find_program(ATTNVAR_CCACHE ccache)
if(ATTNVAR_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_CXX_COMPILER_LAUNCHER
      ${CMAKE_COMMAND} -E env
      "CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime"
      "CCACHE_BASEDIR=${PROJECT_SOURCE_DIR}" CCACHE_NOHASHDIR=1
      ${ATTNVAR_CCACHE})
  message(STATUS "attnvar: compiling through ccache (${ATTNVAR_CCACHE})")
endif()
