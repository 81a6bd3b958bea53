"""Full results in an object store: one Parquet file per table and a JSON manifest, per attempt.

The object's address (`ResultRef.key`, the `<task_id>/<attempt>-<nonce>` prefix) goes into the
`completed` event, in the same script call that records the outcome; an upload whose outcome was
never recorded (a crash, a lost claim) is an orphan that `collect_orphans` (in
consumers/maintenance/result_retention.py) deletes after a grace period. Tables are columnar and
typed; `detail_of` rebuilds the JSON the API served before results left Redis, byte for byte in
shape.

- `store`: ResultStore (upload, manifest, whole files and byte ranges, seekable readers, listing,
  deletion) and the layout under the store's root.
- `location`: open_results (file://, s3://, memory:// URLs) and results_for (from the settings).
- `encoding`: the stored format (manifest version, Parquet files) and CSV/JSON renderings.
- `shape`: the result's JSON detail split into tables and back, and a sweep summary's top rows.
- `query`: filtered, sorted, paged scans of a sweep table (where/sort/limit).
- `errors`: ResultsError, ResultGone, QueryError.
"""

from orchestrator.storage.results.encoding import (
    MANIFEST,
    RESULT_SCHEMA_VERSION,
    ROW_GROUP_ROWS,
    TABLES,
    EncodedResult,
    encode_result,
    table_csv,
    table_json,
)
from orchestrator.storage.results.errors import QueryError, ResultGone, ResultsError
from orchestrator.storage.results.location import S3_OPTIONS, open_results, results_for
from orchestrator.storage.results.query import Condition, parse_sort, parse_where, scan
from orchestrator.storage.results.shape import TOP_ROWS, detail_of, tables_of_legacy, with_top_rows
from orchestrator.storage.results.store import ResultStore, StoredObject

__all__ = [
    "MANIFEST",
    "RESULT_SCHEMA_VERSION",
    "ROW_GROUP_ROWS",
    "S3_OPTIONS",
    "TABLES",
    "TOP_ROWS",
    "Condition",
    "EncodedResult",
    "QueryError",
    "ResultGone",
    "ResultStore",
    "ResultsError",
    "StoredObject",
    "detail_of",
    "encode_result",
    "open_results",
    "parse_sort",
    "parse_where",
    "results_for",
    "scan",
    "table_csv",
    "table_json",
    "tables_of_legacy",
    "with_top_rows",
]
