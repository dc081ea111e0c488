"""Engines turn a chat request into a stream of deltas. Heavy imports stay inside each engine."""
