"""``python -m gawm_lib.loadgen SPEC.json --result RESULT.json``: one load process (:mod:`gawm_lib.loadgen.engine`)."""

import sys

from gawm_lib.loadgen.engine import main

sys.exit(main())
