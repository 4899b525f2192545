"""How graphs run on one machine: several nodes in one process (container) and the memory they need (budget)."""
