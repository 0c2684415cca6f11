# engine: tiny-a test vectors through gptoss-run (issue 7).
# Strict (rel L2 < 1e-4) with the exact fp32 KV cache, one-shot and chunked prefill,
# the AVX2/AVX-512 path and the portable path; the bf16 KV cache must keep argmax and
# greedy tokens (non-strict level).
find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND AND TARGET gptoss-run)
  set(_ev ${CMAKE_SOURCE_DIR}/tests/tools/engine_vectors.py)
  set(_tiny ${CMAKE_SOURCE_DIR}/tests/fixtures/tiny-a)
  add_test(NAME engine_vectors_tiny_a
           COMMAND ${Python3_EXECUTABLE} ${_ev} $<TARGET_FILE:gptoss-run> ${_tiny} --strict)
  add_test(NAME engine_vectors_tiny_a_chunked
           COMMAND ${Python3_EXECUTABLE} ${_ev} $<TARGET_FILE:gptoss-run> ${_tiny} --strict
                   -- --prefill-chunk 3 --threads 2)
  add_test(NAME engine_vectors_tiny_a_generic
           COMMAND ${Python3_EXECUTABLE} ${_ev} $<TARGET_FILE:gptoss-run> ${_tiny} --strict
                   -- --isa generic --threads 1)
  add_test(NAME engine_vectors_tiny_a_kv_bf16
           COMMAND ${Python3_EXECUTABLE} ${_ev} $<TARGET_FILE:gptoss-run> ${_tiny}
                   -- --kv-dtype bf16)
  set_tests_properties(engine_vectors_tiny_a engine_vectors_tiny_a_chunked
                       engine_vectors_tiny_a_generic engine_vectors_tiny_a_kv_bf16
                       PROPERTIES TIMEOUT 120)
endif()
