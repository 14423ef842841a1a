"""Files of run directories and exports, written atomically: a crash never leaves half a file
or half a directory where a reader looks.

A file is written to a temporary sibling, flushed to disk, then renamed over its name
(`os.replace`, atomic on POSIX): a reader sees the old content or the new, never a mix. A
directory (a SavedModel) is written into a temporary sibling `.NAME.partial-PID-XXXX` and
renamed into place only once complete; a partial directory left by a killed process is
removed by the next writer of the same name.
"""

import contextlib
import errno
import glob
import json
import os
import shutil
import socket
import tempfile
import zipfile


class DamagedFileError(ValueError):
    """A file keras_llm reads is truncated, altered or not what its name says; the message
    names the file, what is wrong and how to get a good one back."""


def _write_atomically(path, data, mode):
    path = os.fspath(path)
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def write_json(path, value):
    """Writes `value` as indented JSON to `path` via a temporary file and `os.replace`."""
    _write_atomically(path, json.dumps(value, indent=2), "w")


def write_text(path, text):
    """Writes the str `text` (UTF-8) to `path` atomically."""
    _write_atomically(path, text, "w")


def write_bytes(path, data):
    """Writes the bytes `data` to `path` atomically."""
    _write_atomically(path, data, "wb")


def read_json(path):
    """Returns the JSON value stored at `path`.

    Raises:
        ValueError: the file is not valid JSON (truncated or altered); the message names it.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
        raise DamagedFileError(
            f"{path} is not valid JSON ({error}): the file is truncated or altered. Restore it "
            "or write it again (train or export the run again)."
        ) from None


def pid_alive(pid):
    """True if a process `pid` runs on this host (or exists under another user)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True


def hostname():
    """This machine's name, as lock files record it."""
    return socket.gethostname()


def _partial_prefix(path):
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial-")


def _remove_stale_partials(path):
    """Removes partial directories of `path` whose writer (the pid in the name) is dead."""
    for partial in glob.glob(_partial_prefix(path) + "*"):
        pid = partial[len(_partial_prefix(path)):].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path):
    """Yields a temporary sibling directory to fill; on success it replaces `path`.

    `path` is replaced by two renames (the old directory aside, the new one in), then the
    old one is deleted: `path` is either the old directory, whole, or the new one, whole
    (a crash between the two renames, a window of microseconds, leaves the old one beside
    it as `.NAME.old-*`). On an exception the temporary directory is removed and `path` is
    untouched.
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_partials(path)
    partial = tempfile.mkdtemp(prefix=f"{os.path.basename(_partial_prefix(path))}"
                               f"{os.getpid()}-", dir=parent)
    try:
        os.chmod(partial, 0o755)  # mkdtemp's 0700 would travel with the rename
        yield partial
        old = None
        if os.path.lexists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rename(path, os.path.join(old, "previous"))
        os.rename(partial, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def write_error(error, path):
    """An `OSError` for a failed write of `path`, whose message names the path and, for a
    full disk or a file-size limit, what to do; `error` is an `OSError` or TensorFlow's
    error for the same failure (its message is kept)."""
    number = getattr(error, "errno", None)
    if number is None:  # TensorFlow: "... File too large" / "No space left on device"
        text = str(error)
        for candidate in (errno.EFBIG, errno.ENOSPC, errno.EDQUOT):
            if os.strerror(candidate) in text:
                number = candidate
    reason = os.strerror(number) if number else str(error).strip().splitlines()[-1]
    hint = ""
    if number in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        hint = " Free disk space (or raise the file-size limit) and run the command again."
    return OSError(number or errno.EIO, f"Cannot write {path}: {reason}.{hint}")


def save_keras_model(model, path):
    """`model.save(path)` into a temporary sibling, then `os.replace`: the file at `path`
    is the previous model or the new one, whole, even if the disk fills up meanwhile.

    Raises:
        OSError: the write failed; the message names `path` (see `write_error`).
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, f".{name}.partial-{os.getpid()}.keras")
    try:
        model.save(temporary)
        os.replace(temporary, path)
    except OSError as error:
        raise write_error(error, path) from error
    finally:
        with contextlib.suppress(OSError):
            os.remove(temporary)


def load_keras_model(path, compile=True):
    """`keras.models.load_model(path)` with Keras' `safe_mode` on (no lambda or other code is
    deserialised), after checking the archive: a truncated or altered `.keras` file is one
    `DamagedFileError` naming it, not a misleading error from inside Keras ("File not
    found") nor a model with other weights.

    Every member's CRC-32 is checked (`ZipFile.testzip`), so one changed byte is caught.

    Raises:
        FileNotFoundError: no file at `path`.
        DamagedFileError: not a complete zip archive, or a member fails its CRC-32.
        ValueError: Keras cannot build a model from it (e.g. `safe_mode` refuses a lambda);
            the message names the file and Keras' reason.
    """
    import keras

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No Keras model file at {path!r}.")
    damaged = (f"{path} is damaged (truncated or altered) and cannot be loaded: {{}}. "
               "Restore it from a copy, or train the run again.")
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise DamagedFileError(
            damaged.format(f"not a complete .keras (zip) archive ({error})")
        ) from None
    if bad_member is not None:
        raise DamagedFileError(damaged.format(f"{bad_member} fails its CRC-32 check"))
    try:
        return keras.models.load_model(path, compile=compile, safe_mode=True)
    except (ValueError, KeyError, TypeError, OSError) as error:
        # Whole archive, wrong content: e.g. code that safe_mode refuses to deserialise.
        raise ValueError(f"{path} cannot be loaded as a Keras model: {type(error).__name__}: "
                         f"{error}") from error
