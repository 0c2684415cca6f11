# control: test_control runs the real gptoss-ctl binary, so building the test builds it.
if(TARGET test_control AND TARGET gptoss-ctl)
  add_dependencies(test_control gptoss-ctl)
  set_tests_properties(test_control PROPERTIES TIMEOUT 120)
endif()
