"""Time-ordered ids (UUIDv7) and lease tokens from :mod:`dspex.records`."""

from __future__ import annotations

import itertools
import threading
import time
import uuid

import pytest

from dspex import records
from dspex.records import new_id, new_token

MS = time.time_ns() // 1_000_000


def _stamp(eid: str) -> int:
    return uuid.UUID(eid).int >> 80


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Freeze the id clock at ``MS`` (milliseconds; change ``[0]`` to move it) with a fresh state.

    The generator's state is restored afterwards, so later ids of the test run are unaffected.
    """
    now = [MS]
    monkeypatch.setattr(records, "_time_ns", lambda: now[0] * 1_000_000 + 123_456)
    monkeypatch.setattr(records, "_current", records._Millisecond(0))
    return now


def test_ids_are_rfc_9562_version_7_uuid_strings() -> None:
    before = time.time_ns() // 1_000_000
    eid = new_id()
    after = time.time_ns() // 1_000_000
    parsed = uuid.UUID(eid)
    assert str(parsed) == eid
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    # The first 48 bits are the Unix time in milliseconds (a borrowed millisecond or two at most).
    assert before - 5 <= _stamp(eid) <= after + 5


def test_many_ids_in_one_millisecond_are_unique_and_increasing(frozen: list[int]) -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert _stamp(ids[0]) == MS
    # Past the counter's room in one millisecond the ids borrow the next ones, a few at most.
    assert MS < _stamp(ids[-1]) <= MS + 10
    for eid in ids[::997]:
        parsed = uuid.UUID(eid)
        assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)


def test_real_calls_are_unique_and_increasing() -> None:
    ids = [new_id() for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert len({_stamp(eid) for eid in ids}) < len(ids)  # many shared a millisecond


def test_ids_stay_increasing_when_the_clock_steps_back(frozen: list[int]) -> None:
    first = [new_id() for _ in range(10)]
    frozen[0] = MS - 50
    later = [new_id() for _ in range(10)]
    assert first + later == sorted(first + later)
    assert {_stamp(eid) for eid in later} == {MS}


def test_a_new_millisecond_takes_new_random_bits(frozen: list[int]) -> None:
    a = new_id()
    frozen[0] = MS + 1
    b = new_id()
    assert (_stamp(a), _stamp(b)) == (MS, MS + 1)
    assert a[19:] != b[19:]
    assert a < b


def test_threads_never_share_an_id(frozen: list[int]) -> None:
    made: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(len(made))

    def make(out: list[str]) -> None:
        start.wait()
        for n in range(20_000):
            out.append(new_id())
            if n % 5000 == 0:
                frozen[0] += 1  # the millisecond moves while the others make ids

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [eid for out in made for eid in out]
    assert len(set(every)) == len(every)
    for out in made:
        assert out == sorted(out)


def test_a_forked_child_takes_new_random_bits_and_keeps_the_order(
    frozen: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(records, "_advance_lock", records._advance_lock)
    parent = [new_id() for _ in range(3)]
    records._after_fork_in_child()
    child = [new_id() for _ in range(3)]
    assert parent + child == sorted(parent + child)
    assert {eid[19:] for eid in parent}.isdisjoint({eid[19:] for eid in child})


def test_lease_tokens_are_random_hex() -> None:
    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000
    for token in list(tokens)[:10]:
        assert len(token) == 32
        int(token, 16)
