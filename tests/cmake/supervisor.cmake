# supervisor: the gateway's shard supervisor against real processes (tests/integration/
# run_supervisor.sh): kill -9 and SIGSTOP of a shard mid-stream with seeded streams that must
# equal an undisturbed run, crash loop -> DEGRADED, drain/resume/restart-shard/switch-profile/
# shutdown --graceful through gptoss-ctl. Needs node >= 18, npm (first run), curl, python3.
find_program(GPTOSS_NODE node)
find_program(GPTOSS_NPM npm)
find_program(GPTOSS_CURL curl)
if(GPTOSS_NODE AND GPTOSS_NPM AND GPTOSS_CURL AND TARGET gptoss-gateway AND TARGET gptoss-shardd
   AND TARGET gptoss-mkmodel AND TARGET gptoss-ctl)
  add_test(NAME integration_supervisor
           COMMAND sh ${CMAKE_SOURCE_DIR}/tests/integration/run_supervisor.sh ${CMAKE_BINARY_DIR}
                   ${GPTOSS_TOKENIZER_DIR})
  set_tests_properties(integration_supervisor PROPERTIES TIMEOUT 240)
else()
  message(STATUS "gptoss: integration_supervisor skipped (needs node, npm, curl, gateway, shardd, ctl)")
endif()
