"""Expert parallelism on gloo (CPU): every case of ep_cases.py on 2 and on 4 processes.

One launch per world size runs all the cases (process start-up and torch import dominate: about
30 s for 2 ranks and 60 s for 4 on a shared 2-core machine); each case is reported as its own
test. A launch that hangs is killed after its wall-clock limit and fails every case it did not
finish (ep_launch.py).
"""

from __future__ import annotations

import pytest

import ep_cases
from ep_launch import launch

WORLDS = (2, 4)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return {world: launch(world, list(ep_cases.CASES), tmp_path_factory.mktemp(f"ep{world}"))
            for world in WORLDS}


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", list(ep_cases.CASES))
def test_expert_parallel(results, world, case):
    got = results[world]
    statuses = got.get(case, {})
    failures = {rank: status for rank, status in statuses.items() if status != "ok"}
    launch_log = got.get("_launch", "")
    assert len(statuses) == world and not failures, (
        f"world {world}, case {case}: ranks reporting {sorted(statuses)}\n"
        + "\n".join(f"--- rank {r} ---\n{s}" for r, s in failures.items()) + "\n" + launch_log)
