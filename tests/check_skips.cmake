# Run by ctest (tests_skip_through_helper): fails when a test can skip without CI noticing.
# cmocka's skip() and Python's unittest skips pass silently; C tests skip only through VD_SKIP
# (tests/skip.h), which fails under VD_TEST_NO_SKIP=1, and end-to-end tests do not skip at all.
#   cmake -DROOT=<source dir> -P tests/check_skips.cmake
file(GLOB_RECURSE files ${ROOT}/tests/*.c ${ROOT}/tests/*.h ${ROOT}/tests/*.py)
set(bad "")
foreach(f ${files})
  if(f STREQUAL "${ROOT}/tests/skip.h" OR f MATCHES "/node_modules/")
    continue()
  elseif(f MATCHES "\\.py$")
    set(re "skipTest|unittest\\.skip|SkipTest|skipIf|skipUnless")
  else()
    set(re "(^|[^A-Za-z0-9_])skip[ \t]*\\([ \t]*\\)")
  endif()
  file(STRINGS ${f} hits REGEX "${re}")
  foreach(h ${hits})
    string(APPEND bad "\n  ${f}: ${h}")
  endforeach()
endforeach()
if(bad)
  message(FATAL_ERROR "tests that skip silently (use VD_SKIP from tests/skip.h, or make the "
                      "condition hold):${bad}")
endif()
message(STATUS "no silent skips in ${ROOT}/tests")
