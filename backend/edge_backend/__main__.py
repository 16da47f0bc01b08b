import sys

from edge_backend.cli import main

sys.exit(main())
