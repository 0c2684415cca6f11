# CUDA backend tests (issue 6): every CUDA op against the CPU reference on random data (the MoE
# op and gather_rows included), the GPU sampler against shardd/sampling.c, CUDA-graph replays, and
# the whole forward pass (engine on CUDA vs engine on the CPU). A no-op unless the top-level build
# created gptoss_cuda (GPTOSS_CUDA=ON/AUTO with a toolkit). Without a GPU the tests exit 77,
# which ctest reports as skipped, never as passed.
if(TARGET gptoss_cuda)
  # kernels/cuda/weights_cuda.cu (the device weight loader) reads shardd/weights.h's structs; it
  # calls no shardd code, so gptoss_cuda still links without gptoss_shardd.
  target_include_directories(gptoss_cuda PRIVATE ${CMAKE_SOURCE_DIR}/shardd)

  # shardd/sampling.c is compiled in (the reference of the GPU sampler) rather than linking all
  # of gptoss_shardd, so the test builds on a GPU host without ZeroMQ. gptoss_common comes after
  # gptoss_cuda, which logs through it.
  add_executable(test_cuda_ops ${CMAKE_SOURCE_DIR}/tests/cuda/test_cuda_ops.c
                               ${CMAKE_SOURCE_DIR}/shardd/sampling.c)
  target_include_directories(test_cuda_ops PRIVATE ${CMAKE_SOURCE_DIR}/tests/unit
                                                   ${CMAKE_SOURCE_DIR}/shardd)
  target_link_libraries(test_cuda_ops PRIVATE gptoss_cuda gptoss_kernels gptoss_common)
  add_test(NAME test_cuda_ops COMMAND test_cuda_ops)
  set_tests_properties(test_cuda_ops PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 600)

  # The whole forward pass: the engine's sources are compiled in (engine, KV cache, weights,
  # comm_single) instead of linking gptoss_shardd, for the same reason. Needs gptoss_common
  # (cJSON, PCRE2, pthreads, libm), gptoss_kernels (the CPU reference) and gptoss_cuda (CUDA
  # runtime); gptoss-mkmodel (run at test time for the 20b-shaped model) is built alongside.
  set(_eng_src ${CMAKE_SOURCE_DIR}/shardd/engine.c ${CMAKE_SOURCE_DIR}/shardd/kvcache.c
               ${CMAKE_SOURCE_DIR}/shardd/kvalloc.c ${CMAKE_SOURCE_DIR}/shardd/weights.c
               ${CMAKE_SOURCE_DIR}/shardd/comm_single.c)
  add_executable(test_cuda_engine ${CMAKE_SOURCE_DIR}/tests/cuda/test_cuda_engine.c ${_eng_src})
  target_include_directories(test_cuda_engine PRIVATE ${CMAKE_SOURCE_DIR}/tests/unit
                                                      ${CMAKE_SOURCE_DIR}/shardd)
  target_link_libraries(test_cuda_engine PRIVATE gptoss_cuda gptoss_kernels gptoss_common)
  add_test(NAME test_cuda_engine COMMAND test_cuda_engine)
  set_tests_properties(test_cuda_engine PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 900
    ENVIRONMENT "GPTOSS_FIXTURES=${GPTOSS_FIXTURES};GPTOSS_BIN=${CMAKE_BINARY_DIR}")
  if(TARGET gptoss-mkmodel)
    add_dependencies(test_cuda_engine gptoss-mkmodel)
  endif()

  # gptoss-bench engine --backend cuda: the bench links the CUDA backend (GPTOSS_HAVE_CUDA=1
  # comes with it) when there is one.
  if(TARGET gptoss-bench)
    target_link_libraries(gptoss-bench PRIVATE gptoss_cuda)
  endif()
endif()
