# Configures, builds and runs tests/downstream against lora, in one of three modes:
#   MODE=find_package     : stage `cmake --install` of LORA_BUILD_DIR, then find_package(lora)
#   MODE=add_subdirectory : add_subdirectory(LORA_SOURCE_DIR)
#   MODE=fetch_content    : FetchContent from file://LORA_SOURCE_DIR at its HEAD commit, so the
#                           committed state of the checkout (no network; uncommitted changes are
#                           not part of it). Skipped when LORA_SOURCE_DIR is not a git checkout.
cmake_minimum_required(VERSION 3.18)

function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGV}")
    message(FATAL_ERROR "downstream (${MODE}): failed (${rc}): ${cmd}")
  endif()
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
set(prefix_path "${CMAKE_PREFIX_PATH_OUTER}")
if(MODE STREQUAL "find_package")
  run(${CMAKE_COMMAND} --install ${LORA_BUILD_DIR} --prefix ${WORK_DIR}/stage)
  list(PREPEND prefix_path ${WORK_DIR}/stage)
  set(extra)
elseif(MODE STREQUAL "fetch_content")
  find_program(GIT_EXECUTABLE git)
  set(head)
  if(GIT_EXECUTABLE)
    # The source tree must be the top of its own checkout, not a folder inside another one.
    execute_process(COMMAND ${GIT_EXECUTABLE} -C ${LORA_SOURCE_DIR} rev-parse --show-toplevel
                    OUTPUT_VARIABLE top OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE rc)
    file(REAL_PATH "${LORA_SOURCE_DIR}" source_real)
    if(rc EQUAL 0 AND top)
      file(REAL_PATH "${top}" top)
    endif()
    if(rc EQUAL 0 AND top STREQUAL source_real)
      execute_process(COMMAND ${GIT_EXECUTABLE} -C ${LORA_SOURCE_DIR} rev-parse --verify HEAD
                      OUTPUT_VARIABLE head OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE rc)
      if(NOT rc EQUAL 0)
        set(head)
      endif()
    endif()
  endif()
  if(NOT head)
    # CTest reports this as skipped (SKIP_REGULAR_EXPRESSION), not passed.
    message("downstream (fetch_content) SKIPPED: ${LORA_SOURCE_DIR} is not the top of a git checkout with a commit "
            "(or git is absent), so there is no repository to fetch from. Run it in a clone.")
    return()
  endif()
  execute_process(COMMAND ${GIT_EXECUTABLE} -C ${LORA_SOURCE_DIR} status --porcelain --untracked-files=no
                  OUTPUT_VARIABLE dirty OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(dirty)
    message("downstream (fetch_content): note: fetching the committed state ${head}; the uncommitted "
            "changes of ${LORA_SOURCE_DIR} are not part of it")
  endif()
  set(extra -DLORA_GIT_REPOSITORY=file://${LORA_SOURCE_DIR} -DLORA_GIT_TAG=${head}
            -DFETCHCONTENT_BASE_DIR=${WORK_DIR}/deps)
else()
  set(extra -DLORA_SOURCE_DIR=${LORA_SOURCE_DIR})
endif()
string(REPLACE ";" "\\;" prefix_arg "${prefix_path}")
run(${CMAKE_COMMAND} -S ${LORA_SOURCE_DIR}/tests/downstream -B ${WORK_DIR}/build -G ${GENERATOR}
    -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=${prefix_arg}" ${extra})
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(${WORK_DIR}/build/downstream)
