"""Celery side of kling-chain: submits steps, follows tasks, archives videos.

``celery -A worker worker`` finds the application here.
"""
