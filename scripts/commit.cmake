# Writes OUT, a header defining VD_COMMIT: the git commit of SRC (40 hex digits), or "unknown"
# when SRC is not a git checkout (a release tarball) or git is missing. Run at every build, it
# rewrites OUT only when the commit changed, so only the file that includes it is recompiled.
# A packager may set VD_COMMIT in the environment to say which commit a tarball holds.
set(commit "$ENV{VD_COMMIT}")
if(NOT commit)
  find_program(GIT git)
  if(GIT)
    execute_process(COMMAND ${GIT} -C ${SRC} rev-parse HEAD OUTPUT_VARIABLE commit
                    RESULT_VARIABLE rc OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(NOT rc EQUAL 0)
      set(commit "")
    endif()
  endif()
endif()
if(NOT commit MATCHES "^[0-9a-f]+$")
  set(commit "unknown")
endif()
set(text "/* Generated at build time by scripts/commit.cmake. */\n#define VD_COMMIT \"${commit}\"\n")
if(EXISTS ${OUT})
  file(READ ${OUT} old)
endif()
if(NOT old STREQUAL text)
  file(WRITE ${OUT} "${text}")
endif()
