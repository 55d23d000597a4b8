"""The postgres driver's fence table: the fencing token the last promotion of a cluster ran under, on its primary.

``hybridops_fence`` holds one row: the token, the site promoted, the run, and when. apply() writes it on the new
primary right after ``pg_promote`` by an upsert that never lowers the token (the row lock makes that one atomic
step): a write under an older token changes nothing and is reported as Fenced. Replicas copy the row, so a site's
fence table says which leadership last promoted the timeline it is on.

Before promoting, apply() reads the fence of the target (what it replicated) and of every other site it can reach,
and refuses (Fenced, whatever ``force`` says) when one holds a newer token than the run's: a newer leader promoted
there. That read is check-then-write: ``pg_promote`` itself takes no condition.
"""

from __future__ import annotations

TABLE = "hybridops_fence"

# max() answers one row whether the table is empty or not; to_regclass() tells whether it exists (a replica of a
# primary that was never promoted by us has none).
EXISTS_SQL = f"SELECT to_regclass('{TABLE}') IS NOT NULL"
READ_SQL = f"SELECT max(token) FROM {TABLE}"
CREATE_SQL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (one boolean PRIMARY KEY DEFAULT true CHECK (one), token bigint NOT NULL, "
    "site text NOT NULL, run_id text NOT NULL, at timestamptz NOT NULL)"
)
WRITE_SQL = f"""
INSERT INTO {TABLE} AS fence (token, site, run_id, at) VALUES (%s, %s, %s, clock_timestamp())
ON CONFLICT (one) DO UPDATE SET token = EXCLUDED.token, site = EXCLUDED.site, run_id = EXCLUDED.run_id, at = EXCLUDED.at
WHERE fence.token <= EXCLUDED.token
RETURNING token
"""
