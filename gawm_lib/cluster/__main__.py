"""``python -m gawm_lib.cluster --write k8s/base`` (or ``--check k8s/base``): the base manifests from the renderer."""

import sys

from gawm_lib.cluster.manifests import main

sys.exit(main())
