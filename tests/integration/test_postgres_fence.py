"""The postgres driver's fence table, against a real PostgreSQL primary and streaming replica (tests/testbed/postgres.py):
the promoted primary records the run's fencing token; a promotion is refused when the target's or another site's fence
table holds a newer one (even with force); the fence is never lowered."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hybridops_daemon.drivers.base import Fenced
from hybridops_daemon.drivers.postgres_fence import CREATE_SQL, TABLE, WRITE_SQL
from tests.integration.test_postgres_driver import driver_for, step
from tests.testbed.postgres import PgPair, Site


def fence_of(pair: PgPair, server: Site) -> list[tuple[object, ...]]:
    """The fence table's rows on ``server``: the testbed's primary is the driver's site onprem, its replica cloud."""
    return pair.sql(server, f"SELECT token, site, run_id FROM {TABLE}")


async def test_the_promoted_primary_records_the_token_and_a_stale_run_is_fenced(pg_pair: PgPair) -> None:
    driver = driver_for(pg_pair)
    pg_pair.stop_primary()

    result = await driver.apply(step())  # fencing token 7

    assert fence_of(pg_pair, "replica") == [(7, "cloud", "run-1")]
    assert result.log[-1].endswith(f"fence table {TABLE} holds fencing token 7 (run run-1)")
    assert (await driver.check(step())).observed["fencing_token"] == 7
    stale = replace(step(run_id="run-old"), fencing_token=5)
    with pytest.raises(Fenced, match="postgres app/cloud was changed under fencing token 7, newer than this run's 5"):
        await driver.check(stale)
    # apply() on the primary it already is would only stamp the fence, and never lowers it.
    with pytest.raises(Fenced, match=r"\(its fence table\) was changed under fencing token 7, newer than this run's 5"):
        await driver.apply(stale)
    assert fence_of(pg_pair, "replica") == [(7, "cloud", "run-1")]


async def test_a_newer_token_in_another_sites_fence_table_refuses_the_promotion_even_with_force(pg_pair: PgPair) -> None:
    pg_pair.pause_replay()  # the replica does not see what follows: only the other site's own table holds it
    pg_pair.sql("primary", CREATE_SQL)
    pg_pair.sql("primary", WRITE_SQL, (9, "onprem", "run-9"))  # a newer leader's
    driver = driver_for(pg_pair)

    with pytest.raises(Fenced, match=r"postgres app/onprem \(its fence table\) was changed under fencing token 9"):
        await driver.apply(step(force=True))  # force overrides the split-brain guard, never the fence
    assert pg_pair.in_recovery("replica")

    newer = replace(step(force=True, run_id="run-10"), fencing_token=10)  # the current leader may go ahead
    await driver.apply(newer)
    assert not pg_pair.in_recovery("replica") and fence_of(pg_pair, "replica") == [(10, "cloud", "run-10")]
