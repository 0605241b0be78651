"""``python -m pacsim`` (and ``torchrun ... -m pacsim train ...``): the command line."""

import sys

from .cli import main

sys.exit(main())
