import sys

from divebatch.cli import main

sys.exit(main())
