# integration: HTTP tests of the real gptoss-gateway + gptoss-shardd on a tiny generated model
# with the official openai npm client (tests/integration/run_http.sh; needs node >= 18, npm
# with registry access the first time, curl, python3).
find_program(GPTOSS_NODE node)
find_program(GPTOSS_NPM npm)
find_program(GPTOSS_CURL curl)
if(GPTOSS_NODE AND GPTOSS_NPM AND GPTOSS_CURL AND TARGET gptoss-gateway AND TARGET gptoss-shardd
   AND TARGET gptoss-mkmodel)
  add_test(NAME integration_http
           COMMAND sh ${CMAKE_SOURCE_DIR}/tests/integration/run_http.sh ${CMAKE_BINARY_DIR}
                   ${GPTOSS_TOKENIZER_DIR})
  set_tests_properties(integration_http PROPERTIES TIMEOUT 300)
else()
  message(STATUS "gptoss: integration_http skipped (needs node, npm, curl and the gateway/shardd)")
endif()
