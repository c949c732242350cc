"""Training: offline corpus, synthetic long-document QA, and the trainer."""
