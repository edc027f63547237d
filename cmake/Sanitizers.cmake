# PMAMBA_SANITIZE: every translation unit of pmamba (and its tests) under AddressSanitizer and
# UndefinedBehaviorSanitizer, for `make test-sanitize`. PMAMBA_FUZZ adds libFuzzer's coverage
# instrumentation, for the targets in tests/fuzz (clang only; `make fuzz`). LibTorch, HDF5 and
# OpenBLAS are not instrumented: ASan still sees their allocations, and what LeakSanitizer or
# UBSan report inside them is suppressed in tests/sanitize/ (each entry says why).
if(PMAMBA_FUZZ AND NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "PMAMBA_FUZZ needs clang (libFuzzer): configure with CC=clang CXX=clang++")
endif()
set(PMAMBA_SANITIZER_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
# UBSan's vptr and function checks compare type information across shared objects; LibTorch's
# types come from an uninstrumented library, which makes both report false alarms.
list(APPEND PMAMBA_SANITIZER_FLAGS -fno-sanitize=vptr)
if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  list(APPEND PMAMBA_SANITIZER_FLAGS -fno-sanitize=function)
endif()
add_compile_options(${PMAMBA_SANITIZER_FLAGS} -g)
add_link_options(${PMAMBA_SANITIZER_FLAGS})
if(PMAMBA_FUZZ)
  add_compile_options(-fsanitize=fuzzer-no-link)
endif()
