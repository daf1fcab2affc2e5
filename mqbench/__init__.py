"""mqbench: quantization, PTQ, benchmark tables and networks (MQ-Bench-C10, NAS-Bench-201)."""
