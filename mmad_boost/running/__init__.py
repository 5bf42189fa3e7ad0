"""Running a benchmark: the run loop and its executors, run folders and records, progress."""
