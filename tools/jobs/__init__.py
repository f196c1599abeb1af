"""Job-side code: runs the same on this machine and on Hugging Face Jobs; imports no tunestep."""
