# tp (issue 5): tensor parallelism over N shards. test_tp (tests/unit) checks the slices, the
# numerics of N = 2 and 4 against N = 1, and gptoss-shardd in a world of 2 over the protocol;
# here tiny-a's test vectors run through gptoss-run --tp 2 (rank 0 plus a forked rank 1 on a
# shm comm): strict (rel L2 < 1e-4 against the reference), one-shot and chunked prefill.
# N = 4 cannot split tiny-a (2 KV heads) and is refused (test_tp checks the message).
if(TARGET test_tp)
  set_tests_properties(test_tp PROPERTIES TIMEOUT 120)
endif()
find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND AND TARGET gptoss-run)
  set(_ev ${CMAKE_SOURCE_DIR}/tests/tools/engine_vectors.py)
  set(_tiny ${CMAKE_SOURCE_DIR}/tests/fixtures/tiny-a)
  add_test(NAME engine_vectors_tiny_a_tp2
           COMMAND ${Python3_EXECUTABLE} ${_ev} $<TARGET_FILE:gptoss-run> ${_tiny} --strict
                   -- --tp 2 --threads 1)
  add_test(NAME engine_vectors_tiny_a_tp2_chunked
           COMMAND ${Python3_EXECUTABLE} ${_ev} $<TARGET_FILE:gptoss-run> ${_tiny} --strict
                   -- --tp 2 --threads 1 --prefill-chunk 3 --kv-dtype f32)
  set_tests_properties(engine_vectors_tiny_a_tp2 engine_vectors_tiny_a_tp2_chunked
                       PROPERTIES TIMEOUT 120)
endif()
