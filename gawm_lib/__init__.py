"""gawm: Generative AI Workload Modeling, a research workbench for AI inference on Kubernetes.

Importing the package has no side effects: submodules are imported where they are used.
"""

__version__ = "0.1.0"
