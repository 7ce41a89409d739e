"""The host's shell vocabulary: every command built and quoted here, every answer parsed back; no I/O."""
