import sys

from actalign.cli import main

sys.exit(main())
