# Foundation tests that run the tools as a user would.
add_test(NAME inspect_tiny_a COMMAND gptoss-inspect ${GPTOSS_FIXTURES}/tiny-a)
set_tests_properties(inspect_tiny_a PROPERTIES TIMEOUT 60
  PASS_REGULAR_EXPRESSION "ok: .* is a valid gpt-oss model folder")
# An invalid folder (the fixtures root has no config.json) must fail with a reason.
add_test(NAME inspect_invalid COMMAND gptoss-inspect ${GPTOSS_FIXTURES})
set_tests_properties(inspect_invalid PROPERTIES TIMEOUT 60 WILL_FAIL TRUE)
add_test(NAME inspect_invalid_reason COMMAND sh -c "'$<TARGET_FILE:gptoss-inspect>' '${GPTOSS_FIXTURES}' 2>&1 | grep -q 'invalid model folder: .*config.json'")
set_tests_properties(inspect_invalid_reason PROPERTIES TIMEOUT 60)
# A scripted model (DESIGN.md, Testing): the real engine must produce exactly the script.
set(_mk $<TARGET_FILE:gptoss-mkmodel>)
set(_run $<TARGET_FILE:gptoss-run>)
set(_tok ${CMAKE_BINARY_DIR}/fixtures/tokenizer)
set(_script "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Tokyo\"}<|call|>")
add_test(NAME mkmodel_script COMMAND sh -c "d=$(mktemp -d) && '${_mk}' --out $d/m --preset tiny --tokenizer '${_tok}' --script '${_script}' && '${_run}' --model $d/m --chat 'weather?' --temperature 0 --max-tokens 64 > $d/out 2>/dev/null; rc=$?; cat $d/out; grep -qxF '${_script}' $d/out; g=$?; cp $d/m/tokenizer.json /dev/null || g=1; rm -rf $d; [ $rc -eq 0 ] && [ $g -eq 0 ]")
set_tests_properties(mkmodel_script PROPERTIES TIMEOUT 120)
# A token with two successors cannot be scripted: refused with a message.
add_test(NAME mkmodel_script_conflict COMMAND sh -c "d=$(mktemp -d); '${_mk}' --out $d/m --preset tiny --tokenizer '${_tok}' --script '<|end|>a<|end|>b' 2>&1 | grep -q 'only one successor'; g=$?; rm -rf $d; exit $g")
set_tests_properties(mkmodel_script_conflict PROPERTIES TIMEOUT 60)
