"""A stand-in for vLLM, for tests only (tests/test_deployments_vllm.py puts this folder on the
trainers' PYTHONPATH): real vLLM needs a CUDA GPU, which the test machines lack. Only
`vllm serve` (its OpenAI server) is here, written from vLLM 0.31.0's source; see
entrypoints/cli/main.py."""

__version__ = "0.31.0+standin"
