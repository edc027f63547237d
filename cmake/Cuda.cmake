# CUDA support. PMAMBA_WITH_CUDA=ON builds the kernels in kernels/cuda/ into pmamba_kernels
# (needs a CUDA LibTorch). Independently, when nvcc exists, the .cu files are compile-checked.
set(PMAMBA_NVCC "" CACHE FILEPATH "nvcc used to compile-check kernels/cuda when PMAMBA_WITH_CUDA is OFF")
if(NOT PMAMBA_NVCC)
  find_program(PMAMBA_NVCC_FOUND nvcc HINTS /usr/local/cuda/bin ENV CUDA_HOME PATH_SUFFIXES bin)
  if(PMAMBA_NVCC_FOUND)
    set(PMAMBA_NVCC ${PMAMBA_NVCC_FOUND})
  endif()
endif()
if(PMAMBA_WITH_CUDA)
  # 80 = A100, 90 = H100/H200: the GPUs this project is run on.
  if(NOT CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 80 90)
  endif()
  enable_language(CUDA)
  # A CUDA LibTorch adds -gencode flags for TORCH_CUDA_ARCH_LIST (default: every architecture it
  # was built for, some of which a newer nvcc no longer knows); keep them to ours.
  if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    set(_archs "")
    foreach(a ${CMAKE_CUDA_ARCHITECTURES})
      string(REGEX REPLACE "([0-9]+)([0-9])$" "\\1.\\2" _dotted "${a}")
      list(APPEND _archs "${_dotted}")
    endforeach()
    string(REPLACE ";" " " _archs "${_archs}")
    set(ENV{TORCH_CUDA_ARCH_LIST} "${_archs}")
  endif()
endif()
