import sys

from openlines.cli import main

sys.exit(main())
