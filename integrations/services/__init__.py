"""Business logic. Views, tasks, webhooks and commands parse input and call these modules."""
