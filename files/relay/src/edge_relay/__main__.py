import sys

from edge_relay.cli import main

sys.exit(main())
