"""Process-wide settings that must be in place before TensorFlow or Keras is imported.

Kept in its own module so that `import keras_llm` sets them first, and so that the rule
"respect what the user already chose" lives in one place.
"""

import contextlib
import os
import sys


@contextlib.contextmanager
def _silenced_stderr_fd():
    """Sends file descriptor 2 to /dev/null for the duration (C++ writes bypass sys.stderr)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (some embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def configure_environment():
    """Choose the TensorFlow backend and quiet TensorFlow's C++ start-up lines.

    Both are defaults only: a `KERAS_BACKEND` the user already set is kept, and a user who
    set `TF_CPP_MIN_LOG_LEVEL` (e.g. to 0) sees TensorFlow's start-up notices as usual.
    TensorFlow 2.21 writes its oneDNN and CUDA start-up lines through absl before its log
    level applies, so the variable alone does not hide them: the import happens here with
    the C-level stderr sent to /dev/null (Python exceptions still propagate).
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if os.environ["KERAS_BACKEND"] != "tensorflow":
        return
    with _silenced_stderr_fd():
        import tensorflow as tf

        # Probing the GPU platform here prints its "no CUDA driver" error into /dev/null
        # instead of at the first operation. It does not initialize the runtime, so logical
        # devices can still be configured afterwards.
        tf.config.list_physical_devices("GPU")
