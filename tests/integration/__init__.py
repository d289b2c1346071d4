"""End-to-end tests: the real ``python -m eg`` process in front of real origin processes."""
