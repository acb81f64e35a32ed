"""Running a sweep: variants, the sweep itself, executors, isolation, resume, the exclusion search."""
