"""BitingLip: an LLM serving platform in one process."""

__version__ = "0.1.0"
