import sys

from tickertune.cli import main

sys.exit(main())
