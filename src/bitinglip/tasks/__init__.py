"""The durable job queue for inference work (table `tasks`)."""
