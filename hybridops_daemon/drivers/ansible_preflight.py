"""preflight() of the ``ansible`` driver (issue #13): the step's own playbook, ``apply.yml``, in check mode.

It runs as apply() would (same inventory: this node, ``-i localhost, -c local``; same inputs, secrets, hermetic
environment, time limit and process-tree kill) plus ``--check``: modules that support check mode report what they
would change and change nothing, those that do not (``command``, ``shell``) are skipped. A task that would fail for
real (an assert on a missing directory, a template that does not render, an unreachable host) fails here too.

Read-only by the pack contract: ``apply.yml`` marks no task ``check_mode: false`` (such a task runs for real even
under ``--check``). No ``--diff``: what would change is named by task; a diff would copy file contents, perhaps
secrets, into the text. A check-mode failure is the answer (not ready, naming the task and the host); every other
error (no pack, no playbook, a pack ansible refuses, the time limit) is raised as the driver raises it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from hybridops_daemon.chain.templating import UnresolvedReference, render
from hybridops_daemon.drivers.base import Readiness, StepContext, Unavailable

if TYPE_CHECKING:
    from hybridops_daemon.drivers.ansible import AnsibleDriver


async def readiness(driver: AnsibleDriver, step: StepContext) -> Readiness:
    where = driver._where(step, "preflight")  # NotFound when the module is bound to no pack
    try:
        inputs = render(step.inputs, {}, {"id": step.run_id, "lane": step.lane})
    except UnresolvedReference as exc:
        # The reference's text in place of its value would check another step than the one the run will apply.
        return Readiness(False, f"{where} not run: {exc}, known only to the run", {"unrendered": str(exc)})
    try:
        run = await driver._run(replace(step, inputs=inputs), "preflight")
    except Unavailable as exc:
        if "task" not in exc.details:  # no task failed: the time limit, a result ansible could not report...
            raise
        host = exc.details.get("host") or "(no host named)"
        observed = {"task": exc.details["task"], "host": host, "detail": exc.details["detail"], "exit_status": exc.code}
        return Readiness(False, f"{exc} (host {host})", observed)
    changed = list(run.changed)
    would = f"it would change: {', '.join(changed)}" if changed else "it would change nothing"
    return Readiness(True, f"{where} passed; {would}", {"would_change": changed}, {"tasks_would_change": float(len(changed))})
