"""Batch inspection of unlabelled images (``python -m pipeline inspect``) on Ray Data."""
