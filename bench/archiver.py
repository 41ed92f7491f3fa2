"""The archiving process of the download benchmark: one ``worker.outbound.download.download_into``.

``python -m bench.archiver URL DEST`` imports everything, prints ``ready`` and waits for a line
on stdin, so the parent can sample its idle RSS; then downloads URL to DEST exactly as the
archiver does (temp file, sha256, fsync, rename) and prints one JSON line: bytes, sha256, the
seconds the call took (interpreter start-up and imports excluded, as curl's ``time_total``
excludes its own) and the CPU time it used.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from worker.outbound.download import download_into
from worker.outbound.netguard import AllowList
from worker.storage.local import LocalStorage


def main(argv: list[str]) -> int:
    url, dest = argv[0], Path(argv[1])
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    started, cpu = time.perf_counter(), time.process_time()
    allow = AllowList.parse(urlsplit(url).hostname or "")  # the local gateway
    upload = LocalStorage(dest.parent).open(dest.name)
    got = download_into(url, upload, deadline=time.time() + 600, max_attempts=1, allow=allow)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    result = {"bytes": got.bytes, "sha256": got.sha256, "seconds": seconds, "cpu_seconds": cpu}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
