"""``python -m kling.fake``: run the fake Kling gateway."""

import sys

from kling.fake.server import main

if __name__ == "__main__":
    sys.exit(main())
