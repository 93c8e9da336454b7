"""Adapters for other frameworks, each an optional extra imported only by whoever uses it."""
