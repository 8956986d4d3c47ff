"""instag: open-set, fine-grained intent tagging of instruction-tuning data (InsTag)."""

__version__ = "0.1.0"
