"""Feast's own SDK against a Shoal node, through Feast's `remote` online store.

Usage: feast_sdk_check.py HTTP_ADDR WORK_DIR. The node must hold a collection with a feature
view `driver_stats` (conv_rate: double, trips: int64). Defines the matching Feast entity (join
key `id`) and feature view, writes rows through `FeatureStore.write_to_online_store`, reads
them back with `get_online_features`, and exits non-zero on any mismatch. With SHOAL_API_KEY
in the environment, Feast's client sends it.
"""

import os
import sys
from datetime import datetime, timedelta, timezone

import pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.repo_config import RepoConfig
from feast.types import Float64, Int64

http, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
source_path = os.path.join(work, "driver_stats.parquet")
now = datetime.now(timezone.utc).replace(microsecond=0)
pd.DataFrame(
    {"id": [1001], "event_timestamp": [now], "conv_rate": [0.0], "trips": [0]}
).to_parquet(source_path)

# With SHOAL_API_KEY set, Feast's client sends it as `Authorization: Bearer` (its OIDC client
# settings take a static token from an environment variable).
auth = {"type": "oidc", "token_env_var": "SHOAL_API_KEY"} if os.environ.get("SHOAL_API_KEY") else None
config = RepoConfig(
    project="shoal_check",
    registry=os.path.join(work, "registry.db"),
    provider="local",
    online_store={"type": "remote", "path": f"http://{http}"},
    entity_key_serialization_version=3,
    **({"auth": auth} if auth else {}),
)
driver = Entity(name="driver", join_keys=["id"], value_type=ValueType.INT64)
stats = FeatureView(
    name="driver_stats",
    entities=[driver],
    ttl=timedelta(days=1),
    schema=[Field(name="conv_rate", dtype=Float64), Field(name="trips", dtype=Int64)],
    source=FileSource(path=source_path, timestamp_field="event_timestamp"),
)
store = FeatureStore(config=config)
store.apply([driver, stats])

store.write_to_online_store(
    "driver_stats",
    pd.DataFrame(
        {
            "id": [1001, 1002],
            "event_timestamp": [now - timedelta(minutes=5), now - timedelta(minutes=5)],
            "created": [now, now],
            "conv_rate": [0.5, 0.25],
            "trips": [10, 20],
        }
    ),
)
# A newer row for 1001 wins; an older one for 1002 does not.
store.write_to_online_store(
    "driver_stats",
    pd.DataFrame(
        {
            "id": [1001, 1002],
            "event_timestamp": [now, now - timedelta(hours=1)],
            "created": [now, now],
            "conv_rate": [0.75, 0.99],
            "trips": [11, 99],
        }
    ),
)

got = store.get_online_features(
    features=["driver_stats:conv_rate", "driver_stats:trips"],
    entity_rows=[{"id": 1001}, {"id": 1002}, {"id": 1003}],
).to_dict()
want = {
    "id": [1001, 1002, 1003],
    "conv_rate": [0.75, 0.25, None],
    "trips": [11, 20, None],
}
if got != want:
    print(f"feast read back {got}, expected {want}", file=sys.stderr)
    sys.exit(1)
print("feast sdk check passed:", got)
