"""vectorhive bench: load vectors through the API, then measure search.

Against a running server (--url/--key; add --database-url for the raw-SQL comparison) or, by
default, a temporary server on a temporary embedded database that is removed afterwards.

- `target.py`: the server measured (a running one, or a temporary one with its own tenant and key)
- `api.py`: the measurements through the API (upserts, search latency, QPS, recall)
- `raw_sql.py`: the raw-SQL yardstick on the same database and the paired comparison with it
- `run.py`: the data, the phases in order, the result and its output

tests/bench/ reuses `start_temporary_server` and `print_result` for its own benchmarks.
"""

from service.bench.run import main, print_result
from service.bench.target import Target, start_temporary_server

__all__ = ["Target", "main", "print_result", "start_temporary_server"]
