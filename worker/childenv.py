"""The environment a training process gets: what it needs to run, nothing it could leak.

The child runs code and data a client chose (a model's tokenizer, a chat template, rows of
text); whatever is in its environment could end up in a log, an artifact or a crash
message. It never talks to SQL or the artifact store (the runner moves its files in and
out), so it gets no TUNEFORGE_* setting (the signing secret, the database URL) and no
cloud credentials: an allowlist of names, not a denylist, so a secret added to the
worker's environment later stays out by default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# Exact names a Python/ML process needs to find its interpreter, libraries, caches and GPUs.
KEEP_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
    "LD_LIBRARY_PATH", "LD_PRELOAD", "VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS",
    # A job's W&B integration logs with the worker's own W&B account, never a client's: the key,
    # the server (self-hosted W&B), online/offline, where runs are written locally. Not
    # WANDB_PROJECT / WANDB_ENTITY / WANDB_TAGS etc.: where a run goes is the job's choice.
    "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE", "WANDB_DIR", "WANDB_CACHE_DIR",
    "WANDB_CONFIG_DIR", "WANDB_DATA_DIR",
    # The two TUNEFORGE_* names a training process reads: the host's one model cache
    # (Settings.model_cache; huggingface_hub's own HF_HUB_CACHE / HF_HUB_OFFLINE / HF_ENDPOINT
    # / HF_TOKEN pass as HF_*), and the test-only fault hook of core.training.faults, passed
    # on only when the worker itself was started with it.
    "TUNEFORGE_MODEL_CACHE", "TUNEFORGE_INJECT_OOM",
})
# Prefixes of the same: locale, Python, the Hugging Face stack (model cache, offline mode, a
# hub token for gated models), CUDA / NCCL / torch tuning, coverage of the test suite.
KEEP_PREFIXES = (
    "LC_", "PYTHON", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_", "BNB_", "ACCELERATE_",
    "CUDA_", "NVIDIA_", "NCCL_", "TORCH", "PYTORCH_", "MKL_", "OPENBLAS_", "XDG_", "CONDA_", "COV_CORE_", "COVERAGE_",
)


def child_environment(environ: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """`environ` (default os.environ) reduced to the allowlist, plus `extra`."""
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items() if k in KEEP_NAMES or k.startswith(KEEP_PREFIXES)}
    env.update(extra)
    return env
