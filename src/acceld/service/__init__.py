"""`acceld serve`: Harbor webhook intake, rules, durable task queue, workers, management API, reconcile."""
