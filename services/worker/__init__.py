"""Worker service: runs user code for the jobs it can handle."""
