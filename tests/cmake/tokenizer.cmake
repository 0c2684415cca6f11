# tokenizer: runs the fixture files through the gptoss-tokenize CLI (ordinary, special
# and decode modes) and compares with the expected ids; see tests/tokenizer_cli.py.
find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND AND TARGET gptoss-tokenize)
  add_test(NAME tokenizer_cli
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_SOURCE_DIR}/tests/tokenizer_cli.py
                   $<TARGET_FILE:gptoss-tokenize> ${GPTOSS_TOKENIZER_DIR}
                   ${GPTOSS_FIXTURES}/tokenizer)
  set_tests_properties(tokenizer_cli PROPERTIES TIMEOUT 120)
endif()
