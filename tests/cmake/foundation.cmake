# Foundation tests that run the tools as a user would.
add_test(NAME inspect_tiny_a COMMAND gptoss-inspect ${GPTOSS_FIXTURES}/tiny-a)
set_tests_properties(inspect_tiny_a PROPERTIES TIMEOUT 60
  PASS_REGULAR_EXPRESSION "ok: .* is a valid gpt-oss model folder")
# An invalid folder (the fixtures root has no config.json) must fail with a reason.
add_test(NAME inspect_invalid COMMAND gptoss-inspect ${GPTOSS_FIXTURES})
set_tests_properties(inspect_invalid PROPERTIES TIMEOUT 60 WILL_FAIL TRUE)
add_test(NAME inspect_invalid_reason COMMAND sh -c "'$<TARGET_FILE:gptoss-inspect>' '${GPTOSS_FIXTURES}' 2>&1 | grep -q 'invalid model folder: .*config.json'")
set_tests_properties(inspect_invalid_reason PROPERTIES TIMEOUT 60)
