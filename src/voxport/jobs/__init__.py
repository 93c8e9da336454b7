"""Long-form and batch speech jobs: a durable store, a runner at lower priority than live requests, and
signed webhooks."""
