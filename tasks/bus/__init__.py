"""The event bus: typed events, publishing, subscriptions and the worker-side delivery of events."""
