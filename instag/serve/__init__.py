"""Serving the tagger: vLLM's own OpenAI-compatible server with the adapter under a stable name."""
