"""`python -m keras_llm` runs the same command line as `keras-llm`."""

import sys

from keras_llm.cli import main

if __name__ == "__main__":
    sys.exit(main())
