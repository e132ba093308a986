"""llama-cpp-python with its prefix cache in kvtier: a second process restores the prefix a
first one computed, with logits identical to a full recompute and a lower time to first token.

Skips only when llama-cpp-python could not be built on this machine (the reason written by
scripts/py-venv.sh is shown); a missing model is a failure (`make test` fetches it)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import BUILD, REPO

MODEL = os.environ.get("KVT_ENGINE_MODEL",
                       os.path.join(REPO, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
WORKER = os.path.join(os.path.dirname(__file__), "llama_worker.py")


def _unavailable_reason():
    try:
        import llama_cpp  # noqa: F401
        return None
    except ImportError as e:
        why = os.path.join(BUILD, "py", "llama-unavailable")
        if os.path.exists(why):
            with open(why) as f:
                return "llama-cpp-python could not be built here: " + f.read().strip()
        return f"llama-cpp-python is not installed in this environment ({e})"


_reason = _unavailable_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")


def run_worker(daemon, out, mode):
    p = subprocess.run([sys.executable, WORKER, daemon.socket, MODEL, str(out), mode],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{mode} worker failed ({p.returncode}):\n{p.stderr[-4000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_second_process_restores_the_prefix(daemon, tmp_path):
    assert os.path.exists(MODEL), f"model {MODEL} missing: run ./scripts/fetch-model.sh models"
    first = run_worker(daemon, tmp_path, "first")
    second = run_worker(daemon, tmp_path, "second")
    assert first["pid"] != second["pid"]
    assert first["model_id"] == second["model_id"]

    # 600 tokens in chunks of 128: 4 chunks (512 tokens) stored, the partial one is not.
    assert first["tokens"] == 600 and first["stored_chunks"] == 4
    assert second["restored_tokens"] == 512

    cold_first = np.load(tmp_path / "first-cold.npy")
    cold_second = np.load(tmp_path / "second-cold.npy")
    restored = np.load(tmp_path / "second-restored.npy")
    assert restored.shape == cold_second.shape and restored.size > 1000
    # Bit for bit: the restored cells hold the bytes the first process computed.
    assert np.array_equal(restored, cold_second)
    assert np.array_equal(restored, cold_first)

    # 88 tokens evaluated instead of 600: the time to first token drops by far more than noise.
    assert second["ttft_restored_s"] < second["ttft_cold_s"] * 0.6, second

    # Llama.create_completion after a restore evaluates only the suffix, and says the same.
    assert second["generate_restored_tokens"] == 512
    assert second["generate_prompt_evals"] == 600 - 512
    assert second["generate_same_text"], second["text"]
    print(f"\nllama.cpp 600-token prompt: cold {second['ttft_cold_s'] * 1e3:.0f} ms, restored "
          f"from kvtier {second['ttft_restored_s'] * 1e3:.0f} ms")
