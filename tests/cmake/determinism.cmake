# determinism: bitwise batch invariance of the engine's logits (tests/unit/test_determinism.c):
# the same tokens give the same logits alone or batched, in one chunk or many, decoded or
# recomputed, on any KV blocks, at tp 1 and (compared with itself) tp 2. Seeded streams rely on
# it (DESIGN.md, "Why the gateway drives every step").
if(TARGET test_determinism)
  set_tests_properties(test_determinism PROPERTIES TIMEOUT 600)
endif()
