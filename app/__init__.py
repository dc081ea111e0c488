"""A browser chat for Qwen vision-language models."""
