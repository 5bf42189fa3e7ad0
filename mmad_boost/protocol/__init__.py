"""MMAD's benchmark protocol: the question file, settings, the prompt, answer parsing and scores."""
