"""The H200 study: replica scaling, rate sweeps, workload models and their tail on one lent NVIDIA H200 (README.md)."""
