"""Mutation testing of the core's decision logic (mutmut): ``python -m tests.mutation``, ``make mutation``."""
