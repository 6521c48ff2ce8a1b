"""``python -m engine.sim_convert``: the path earlier READMEs gave for ``policy-engine convert``."""

import sys

from engine.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
