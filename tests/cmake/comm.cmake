# comm (issue 5): NCCL for kernels/cuda/comm_nccl.cu. When gptoss_cuda exists and nccl.h and
# libnccl are found (the toolkit's /usr/local/cuda, or the distribution's paths), the library
# links NCCL and gets GPTOSS_HAVE_NCCL=1 (PUBLIC: users can tell whether comm_nccl_new works);
# otherwise comm_nccl.cu compiles to stubs that say NCCL is missing. test_comm (shm, single)
# is a plain tests/unit case and needs nothing here.
if(TARGET gptoss_cuda)
  find_path(GPTOSS_NCCL_INCLUDE nccl.h
            HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include /usr/include)
  find_library(GPTOSS_NCCL_LIBRARY nccl
               HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu)
  if(GPTOSS_NCCL_INCLUDE AND GPTOSS_NCCL_LIBRARY)
    message(STATUS "gptoss: NCCL ${GPTOSS_NCCL_LIBRARY}")
    target_include_directories(gptoss_cuda PUBLIC ${GPTOSS_NCCL_INCLUDE})
    target_link_libraries(gptoss_cuda PUBLIC ${GPTOSS_NCCL_LIBRARY})
    target_compile_definitions(gptoss_cuda PUBLIC GPTOSS_HAVE_NCCL=1)
  else()
    message(STATUS "gptoss: NCCL not found; comm \"nccl\" is a stub in this build")
  endif()
endif()
