import sys

from controller import cli

sys.exit(cli.main())
