"""Results on their way out: destination senders and the durable outbox."""
