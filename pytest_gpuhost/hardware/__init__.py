"""The hardware tier: HBM, PCIe, GPU-to-GPU and NCCL measured against floors (issue 14)."""
