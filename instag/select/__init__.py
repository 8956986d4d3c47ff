"""Tag normalization, diversity/complexity analysis, and complexity-first diverse selection."""
