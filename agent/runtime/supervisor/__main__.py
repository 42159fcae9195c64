"""``python -m agent.runtime.supervisor --root ROOT``: start the keeper (see ``keeper.py``)."""

import sys

from agent.runtime.supervisor import keeper

sys.exit(keeper.main())
