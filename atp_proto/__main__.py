"""``python -m atp_proto`` is the ``atp`` command."""

import sys

from atp_proto.cli import main

sys.exit(main())
