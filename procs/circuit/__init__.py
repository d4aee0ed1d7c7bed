"""Circuit Process: a block of leaf processes, run decomposed or fused."""
