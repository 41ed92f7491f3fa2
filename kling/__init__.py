"""Client for the Kling task API: create and query video tasks, map failures to types.

::

    from kling.auth import auth_from
    from kling.client import KlingClient
    from kling.models import ExtendRequest, TaskKind

    client = KlingClient("https://api-singapore.klingai.com", auth_from(
        api_key=None, access_key="AK...", secret_key="SK..."), send_parent_task_id=False)
    task = client.create(
        TaskKind.VIDEO_EXTEND, ExtendRequest(video_id="...", external_task_id="chain-1-step-2")
    )

``kling.errors`` holds the one error hierarchy; ``kling.fake`` is the fake gateway.
"""
