"""Where a job runs: local subprocess or Hugging Face Jobs."""
