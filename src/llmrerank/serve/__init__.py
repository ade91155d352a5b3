"""llmrerank serve: the HTTP rerank service (routes, dialects, micro-batching)."""
