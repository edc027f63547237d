# INTERFACE target with our warning set; linked PRIVATE into pmamba's own targets only.
add_library(pmamba_warnings INTERFACE)
target_compile_options(pmamba_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${PMAMBA_WERROR}>>:-Werror>)
