"""The ``orch`` command: ``main`` parses verbs and returns exit codes; ``output`` formats what they show."""
