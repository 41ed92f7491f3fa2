"""The Celery task names: what the web process and the worker agree on, and nothing else.

The web enqueues by name, so it needs no worker code to do so. The names are on the wire:
changing one strands the messages queued under the old one.
"""

SUBMIT_STEP = "kc.submit_step"  # (chain_id, index): send or reconcile a step's create
# (chain_id, index[, candidate task id[, planned news_at]]): query a step's task
REFRESH_STEP = "kc.refresh_step"
IMPORT_TASK = "kc.archive_task"  # (kind, task_id, origin): confirm an outside task, record videos
ARCHIVE_VIDEO = "kc.archive_video"  # (video_id,): a recorded video, a chain's or not, into storage
SUPERSEDE = "kc.supersede"  # (chain_id,): ARCHIVE_KEEP=final: delete what its final video holds
NOTIFY = "kc.notify"  # (event,): POST one signed event
ANNOUNCE_END = "kc.announce_end"  # (chain_id,): the web ended a chain (a cancel): announce it
SWEEP = "kc.sweep"  # (): hand out owed work, nearest deadline first
