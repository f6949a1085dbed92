# cmake -P DevPackage.cmake: lay out an importable `attnvar` package in the build dir
# (PYTHONPATH=<build>/pkg) from symlinks to the Python sources plus the freshly built
# extension, so tests run against this build without installing it.
#   -DSRC=<repo>/python/attnvar -DDST=<build>/pkg/attnvar -DCORE=<_core.so> -DINFO=<_build_info.py>
file(MAKE_DIRECTORY "${DST}")
# Links whose source was moved or deleted would shadow the package's new layout: drop them.
file(GLOB _links RELATIVE "${DST}" "${DST}/*")
foreach(name IN LISTS _links)
  if(IS_SYMLINK "${DST}/${name}" AND NOT EXISTS "${DST}/${name}")
    file(REMOVE "${DST}/${name}")
  endif()
endforeach()
file(GLOB _entries RELATIVE "${SRC}" "${SRC}/*")
foreach(name IN LISTS _entries)
  if(name MATCHES "^(__pycache__|_core.*\\.so|_build_info\\.py.*)$")
    continue()
  endif()
  if(NOT EXISTS "${DST}/${name}")
    file(CREATE_LINK "${SRC}/${name}" "${DST}/${name}" SYMBOLIC)
  endif()
endforeach()
get_filename_component(_core_name "${CORE}" NAME)
file(CREATE_LINK "${CORE}" "${DST}/${_core_name}" SYMBOLIC)
file(CREATE_LINK "${INFO}" "${DST}/_build_info.py" SYMBOLIC)
