#!/bin/sh
# llama-cpp-python restoring a prompt prefix from kvtier in a second process (client/python/
# tests/test_llama_cpp.py), apart from the other Python tests: it loads a real model twice.
exec "$(dirname "$0")/test_pytest.sh" client/python/tests/test_llama_cpp.py
