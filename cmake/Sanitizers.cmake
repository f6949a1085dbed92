# attnvar_sanitize(<target>): instrument one of attnvar's own targets with the
# sanitizers in ATTNVAR_SANITIZE. libtorch stays uninstrumented; its reports are
# suppressed by .ci/sanitizers/*.supp, never by switching the sanitizers off.
function(attnvar_sanitize target)
  if(ATTNVAR_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=${ATTNVAR_SANITIZE}
                           -fno-omit-frame-pointer -fno-sanitize-recover=all)
    target_link_options(${target} PUBLIC -fsanitize=${ATTNVAR_SANITIZE})
  endif()
endfunction()
