"""Test-only fault injection: a poison frame that makes a Reconstruct replica exit, as a crash would.

Unreachable from production configuration because it needs BOTH of:
- `TRIPOSR_TEST_FAULTS=poison-exit` in the replica process's environment. The name lies outside the
  `TRIPOSR_SERVE_` settings prefix, so no setting, builder argument, CLI flag or HTTP field can set it;
  serve_config.yaml and deploy/rayservice.yaml never set it (tests/serve/test_config.py checks), only the
  chaos tests do, through the deployment's runtime_env;
- a frame at least 25% of whose pixels are exactly magenta (255, 0, 255), the marker the tests upload.
Either alone does nothing. The variable is read once, when the replica starts.
"""

from __future__ import annotations

import logging
import os

import numpy as np

logger = logging.getLogger(__name__)

ENV_VAR = "TRIPOSR_TEST_FAULTS"
POISON_EXIT = "poison-exit"
POISON_RGB = (255, 0, 255)
POISON_SHARE = 0.25


def armed() -> bool:
    """Whether this process was started by a test that asked for poison frames to kill it."""
    return os.environ.get(ENV_VAR) == POISON_EXIT


def is_poison(frame: np.ndarray) -> bool:
    """The test marker: uint8 (H, W, 3) frame with >= 25% pixels exactly (255, 0, 255)."""
    return bool((np.asarray(frame) == POISON_RGB).all(axis=-1).mean() >= POISON_SHARE)


def exit_on_poison(frames: list[np.ndarray], job_ids: list[str]) -> None:
    """Exit the process at once (no clean-up, like a segfault) when armed and a frame carries the marker."""
    for frame, job_id in zip(frames, job_ids, strict=True):
        if is_poison(frame):
            logger.error("job_id=%s test fault: poison frame, replica exits (pid %d)", job_id, os.getpid())
            os._exit(17)
